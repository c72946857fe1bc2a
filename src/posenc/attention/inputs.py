"""What a backend gets besides q, k and v (:class:`AttentionInputs`), and the masks built from it.

Shape key: ``B`` batch, ``H`` query heads, ``Q`` queries, ``K`` keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..base import PositionEncoding


@dataclass
class AttentionInputs:
    """Everything besides q, k, v that a backend needs.

    Attributes:
        position: the encoding, for ``score_bias`` / ``score_mod`` / ``value_term``.
        q_pos: ``(1|B, Q)`` query positions; k_pos: ``(1|B, K)`` key positions.
        keep: ``(1|B, 1|H, 1|Q, K)`` bool, True where a key may be attended (padding), or None.
        causal: key ``j`` visible to query ``i`` only when ``j <= i + K - Q`` (cache-aware, by index).
        dropout_p: attention dropout probability (0 at eval).
        training: whether gradients are expected (backends without backward must decline).
        runs: the caller vouches that ``q_pos`` and ``k_pos`` are each ``start + arange`` shared by the batch
            (:class:`posenc.Attention` says so for default positions without a cache: training, a full forward).
            Passed to encodings whose :attr:`~posenc.PositionEncoding.takes_runs` (see :func:`hook_options`),
            which then need not check the values (a device sync on a GPU; impossible while tracing).
    """

    position: PositionEncoding
    q_pos: Tensor
    k_pos: Tensor
    keep: Tensor | None
    causal: bool
    dropout_p: float = 0.0
    training: bool = False
    runs: bool = False


def hook_options(ctx: AttentionInputs) -> dict[str, bool]:
    """Keyword options for the encoding's ``score_bias`` / ``score_mod``: ``runs=True`` when ``ctx.runs`` and the
    encoding takes it (encodings written before it keep their three-argument hooks)."""
    return {"runs": True} if ctx.runs and ctx.position.takes_runs else {}


def score_bias(q: Tensor, k_len: int, ctx: AttentionInputs) -> Tensor | None:
    """The encoding's :meth:`~posenc.PositionEncoding.score_bias` for ``q (B, H, Q, D)`` and ``k_len`` keys, checked:
    a tensor that broadcasts to ``(B, H, Q, K)`` with at most 4 dims, or None. (A 5-d bias broadcast the logits to
    5 dims and the output's reshape mixed batch and heads silently; flex aborted the process.) Shapes only."""
    bias = ctx.position.score_bias(q, ctx.q_pos, ctx.k_pos, **hook_options(ctx))
    if bias is None:
        return None
    want = (q.shape[0], q.shape[1], q.shape[2], k_len)
    if (
        not isinstance(bias, Tensor)
        or bias.dim() > 4
        or any(s != 1 and s != w for s, w in zip(reversed(bias.shape), reversed(want), strict=False))
    ):
        got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(
            f"{type(ctx.position).__name__}.score_bias returned {got}; it must be None or a tensor that broadcasts "
            f"to (B, H, Q, K) = {want} with at most 4 dims"
        )
    return bias


def check_value_term(position: PositionEncoding) -> None:
    """Refuse an encoding that overrides ``value_term`` but never says whether it needs the attention weights
    (``needs_probs``, on the class or the instance): only ``math`` computes them, so sdpa, flex and ``auto`` left
    the term out without a word (review s4). Attribute reads only."""
    cls = type(position)
    if torch.compiler.is_compiling() or cls.value_term is PositionEncoding.value_term:
        return  # (while tracing: the eager calls have checked it)
    if "needs_probs" in vars(position):
        return
    if not any("needs_probs" in vars(k) for k in cls.__mro__ if k is not PositionEncoding):
        raise TypeError(
            f"{cls.__qualname__} overrides value_term but never sets needs_probs: only the math backend computes "
            "the attention weights value_term takes, and sdpa and flex would leave the term out; set needs_probs = "
            "True on the class (or per instance in __init__; False where value_term gives None)"
        )


def check_inputs(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> None:
    """The one check every backend runs first, so ``math``, ``sdpa`` and ``flex`` accept and refuse the same inputs.

    ``q (B, H, Q, D)``, ``k (B, G, K, D)``, ``v (B, G, K, Dv)`` floating-point of one dtype with ``H % G == 0``;
    positions ``(1|B, Q)`` and ``(1|B, K)``; keep-mask ``(1|B, 1|H, 1|Q, K)`` bool; all on ``q``'s device.
    Raises ``ValueError`` (``TypeError`` for dtypes) naming the tensor, its shape and the accepted one.
    """
    check_value_term(ctx.position)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(
                f"attention: {name} must be 4-d (batch, heads, seq, head_dim), got {tuple(t.shape)}"
            )
        if not t.dtype.is_floating_point or t.dtype != q.dtype:
            raise TypeError(
                f"attention: q, k and v must share one floating-point dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
            )
    b, h, q_len, d = q.shape
    g, k_len = k.shape[1], k.shape[2]
    if k.shape[0] != b or v.shape[0] != b or v.shape[1] != g or v.shape[2] != k_len or k.shape[-1] != d:
        raise ValueError(
            f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} do not match q {tuple(q.shape)} "
            "(same batch; same key heads and keys for k and v; k's head_dim equal to q's)"
        )
    if h % g:
        raise ValueError(f"attention: {h} query heads are not a multiple of {g} key/value heads")
    tensors: list[tuple[str, Tensor, tuple[int, ...], tuple[tuple[int, ...], ...]]] = [
        ("query positions", ctx.q_pos, (q_len,), ((1, b),)),
        ("key positions", ctx.k_pos, (k_len,), ((1, b),)),
    ]
    if ctx.keep is not None:
        if ctx.keep.dtype != torch.bool:
            raise TypeError(f"attention: mask must be a bool tensor (True = attend), got {ctx.keep.dtype}")
        tensors.append(("mask", ctx.keep, (k_len,), ((1, b), (1, h), (1, q_len))))
    for name, t, last, leading in tensors:
        shape = tuple(t.shape)
        ok = t.dim() == len(leading) + 1 and shape[-1:] == last
        ok = ok and all(n in allowed for n, allowed in zip(shape[:-1], leading, strict=False))
        if not ok:
            want = ", ".join(" or ".join(str(n) for n in sorted(set(a))) for a in leading)
            raise ValueError(f"attention: {name} must have shape ({want}, {last[0]}) here, got {shape}")
        if t.device != q.device:
            raise ValueError(f"attention: {name} on {t.device} but q on {q.device}; put them on one device")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"attention: {name} on {t.device} but q on {q.device}; put them on one device")


