"""RoPE on q and k, forward and backward: posenc against the memory-copy floor and the implementations people
would otherwise use.

Every figure is a median over repeats, timed round-robin with a ``clone`` of q and k (the physical floor of a
memory-bound op that reads q and k once and writes them once) measured in the same rounds; ``ratio`` is time
divided by that copy. Backward rows time ``torch.autograd.grad`` of the outputs with respect to q and k, against
the same copy. Peers: transformers' Llama ``apply_rotary_pos_emb`` (eager and under ``torch.compile``),
rotary-embedding-torch and, on CUDA, flash-attn's Triton rotary and Liger's (``liger-kernel``); a peer that is
not installed is reported as missing, never replaced.

Shapes: on CUDA the three of issue #9 (one with grouped-query keys, 32 query heads and 8 key heads); on a CPU two
smaller ones, whose figures the README keeps.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..kernels import choose_impl, rope_qk
from ..rotary.rope import RoPE
from .runner import error_note, time_round_robin
from .suites import Row, register_suite

log = logging.getLogger(__name__)

QK = tuple[Tensor, Tensor]
RopeFn = Callable[[Tensor, Tensor], QK]

#: ``(B, H, S, D, key heads)``: q is ``(B, H, S, D)``, k ``(B, key heads, S, D)``.
Shape = tuple[int, int, int, int, int]
CUDA_SHAPES: tuple[Shape, ...] = ((1, 32, 4096, 128, 32), (8, 32, 4096, 128, 8), (4, 16, 8192, 64, 16))
CPU_SHAPES: tuple[Shape, ...] = ((1, 32, 4096, 128, 32), (8, 8, 1024, 64, 8))
QUICK_SHAPES: tuple[Shape, ...] = ((1, 4, 128, 64, 4), (2, 4, 64, 32, 2))
DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32)
FLOOR = "copy (floor)"
#: room for the compiled peer's recompilations across the cases (see :func:`rope_suite`)
RECOMPILE_LIMIT = 64


def _peers(q: Tensor, cos: Tensor, sin: Tensor, quick: bool) -> dict[str, RopeFn | str]:
    """name -> rotation function, or the reason it is not measured (a peer whose import or set-up raises, e.g. a
    wheel built against another torch or Triton, is an "error" row with the reason; the others still run)."""
    out: dict[str, RopeFn | str] = {}
    for names, make in (
        (("transformers eager", "transformers compiled"), _transformers),
        (("rotary-embedding-torch",), _rotary_embedding_torch),
        (("flash-attn rotary",), _flash_attn),
        (("liger",), _liger_peer),
    ):
        try:
            out.update(make(q, cos, sin, quick))
        except Exception as err:  # noqa: BLE001 - the peer's rows say why, the suite goes on
            note = error_note(err)
            log.warning("bench: rope peer %s failed to set up: %s", names[0], note)
            out.update(dict.fromkeys(names, note))
    return out


def _transformers(q: Tensor, cos: Tensor, sin: Tensor, quick: bool) -> dict[str, RopeFn | str]:
    """transformers' Llama ``apply_rotary_pos_emb``, eager and under ``torch.compile`` (not with ``quick``)."""
    if importlib.util.find_spec("transformers") is None:
        return dict.fromkeys(
            ("transformers eager", "transformers compiled"), "missing: transformers is not installed"
        )
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos_hf = torch.cat((cos, cos), dim=-1)[None].to(q.dtype)  # (1, S, D), as LlamaRotaryEmbedding returns
    sin_hf = torch.cat((sin, sin), dim=-1)[None].to(q.dtype)
    out: dict[str, RopeFn | str] = {
        "transformers eager": lambda a, b: apply_rotary_pos_emb(a, b, cos_hf, sin_hf),
        "transformers compiled": "skipped: torch.compile takes longer than --quick allows",
    }
    if not quick:
        hf_compiled = torch.compile(apply_rotary_pos_emb)
        out["transformers compiled"] = lambda a, b: hf_compiled(a, b, cos_hf, sin_hf)
    return out


