"""Ways to compute ``softmax(q k^T / sqrt(D) + bias) v (+ value term)``, all from the same inputs.

* ``math``: explicit logits and softmax, the plain reference every other backend is tested against.
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``; a bias is materialized as ``attn_mask``.
* ``flex``: FlexAttention with the encoding's ``score_mod`` and a block-sparse causal mask: no ``(H, Q, K)``
  tensor (see :mod:`posenc.attention.flex`).

A backend is a function ``(q, k, v, ctx) -> out`` registered in :data:`BACKENDS`.

Shape key: ``B`` batch, ``H`` query heads, ``G`` kv heads, ``Q`` queries, ``K`` keys, ``D`` head_dim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import PositionEncoding
from .flex import flex_attention_backend, needs_grad, supports_flex

log = logging.getLogger(__name__)


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
    """

    position: PositionEncoding
    q_pos: Tensor
    k_pos: Tensor
    keep: Tensor | None
    causal: bool
    dropout_p: float = 0.0
    training: bool = False


Backend = Callable[[Tensor, Tensor, Tensor, AttentionInputs], Tensor]


def causal_keep(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """``(Q, K)`` bool: query ``i`` sees key ``j`` when ``j <= i + K - Q`` (the last query sees every key)."""
    i = torch.arange(q_len, device=device).unsqueeze(-1)  # (Q, 1)
    j = torch.arange(k_len, device=device)  # (K,)
    return j <= i + (k_len - q_len)


def full_keep(q: Tensor, k: Tensor, ctx: AttentionInputs) -> Tensor | None:
    """Padding and causal masks combined: ``(1|B, 1|H, Q, K)`` bool, or None when nothing is masked."""
    keep = ctx.keep
    if ctx.causal:
        c = causal_keep(q.shape[-2], k.shape[-2], q.device)  # (Q, K)
        keep = c if keep is None else keep & c
    return keep


def repeat_kv(x: Tensor, heads: int) -> Tensor:
    """``(B, G, K, D)`` -> ``(B, H, K, D)``, each kv head shared by ``H / G`` consecutive query heads."""
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def math_attention(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> Tensor:
    """Reference: explicit ``(B, H, Q, K)`` logits, softmax in float32 or better, rows with no visible key give 0."""
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])  # (B, H, K, D)
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax in float32 or better
    logits = (q @ k.transpose(-1, -2)).to(acc) * q.shape[-1] ** -0.5  # (B, H, Q, K)
    bias = ctx.position.score_bias(q, ctx.q_pos, ctx.k_pos)
    if bias is not None:
        logits = logits + bias.to(acc)
    keep = full_keep(q, k, ctx)
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    probs = logits.softmax(dim=-1)
    if keep is not None:
        probs = torch.where(keep.any(dim=-1, keepdim=True), probs, 0.0)  # fully masked rows -> 0, not NaN
    probs = F.dropout(probs, ctx.dropout_p, training=ctx.dropout_p > 0).to(q.dtype)
    out = probs @ v  # (B, H, Q, D)
    extra = ctx.position.value_term(probs, ctx.q_pos, ctx.k_pos)
    return out if extra is None else out + extra.to(out.dtype)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> Tensor:
    """``scaled_dot_product_attention``; a bias (if any) and the masks go in as one float ``attn_mask``."""
    if ctx.position.needs_probs:
        raise ValueError(f"{type(ctx.position).__name__} needs the attention weights; use backend='math'")
    gqa = k.shape[1] != q.shape[1]
    bias = ctx.position.score_bias(q, ctx.q_pos, ctx.k_pos)
    if bias is None and ctx.keep is None and (not ctx.causal or q.shape[-2] == k.shape[-2]):
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=ctx.dropout_p, is_causal=ctx.causal, enable_gqa=gqa
        )
    keep = full_keep(q, k, ctx)
    mask: Tensor | None = keep
    if bias is not None:
        bias = bias.to(q.dtype)
        mask = bias if keep is None else bias.masked_fill(~keep, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=ctx.dropout_p, enable_gqa=gqa)
    if keep is not None:  # rows with no visible key: 0, as in the math path
        out = torch.where(keep.any(dim=-1, keepdim=True), out, 0.0)
    return out


BACKENDS: dict[str, Backend] = {
    "math": math_attention,
    "sdpa": sdpa_attention,
    "flex": flex_attention_backend,
}

#: ``auto`` picks ``flex`` only from this many scores per head (``Q * K``) on: below it the materialized bias
#: is small and SDPA needs no kernel compilation.
FLEX_MIN_SCORES = 1 << 20


def choose_backend(name: str, q: Tensor, ctx: AttentionInputs) -> Backend:
    """Resolve ``name`` ("auto" or a key of :data:`BACKENDS`).

    ``auto``, in order:

    1. ``math`` when the encoding needs the attention weights (Shaw's value term);
    2. ``flex`` when the encoding has a ``score_mod`` (bias encodings, Shaw's key term), there is no dropout,
       ``Q * K >= FLEX_MIN_SCORES``, and FlexAttention can run here: on GPU always; on CPU only when no
       gradient is needed (torch 2.13's FlexAttention has no CPU backward); if FlexAttention cannot run on
       this machine (no C++ compiler, say) ``auto`` warns once and uses ``sdpa`` from then on;
    3. ``sdpa`` otherwise (CPU training, small problems, encodings without a bias).
    """
    if name == "auto":
        if ctx.position.needs_probs:
            return math_attention
        return flex_or_sdpa if _flex_pays(q, ctx) and "flex" not in _failed else sdpa_attention
    if name not in BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; choose auto or one of {', '.join(sorted(BACKENDS))}"
        )
    return BACKENDS[name]


#: backends that failed to run here when ``auto`` picked them (e.g. no C++ compiler for FlexAttention on CPU)
_failed: set[str] = set()


def flex_or_sdpa(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> Tensor:
    """``auto``'s flex: if FlexAttention cannot run on this machine, warn once and use ``sdpa`` from then on.

    Bad input still raises ``ValueError``; a forced ``backend="flex"`` never falls back.
    """
    if torch.compiler.is_compiling():
        return flex_attention_backend(q, k, v, ctx)
    try:
        return flex_attention_backend(q, k, v, ctx)
    except ValueError:
        raise
    except Exception as err:  # a missing C++ compiler, an unsupported device: same result, slower path
        _failed.add("flex")
        log.warning("posenc: FlexAttention failed here (%s); backend='auto' uses sdpa from now on", err)
        return sdpa_attention(q, k, v, ctx)


def _flex_pays(q: Tensor, ctx: AttentionInputs) -> bool:
    """Rule 2 of ``auto`` in :func:`choose_backend`."""
    if not supports_flex(ctx.position) or ctx.dropout_p > 0:
        return False
    if q.shape[-2] * ctx.k_pos.shape[-1] < FLEX_MIN_SCORES:
        return False
    if q.device.type == "cuda":
        return True
    return q.device.type == "cpu" and not needs_grad(q, ctx.position)
