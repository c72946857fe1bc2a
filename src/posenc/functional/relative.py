"""Relative-distance indices and Shaw et al. (2018) relative position representations.

Shaw, Uszkoreit, Vaswani 2018, "Self-Attention with Relative Position Representations", eqs. (3)-(4):
``e_ij = q_i . (k_j + a^K_ij) / sqrt(d)`` and ``z_i = sum_j alpha_ij (v_j + a^V_ij)`` with
``a_ij = w[clip(j - i, k)]``. Nothing here builds an ``(n, n, d)`` tensor.

Shape key: ``B`` batch, ``H`` heads, ``Q`` query length, ``K`` key length, ``D`` head_dim, ``W = 2k + 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import check_int, wide_positions
from .precision import without_autocast


def relative_positions(
    q_len: int,
    k_len: int,
    max_distance: int | None = None,
    offset: int = 0,
    device: torch.device | None = None,
) -> Tensor:
    """``(q_len, k_len)`` matrix of ``clip(j - i, -max_distance, max_distance)``, queries at ``offset + i``.

    ``relative_positions(5, 5, max_distance=2) + 2`` is the index matrix printed in the seed document.
    """
    i = torch.arange(offset, offset + q_len, device=device)
    j = torch.arange(k_len, device=device)
    return relative_from_positions(i, j, max_distance)


def relative_from_positions(q_pos: Tensor, k_pos: Tensor, max_distance: int | None = None) -> Tensor:
    """``k_pos[j] - q_pos[i]`` clipped to ``[-max_distance, max_distance]``: ``(..., Q)``, ``(..., K)`` -> ``(..., Q, K)``."""
    q_pos, k_pos = wide_positions(q_pos, k_pos)  # (int64: narrower integers would wrap around)
    rel = k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)  # (..., Q, K), a new tensor
    if max_distance is not None:
        max_distance = check_int("max_distance", max_distance, at_least=0, owner="relative_from_positions")
        # in place where nothing records it: a (Q, K) pass without a new (Q, K) tensor (46 -> 17 ms at 2048^2)
        rel = (
            rel.clamp(-max_distance, max_distance)
            if rel.requires_grad
            else rel.clamp_(-max_distance, max_distance)
        )
    return rel


def shaw_key_bias(q: Tensor, key_table: Tensor, rel_index: Tensor, scale: float = 1.0) -> Tensor:
    """The logit term ``scale * q_i . a^K_{ij}`` without an ``(n, n, d)`` tensor.

    Args:
        q: ``(B, H, Q, D)``.
        key_table: ``(T, W, D)`` with ``T`` 1 (shared across heads) or ``H``.
        rel_index: ``(Q, K)`` or ``(B, Q, K)`` indices into ``W`` (clipped distance + k).
        scale: multiplies ``q @ a^K`` before the gather: one ``(Q, W)`` pass instead of a ``(Q, K)`` one, and
            elementwise the same products, so bitwise what scaling the gathered bias gives.

    Returns:
        ``(B, H, Q, K)`` in float32 or better (bf16/fp16 ``q`` too, autocast or not, as attention's logits):
        ``q @ a^K`` as ``(B, H, Q, W)``, scaled, then gathered per key.
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    with without_autocast(q):  # (B, H, Q, D) @ (T, D, W) -> (B, H, Q, W)
        scores = _per_head(q.to(acc), key_table.to(acc).transpose(-1, -2))
    if scale != 1.0:
        scores = scores * scale
    idx = _expand_index(rel_index, scores.shape[0], scores.shape[1])  # (B, H, Q, K)
    return scores.gather(-1, idx)


def shaw_value_term(probs: Tensor, value_table: Tensor, rel_index: Tensor) -> Tensor:
    """The output term ``sum_j alpha_ij a^V_{ij}``: attention weights summed per clipped distance, then ``@ a^V``.

    Args:
        probs: ``(B, H, Q, K)`` attention weights.
        value_table: ``(T, W, D)``.
        rel_index: ``(Q, K)`` or ``(B, Q, K)``.

    Returns:
        ``(B, H, Q, D)``.
    """
    b, h, q_len, _ = probs.shape
    width = value_table.shape[-2]
    idx = _expand_index(rel_index, b, h)  # (B, H, Q, K)
    per_distance = probs.new_zeros(b, h, q_len, width).scatter_add(-1, idx, probs)  # (B, H, Q, W)
    return _per_head(per_distance, value_table.to(probs.dtype))  # (B, H, Q, W) @ (T, W, D) -> (B, H, Q, D)


def _per_head(x: Tensor, table: Tensor) -> Tensor:
    """``x @ table`` with ``table: (T, M, N)`` shared (``T == 1``) or one per head (``T == H``)."""
    if table.shape[0] == 1:
        return x @ table[0]
    if table.shape[0] != x.shape[1]:
        raise ValueError(f"relative table has {table.shape[0]} heads but the input has {x.shape[1]}")
    return x @ table.unsqueeze(0)  # (B, H, Q, M) @ (1, H, M, N)


def _expand_index(rel_index: Tensor, b: int, h: int) -> Tensor:
    if rel_index.dim() == 2:
        rel_index = rel_index.unsqueeze(0)  # (1, Q, K)
    return rel_index.unsqueeze(1).expand(b, h, -1, -1)  # (B, H, Q, K), a view


def shaw_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_table: Tensor,
    value_table: Tensor,
    max_distance: int,
    mask: Tensor | None,
) -> Tensor:
    """Shaw's two equations written out with an explicit ``(Q, K, D)`` gather. For tests on small inputs only.

    Args:
        q, k, v: ``(B, H, Q|K, D)``; key_table, value_table: ``(T, W, D)``; mask: ``(Q, K)`` bool keep-mask.
    """
    rel = relative_positions(q.shape[-2], k.shape[-2], max_distance, offset=k.shape[-2] - q.shape[-2])
    idx = rel + max_distance  # (Q, K)
    a_k = key_table[:, idx]  # (T, Q, K, D)
    a_v = value_table[:, idx]  # (T, Q, K, D)
    d = q.shape[-1]
    a_k = a_k.expand(q.shape[1], -1, -1, -1)  # (H, Q, K, D)
    a_v = a_v.expand(q.shape[1], -1, -1, -1)  # (H, Q, K, D)
    logits = (torch.einsum("bhqd,bhkd->bhqk", q, k) + torch.einsum("bhqd,hqkd->bhqk", q, a_k)) / d**0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    alpha = logits.softmax(-1)
    return alpha @ v + torch.einsum("bhqk,hqkd->bhqd", alpha, a_v)