def _rotary_embedding_torch(q: Tensor, cos: Tensor, sin: Tensor, quick: bool) -> dict[str, RopeFn | str]:
    """rotary-embedding-torch's ``RotaryEmbedding.rotate_queries_or_keys`` on q and on k."""
    if importlib.util.find_spec("rotary_embedding_torch") is None:
        return {"rotary-embedding-torch": "missing: rotary-embedding-torch is not installed"}
    from rotary_embedding_torch import RotaryEmbedding

    rot = RotaryEmbedding(dim=q.shape[-1]).to(q.device)
    return {
        "rotary-embedding-torch": lambda a, b: (rot.rotate_queries_or_keys(a), rot.rotate_queries_or_keys(b))
    }


def _flash_attn(q: Tensor, cos: Tensor, sin: Tensor, quick: bool) -> dict[str, RopeFn | str]:
    """flash-attn's Triton rotary (CUDA only)."""
    if importlib.util.find_spec("flash_attn") is None:
        return {"flash-attn rotary": "missing: flash-attn is not installed"}
    if q.device.type != "cuda":
        return {"flash-attn rotary": "skipped: flash-attn's Triton rotary runs on CUDA only"}
    from flash_attn.layers.rotary import apply_rotary_emb

    cos_fa, sin_fa = cos.to(q.dtype), sin.to(q.dtype)  # (S, D/2), in the input dtype as flash-attn requires

    def flash(a: Tensor, b: Tensor) -> QK:  # flash-attn takes (B, S, H, D): pass transposed views
        rot_a = apply_rotary_emb(a.transpose(1, 2), cos_fa, sin_fa).transpose(1, 2)
        return rot_a, apply_rotary_emb(b.transpose(1, 2), cos_fa, sin_fa).transpose(1, 2)

    return {"flash-attn rotary": flash}


def _liger_peer(q: Tensor, cos: Tensor, sin: Tensor, quick: bool) -> dict[str, RopeFn | str]:
    return {"liger": _liger(q, cos, sin)}


def _liger(q: Tensor, cos: Tensor, sin: Tensor) -> RopeFn | str:
    """Liger's Triton RoPE (``liger_rotary_pos_emb``), CUDA only; see :func:`liger_rotation`."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "missing: liger-kernel is not installed"
    if q.device.type != "cuda":
        return "skipped: Liger's Triton kernels run on CUDA only"
    return liger_rotation(q, cos, sin)


def liger_rotation(q: Tensor, cos: Tensor, sin: Tensor) -> RopeFn:
    """Liger's rotation, to be given q and k in the layout it works in: ``(B, H, S, D)`` views of ``(B, S, H, D)``
    tensors, as a Llama attention hands them over (given a contiguous ``(B, H, S, D)`` tensor it first copies
    it). Its ``prepare(q, k)`` makes such inputs once, outside the timed region. It rotates its inputs in place."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    cos_l = torch.cat((cos, cos), dim=-1)[None].to(q.dtype)  # (1, S, D), as LlamaRotaryEmbedding returns
    sin_l = torch.cat((sin, sin), dim=-1)[None].to(q.dtype)

    def liger(a: Tensor, b: Tensor) -> QK:
        return liger_rotary_pos_emb(a, b, cos_l, sin_l)  # type: ignore[no-any-return]

    liger.prepare = _natural_layout  # type: ignore[attr-defined]
    return liger


def _natural_layout(q: Tensor, k: Tensor) -> QK:
    """Copies of q and k, ``(B, H, S, D)`` views of ``(B, S, H, D)`` tensors."""
    return q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)


def _inputs(fn: RopeFn, q: Tensor, k: Tensor) -> QK:
    """q and k as ``fn`` takes them (its ``prepare`` if it has one: a layout of its own, made before timing)."""
    prepare = getattr(fn, "prepare", None)
    return (q, k) if prepare is None else prepare(q, k)  # type: ignore[no-any-return]


def _forward(fn: RopeFn, q: Tensor, k: Tensor) -> Callable[[], object]:
    """A closure that runs ``fn`` at (q, k) once."""
    q, k = _inputs(fn, q, k)
    return lambda: fn(q, k)