def causal_keep(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """``(Q, K)`` bool: query ``i`` sees key ``j`` when ``j <= i + K - Q`` (the last query sees every key)."""
    i = torch.arange(q_len, device=device).unsqueeze(-1)  # (Q, 1)
    j = torch.arange(k_len, device=device)  # (K,)
    return j <= i + (k_len - q_len)


def full_keep(q: Tensor, k: Tensor, ctx: AttentionInputs) -> Tensor | None:
    """Padding and causal masks combined: ``(1|B, 1|H, Q, K)`` bool, or None when nothing is masked."""
    keep = ctx.keep
    # one query sees every key by the causal rule (j <= 0 + K - 1): a given mask is the whole answer
    if ctx.causal and not (keep is not None and q.shape[-2] == 1):
        c = causal_keep(q.shape[-2], k.shape[-2], q.device)  # (Q, K)
        keep = c if keep is None else keep & c
    return keep


def keep_mask(mask: Tensor | None, k_len: int, batch: int | None = None) -> Tensor | None:
    """User mask -> ``(1|B, 1|H, 1|Q, K)`` bool keep-mask; ``batch``: the inputs' ``B``, which a ``(B, K)`` mask's
    rows must match (1 or ``B``), checked here so the error quotes the shape the caller gave."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = attend), got {mask.dtype}")
    if mask.dim() == 0 or mask.shape[-1] != k_len:
        got = tuple(mask.shape)
        raise ValueError(f"mask {got} must cover the {k_len} keys (cached + new) in its last dim")
    if mask.dim() == 2:
        if batch is not None and mask.shape[0] not in (1, batch):
            raise ValueError(
                f"mask {tuple(mask.shape)}: a (batch, keys) mask needs batch 1 or {batch} (the inputs'), got "
                f"{mask.shape[0]}"
            )
        return mask[:, None, None, :]  # (B, 1, 1, K)
    if mask.dim() == 4:
        return mask
    raise ValueError(f"mask must be (batch, keys) or (batch, heads, queries, keys), got {tuple(mask.shape)}")


#: A backend: ``(q (B, H, Q, D), k (B, G, K, D), v (B, G, K, D), inputs) -> (B, H, Q, D)``.
Backend = Callable[[Tensor, Tensor, Tensor, AttentionInputs], Tensor]
