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
    """

    position: PositionEncoding
    q_pos: Tensor
    k_pos: Tensor
    keep: Tensor | None
    causal: bool
    dropout_p: float = 0.0
    training: bool = False


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


def keep_mask(mask: Tensor | None, k_len: int) -> Tensor | None:
    """User mask -> ``(1|B, 1|H, 1|Q, K)`` bool keep-mask."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = attend), got {mask.dtype}")
    if mask.shape[-1] != k_len:
        raise ValueError(f"mask covers {mask.shape[-1]} keys but there are {k_len} (cached + new)")
    if mask.dim() == 2:
        return mask[:, None, None, :]  # (B, 1, 1, K)
    if mask.dim() == 4:
        return mask
    raise ValueError(f"mask must be (batch, keys) or (batch, heads, queries, keys), got {tuple(mask.shape)}")


#: A backend: ``(q (B, H, Q, D), k (B, G, K, D), v (B, G, K, D), inputs) -> (B, H, Q, D)``.
Backend = Callable[[Tensor, Tensor, Tensor, AttentionInputs], Tensor]
