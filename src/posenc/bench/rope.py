"""RoPE on q and k, forward and backward: posenc against the memory-copy floor and the implementations people
would otherwise use.

Every figure is a median over repeats, timed round-robin with a ``clone`` of q and k (the physical floor of a
memory-bound op that reads q and k once and writes them once) measured in the same rounds; ``ratio`` is time
divided by that copy. Backward rows time ``torch.autograd.grad`` of the outputs with respect to q and k, against
the same copy. Peers: transformers' Llama ``apply_rotary_pos_emb`` (eager and under ``torch.compile``),
rotary-embedding-torch and, on CUDA, flash-attn's Triton rotary; a peer that is not installed is reported as
missing, never replaced.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ..kernels import choose_impl, rope_qk
from ..rotary.rope import RoPE
from .runner import time_round_robin
from .suites import Row, register_suite

log = logging.getLogger(__name__)

QK = tuple[Tensor, Tensor]
RopeFn = Callable[[Tensor, Tensor], QK]

SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 32, 4096, 128), (8, 8, 1024, 64))
QUICK_SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 4, 128, 64), (2, 2, 64, 32))
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
FLOOR = "copy (floor)"


def _peers(q: Tensor, cos: Tensor, sin: Tensor, quick: bool) -> dict[str, RopeFn | str]:
    """name -> rotation function, or the reason it is not measured."""
    out: dict[str, RopeFn | str] = {}
    if importlib.util.find_spec("transformers") is None:
        out["transformers eager"] = out["transformers compiled"] = "missing: transformers is not installed"
    else:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos_hf = torch.cat((cos, cos), dim=-1)[None].to(q.dtype)  # (1, S, D), as LlamaRotaryEmbedding returns
        sin_hf = torch.cat((sin, sin), dim=-1)[None].to(q.dtype)
        out["transformers eager"] = lambda a, b: apply_rotary_pos_emb(a, b, cos_hf, sin_hf)
        if quick:
            out["transformers compiled"] = "skipped: torch.compile takes longer than --quick allows"
        else:
            hf_compiled = torch.compile(apply_rotary_pos_emb)
            out["transformers compiled"] = lambda a, b: hf_compiled(a, b, cos_hf, sin_hf)
    if importlib.util.find_spec("rotary_embedding_torch") is None:
        out["rotary-embedding-torch"] = "missing: rotary-embedding-torch is not installed"
    else:
        from rotary_embedding_torch import RotaryEmbedding

        rot = RotaryEmbedding(dim=q.shape[-1]).to(q.device)
        out["rotary-embedding-torch"] = lambda a, b: (
            rot.rotate_queries_or_keys(a),
            rot.rotate_queries_or_keys(b),
        )
    if importlib.util.find_spec("flash_attn") is None:
        out["flash-attn rotary"] = "missing: flash-attn is not installed"
    elif q.device.type != "cuda":
        out["flash-attn rotary"] = "skipped: flash-attn's Triton rotary runs on CUDA only"
    else:
        from flash_attn.layers.rotary import apply_rotary_emb

        cos_fa, sin_fa = (
            cos.to(q.dtype),
            sin.to(q.dtype),
        )  # (S, D/2), in the input dtype as flash-attn requires

        def flash(a: Tensor, b: Tensor) -> QK:  # flash-attn takes (B, S, H, D): pass transposed views
            rot_a = apply_rotary_emb(a.transpose(1, 2), cos_fa, sin_fa).transpose(1, 2)
            return rot_a, apply_rotary_emb(b.transpose(1, 2), cos_fa, sin_fa).transpose(1, 2)

        out["flash-attn rotary"] = flash
    return out


def _forward(fn: RopeFn, q: Tensor, k: Tensor) -> Callable[[], object]:
    """A closure that runs ``fn`` at (q, k) once."""
    return lambda: fn(q, k)


def _backward(fn: RopeFn, q: Tensor, k: Tensor) -> Callable[[], object]:
    """A closure that runs the backward of ``fn`` at (q, k) once (the graph is built once, kept)."""
    qg, kg = q.detach().requires_grad_(), k.detach().requires_grad_()
    oq, ok = fn(qg, kg)
    gq, gk = torch.randn_like(oq), torch.randn_like(ok)
    return lambda: torch.autograd.grad((oq, ok), (qg, kg), (gq, gk), retain_graph=True)


def _group(shape: tuple[int, int, int, int], dtype: torch.dtype, device: str, quick: bool) -> list[Row]:
    b, h, s, d = shape
    q = torch.randn(b, h, s, d, device=device, dtype=dtype)
    k = torch.randn(b, h, s, d, device=device, dtype=dtype)
    cos, sin = RoPE(d).to(device).cos_sin(s, None, torch.device(device))
    kernel = choose_impl(q, k, cos, sin)
    fns: dict[str, RopeFn | str] = {
        "posenc": lambda a, c: rope_qk(a, c, cos, sin),
        "posenc reference": lambda a, c: rope_qk(a, c, cos, sin, impl="reference"),
    }
    fns.update(_peers(q, cos, sin, quick))
    runnable = {name: fn for name, fn in fns.items() if not isinstance(fn, str)}
    repeats = 3 if quick else 9
    rows: list[Row] = []
    for pass_ in ("forward", "backward"):
        log.info("rope: %s %s %s", pass_, str(dtype).removeprefix("torch."), "x".join(map(str, shape)))
        timed: dict[str, Callable[[], object]] = {FLOOR: lambda: (q.clone(), k.clone())}
        for name, fn in runnable.items():
            timed[name] = _forward(fn, q, k) if pass_ == "forward" else _backward(fn, q, k)
        errors: dict[str, str] = {}
        medians = time_round_robin(timed, device, repeats=repeats, warmup=1, errors=errors)
        del timed
        for name in (FLOOR, *fns):
            row: Row = {
                "pass": pass_,
                "dtype": str(dtype).removeprefix("torch."),
                "shape": list(shape),
                "impl": name,
                "kernel": kernel if name == "posenc" else None,
                "status": "ok",
                "median_ms": None,
                "ratio": None,
                "repeats": repeats,
            }
            if name in medians:
                row["median_ms"] = medians[name] * 1e3
                row["ratio"] = medians[name] / medians[FLOOR] if FLOOR in medians else None
            else:
                reason = errors.get(name) or fns[name]
                assert isinstance(reason, str)
                row["status"], _, row["note"] = reason.partition(": ")
            rows.append(row)
    return rows


@register_suite("rope")
def rope_suite(quick: bool, device: str) -> Iterator[Row]:
    """RoPE forward and backward on q and k, float32 and bfloat16, posenc vs copy floor vs peers.

    Args:
        quick: tiny shapes, 3 repeats, no ``torch.compile`` peer (for tests).
        device: ``"cpu"`` or ``"cuda"``.

    Yields:
        One row per (pass, dtype, shape, impl) with ``median_ms`` and ``ratio`` (to the copy), or
        ``status`` "missing"/"skipped" and a ``note``; group by group (one dtype and shape each).
    """
    torch.manual_seed(0)
    for dtype in DTYPES:
        for shape in QUICK_SHAPES if quick else SHAPES:
            yield from _group(shape, dtype, device, quick)
