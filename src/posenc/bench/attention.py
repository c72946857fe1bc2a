"""Attention with a positional bias: ``flex`` and ``sdpa`` against plain causal SDPA, forward and training.

Batch 1, head_dim 64, causal; 16 heads in bfloat16 on CUDA (issue #9's setting), 8 heads in float32 on a CPU.
Each group of rows (one sequence length, one ``pass``, one encoding through ``flex`` and ``sdpa``) is timed
round-robin with plain causal ``scaled_dot_product_attention`` without any bias (the baseline) measured in the
same rounds; ``ratio`` is time divided by that baseline's (``baseline_ms``; the baseline's own row is given
once per length and pass). Order: at each length the goal table's rows (forward, then forward+backward), then
``flex`` without a bias (FlexAttention's own floor), Shaw last, so a run cut short keeps the most wanted. ``pass``: ``forward`` runs under
``torch.inference_mode``; ``forward+backward`` takes the gradients of q, k, v and the encoding's learned
parameters (T5's table, Kerple's ``r1, r2``, FIRE's MLP) for one output gradient, against the baseline's
gradients of q, k, v (issue #9's training goals; FlexAttention has no CPU backward, so those rows are skipped
on CPU). ``peak_mb`` is the memory allocated
during one call above what was live before it (CUDA: the allocator's peak; CPU: the running sum of the
profiler's allocation events), so the baseline's own figure is about its output.

Shaw et al. (key and value terms) is timed through posenc (``math``: ``(B, H, Q, 2k+1)`` products and a
gather / scatter) against the seed's formula, :func:`posenc.functional.shaw_reference`, which builds
``(n, n, d)`` tensors; its ``ratio`` is to that formula. Shaw's key term alone also runs through ``flex``.

Cases whose materialized tensors would not fit a memory budget are reported as skipped, never shrunk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from ..attention import BACKENDS, AttentionInputs
from ..base import PositionEncoding
from ..functional.relative import shaw_reference
from ..registry import available, build
from .runner import error_note, synchronize, time_round_robin
from .suites import Row, register_suite

log = logging.getLogger(__name__)

HEAD_DIM, SHAW_DISTANCE = 64, 16
#: query heads per device kind: issue #9 measured 16 on the H200; the CPU figures in the README are at 8
HEADS = {"cuda": 16, "cpu": 8}

#: forward lengths: issue #9's goal lengths on CUDA (each new length compiles FlexAttention again)
SIZES = {"cuda": (4096, 16384), "cpu": (1024, 4096)}
#: forward+backward at issue #9's goal lengths on CUDA; one length on CPU, where only ``sdpa`` can train
TRAIN_SIZES = {"cuda": (4096, 16384), "cpu": (1024,)}
QUICK_TRAIN_SIZES = (128,)
SHAW_SIZES = {"cuda": (1024, 2048, 4096), "cpu": (1024, 2048)}
QUICK_SIZES, QUICK_SHAW_SIZES = (256,), (128,)
MEMORY_BUDGET = {"cuda": 40 * 2**30, "cpu": 6 * 2**30}
BASELINE = "causal sdpa, no bias (baseline)"


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Memory allocated during one call of ``fn`` above what was live before it (see the module docstring)."""
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        del out
        return torch.cuda.max_memory_allocated(device) - before
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence file descriptor 2 (the CPU profiler's native start/stop lines), not Python's logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _qkv(n: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    heads = HEADS[_kind(device)]
    return tuple(torch.randn(1, heads, n, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))  # type: ignore[return-value]


def _call(backend: str, enc: PositionEncoding, q: Tensor, k: Tensor, v: Tensor) -> Callable[[], Tensor]:
    pos = torch.arange(q.shape[-2], device=q.device)[None]
    ctx = AttentionInputs(position=enc, q_pos=pos, k_pos=pos, keep=None, causal=True, runs=True)
    fn = BACKENDS[backend]
    return lambda: fn(q, k, v, ctx)


def _materialized_bytes(backend: str, n: int, heads: int, elem: int, train: bool = False) -> int:
    """Rough peak of the n x n tensors a case builds for ``sdpa``: the float32 bias, its shifted and masked copies
    (three float32 tensors) and the mask SDPA takes in q's dtype (``elem`` bytes), about 2.3x more than an
    estimate in q's dtype alone (measured with bf16 on a CPU, review s4); training about doubles it (their
    gradients and what the backward keeps)."""
    if backend != "sdpa":
        return 0
    forward = (3 * 4 + elem) * heads * n * n
    return 2 * forward if train else forward


def _skip_reason(name: str, backend: str, n: int, q: Tensor, quick: bool, train: bool) -> str | None:
    """Why a bias row is not timed (the row's status and note), or None to time it."""
    if train and backend == "flex" and q.device.type == "cpu":
        return f"skipped: FlexAttention has no backward on CPU (torch {torch.__version__})"
    if quick and backend == "flex" and name != "alibi":
        return "skipped: --quick compiles FlexAttention for ALiBi only"
    need = _materialized_bytes(backend, n, q.shape[1], q.element_size(), train=train)
    if need > MEMORY_BUDGET[_kind(str(q.device))]:
        return f"skipped: needs ~{need / 2**30:.0f} GiB of n x n tensors"
    return None


def _train_call(
    backend: str, enc: PositionEncoding, q: Tensor, k: Tensor, v: Tensor, grad: Tensor
) -> Callable[[], object]:
    """One forward+backward: gradients of q, k, v and every learned parameter of ``enc``."""
    pos = torch.arange(q.shape[-2], device=q.device)[None]
    ctx = AttentionInputs(
        position=enc, q_pos=pos, k_pos=pos, keep=None, causal=True, training=True, runs=True
    )
    fn = BACKENDS[backend]
    inputs = (q, k, v, *(p for p in enc.parameters() if p.requires_grad))
    return lambda: torch.autograd.grad(fn(q, k, v, ctx), inputs, grad)


def _rows(
    group: dict[str, Callable[[], object]],
    skipped: dict[str, str],
    meta: dict[str, Row],
    base: str,
    device: str,
    repeats: int,
    with_base: bool = True,
) -> list[Row]:
    """Time ``group`` round-robin; one row per case of ``meta`` (the baseline's own row only ``with_base``),
    each with the baseline's median of the same rounds (``baseline_ms``) and its ratio to it."""
    errors: dict[str, str] = {}
    medians = time_round_robin(group, device, repeats=repeats, warmup=1, errors=errors)
    rows: list[Row] = []
    for name, info in meta.items():
        if name == base and not with_base:
            continue
        row: Row = {**info, "status": "ok", "median_ms": None, "ratio": None, "peak_mb": None}
        row["baseline_ms"] = medians[base] * 1e3 if base in medians else None
        if name in medians:
            row["median_ms"] = medians[name] * 1e3
            row["ratio"] = medians[name] / medians[base] if base in medians else None
            try:
                row["peak_mb"] = peak_bytes(group[name], device) / 2**20
            except Exception as err:  # noqa: BLE001 - a row's status, not the run's end
                row["note"] = f"peak memory not measured ({error_note(err)})"
        else:
            reason = errors.get(name) or skipped[name]
            row["status"], _, row["note"] = reason.partition(": ")
        rows.append(row)
    return rows


def _bias_group(
    name: str,
    qkv: tuple[Tensor, Tensor, Tensor],
    quick: bool,
    grad: Tensor | None = None,
    with_base: bool = False,
) -> list[Row]:
    """One bias encoding through ``flex`` and ``sdpa`` at ``n = q.shape[-2]``, with plain causal SDPA (the
    baseline) in the same rounds: forward, or forward+backward when ``grad`` (the output gradient) is given
    (q, k, v must then require gradients). One encoding per group, so a run cut short keeps every encoding
    it finished (each new flex case compiles, seconds each)."""
    q, k, v = qkv
    n, train = q.shape[-2], grad is not None
    passes = "forward+backward" if train else "forward"

    def base_fn() -> object:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out if grad is None else torch.autograd.grad(out, (q, k, v), grad)

    group: dict[str, Callable[[], object]] = {BASELINE: base_fn}
    skipped: dict[str, str] = {}
    meta: dict[str, Row] = {BASELINE: {"pass": passes, "n": n, "encoding": "none", "backend": "sdpa"}}
    enc = build(name, heads=q.shape[1]).to(q.device)
    for backend in ("flex", "sdpa"):
        key = f"{name} {backend}"
        meta[key] = {"pass": passes, "n": n, "encoding": name, "backend": backend}
        reason = _skip_reason(name, backend, n, q, quick, train=train)
        if reason is not None:
            skipped[key] = reason
        elif grad is None:
            group[key] = _call(backend, enc, q, k, v)
        else:
            group[key] = _train_call(backend, enc, q, k, v, grad)
    log.info("attention: %s at n=%d, %s", name, n, passes)
    device = str(q.device)
    return _rows(group, skipped, meta, BASELINE, device, repeats=2 if quick else 5, with_base=with_base)


def _flex_floor_group(qkv: tuple[Tensor, Tensor, Tensor], quick: bool) -> list[Row]:
    """FlexAttention with no bias (``none`` through ``flex``) against the baseline: the floor of every flex
    row, to tell FlexAttention's own cost from the encodings'."""
    q, k, v = qkv
    n, fwd = q.shape[-2], "forward"
    group: dict[str, Callable[[], object]] = {
        BASELINE: lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    }
    meta: dict[str, Row] = {
        BASELINE: {"pass": fwd, "n": n, "encoding": "none", "backend": "sdpa"},
        "none flex": {"pass": fwd, "n": n, "encoding": "none", "backend": "flex"},
    }
    skipped: dict[str, str] = {}
    if quick:
        skipped["none flex"] = "skipped: --quick compiles FlexAttention for ALiBi only"
    else:
        group["none flex"] = _call("flex", build("none"), q, k, v)
    log.info("attention: flex without a bias at n=%d", n)
    return _rows(group, skipped, meta, BASELINE, str(q.device), repeats=2 if quick else 5, with_base=False)


def _shaw_group(n: int, device: str, quick: bool) -> list[Row]:
    q, k, v = _qkv(n, device)
    full = build("shaw", head_dim=HEAD_DIM, max_distance=SHAW_DISTANCE).to(device=device, dtype=q.dtype)
    keys_only = build("shaw", head_dim=HEAD_DIM, max_distance=SHAW_DISTANCE, values=False).to(device, q.dtype)
    seed = "shaw, seed formula (n x n x d)"
    keep = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    kt, vt = full.get_parameter("key_table"), full.get_parameter("value_table")
    group: dict[str, Callable[[], object]] = {
        seed: lambda: shaw_reference(q, k, v, kt, vt, SHAW_DISTANCE, keep)
    }
    group["shaw posenc math"] = _call("math", full, q, k, v)
    group["shaw keys only, posenc flex"] = _call("flex", keys_only, q, k, v)
    group["shaw keys only, posenc sdpa"] = _call("sdpa", keys_only, q, k, v)
    skipped: dict[str, str] = {}
    need = 2 * n * n * HEAD_DIM * q.element_size()
    if need > MEMORY_BUDGET[_kind(device)]:
        del group[seed]
        skipped[seed] = f"skipped: needs ~{need / 2**30:.0f} GiB for the (n, n, d) tensors"
    if quick:
        del group["shaw keys only, posenc flex"]
        skipped["shaw keys only, posenc flex"] = "skipped: --quick compiles FlexAttention for ALiBi only"
    fwd = "forward"
    meta: dict[str, Row] = {
        seed: {"pass": fwd, "n": n, "encoding": "shaw", "backend": "seed einsum"},
        "shaw posenc math": {"pass": fwd, "n": n, "encoding": "shaw", "backend": "math"},
        "shaw keys only, posenc flex": {
            "pass": fwd,
            "n": n,
            "encoding": "shaw, keys only",
            "backend": "flex",
        },
        "shaw keys only, posenc sdpa": {
            "pass": fwd,
            "n": n,
            "encoding": "shaw, keys only",
            "backend": "sdpa",
        },
    }
    base = seed if seed in group else "shaw posenc math"
    log.info("attention: Shaw at n=%d", n)
    rows = _rows(group, skipped, meta, base, device, repeats=2 if quick else 3)
    for row in rows:
        row["ratio_to"] = "seed formula" if base == seed else "posenc math"
    return rows


@register_suite("attention")
def attention_suite(quick: bool, device: str) -> Iterator[Row]:
    """Bias encodings through ``flex`` / ``sdpa`` (forward, then forward+backward) and Shaw through posenc vs
    the seed's formula (forward), group by group (``posenc bench`` writes each group as it finishes).

    Yields:
        One row per (pass, n, encoding, backend) with ``median_ms``, ``ratio`` (to plain causal SDPA for bias
        rows, to the seed's formula for Shaw rows) and ``peak_mb``, or ``status`` "skipped"/"error" and a ``note``.
    """
    kind = _kind(device)
    sizes, train_sizes = (QUICK_SIZES, QUICK_TRAIN_SIZES) if quick else (SIZES[kind], TRAIN_SIZES[kind])
    bias = available(family="bias")
    # issue #9's goal table first: at each length every bias encoding forward, then forward+backward, one
    # group per encoding; the flex floor after them; Shaw last. (Inference mode is left before each yield:
    # the caller's code between rows runs outside it.)
    for n in sorted(set(sizes) | set(train_sizes)):
        if n in sizes:
            with torch.inference_mode():
                qkv = _qkv(n, device)
            for i, name in enumerate(bias):
                with torch.inference_mode():
                    rows = _bias_group(name, qkv, quick, with_base=i == 0)
                yield from rows
        if n in train_sizes:
            q, k, v = (t.requires_grad_() for t in _qkv(n, device))
            grad = torch.randn_like(q)
            for i, name in enumerate(bias):
                yield from _bias_group(name, (q, k, v), quick, grad=grad, with_base=i == 0)
        if n in sizes:
            with torch.inference_mode():
                rows = _flex_floor_group(qkv, quick)
            yield from rows
    for n in QUICK_SHAW_SIZES if quick else SHAW_SIZES[kind]:
        with torch.inference_mode():
            rows = _shaw_group(n, device, quick)
        yield from rows