def _backward(fn: RopeFn, q: Tensor, k: Tensor) -> Callable[[], object]:
    """A closure that runs the backward of ``fn`` at (q, k) once (the graph is built once, kept)."""
    qg, kg = (t.detach().requires_grad_() for t in _inputs(fn, q, k))
    oq, ok = fn(qg, kg)
    gq, gk = torch.randn_like(oq), torch.randn_like(ok)
    return lambda: torch.autograd.grad((oq, ok), (qg, kg), (gq, gk), retain_graph=True)


def _group(shape: Shape, dtype: torch.dtype, device: str, quick: bool) -> Iterator[list[Row]]:
    """The rows of one shape and dtype: the forward pass's, then the backward's (each yielded when timed)."""
    b, h, s, d, hk = shape
    q = torch.randn(b, h, s, d, device=device, dtype=dtype)
    k = torch.randn(b, hk, s, d, device=device, dtype=dtype)
    cos, sin = RoPE(d).to(device).cos_sin(s, None, torch.device(device))
    kernel = choose_impl(q, k, cos, sin)
    fns: dict[str, RopeFn | str] = {
        "posenc": lambda a, c: rope_qk(a, c, cos, sin),
        "posenc reference": lambda a, c: rope_qk(a, c, cos, sin, impl="reference"),
    }
    fns.update(_peers(q, cos, sin, quick))
    runnable = {name: fn for name, fn in fns.items() if not isinstance(fn, str)}
    repeats = 3 if quick else 9
    for pass_ in ("forward", "backward"):
        log.info("rope: %s %s %s", pass_, str(dtype).removeprefix("torch."), "x".join(map(str, shape)))
        timed: dict[str, Callable[[], object]] = {FLOOR: lambda: (q.clone(), k.clone())}
        errors: dict[str, str] = {}
        # "transformers compiled" recompiles per shape, dtype and pass (up to 12 on CUDA); past dynamo's default
        # limit of 8 it would run eager, silently, under its compiled name
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            for name, fn in runnable.items():
                try:  # the backward's graph is built here (a compiled peer compiles): a failure is its row's
                    timed[name] = _forward(fn, q, k) if pass_ == "forward" else _backward(fn, q, k)
                except Exception as err:  # noqa: BLE001 - reported as the row's status, the others still run
                    errors[name] = error_note(err)
                    log.warning("bench: rope %s %s failed: %s", name, pass_, errors[name])
            medians = time_round_robin(timed, device, repeats=repeats, warmup=1, errors=errors)
        del timed
        ran = choose_impl(q, k, cos, sin)  # what auto runs now: a kernel that failed once fell back for good
        label = kernel if ran == kernel else f"{ran} (after {kernel} failed)"
        rows: list[Row] = []
        for name in (FLOOR, *fns):
            row: Row = {
                "pass": pass_,
                "dtype": str(dtype).removeprefix("torch."),
                "shape": list(shape[:4]),
                "k_heads": hk,
                "impl": name,
                "kernel": label if name == "posenc" else None,
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
        yield rows


def cases(shapes: Sequence[Shape]) -> list[tuple[Shape, torch.dtype]]:
    """(shape, dtype) in the order they run: bfloat16 at every shape first (issue #9's table is mostly bfloat16),
    then float32, so a run cut short keeps the most wanted."""
    return [(shape, dtype) for dtype in DTYPES for shape in shapes]


@register_suite("rope")
def rope_suite(quick: bool, device: str) -> Iterator[Row]:
    """RoPE forward and backward on q and k, float32 and bfloat16, posenc vs copy floor vs peers.

    Args:
        quick: tiny shapes, 3 repeats, no ``torch.compile`` peer (for tests).
        device: ``"cpu"`` or ``"cuda"``.

    Yields:
        One row per (pass, dtype, shape, impl) with ``median_ms`` and ``ratio`` (to the copy), or
        ``status`` "missing"/"skipped"/"error" and a ``note``; pass by pass, in the order of :func:`cases`.
    """
    torch.manual_seed(0)
    shapes = QUICK_SHAPES if quick else CUDA_SHAPES if device.startswith("cuda") else CPU_SHAPES
    for shape, dtype in cases(shapes):
        for rows in _group(shape, dtype, device, quick):
            yield from rows
