"""Memory estimates of an attention layer's ``(Q, K)`` tensors, for the up-front checks of
:func:`posenc.models.generate.generate` (its prefill) and of training (``posenc.experiments.specs``).

The backend is the one the layer will run (:func:`~posenc.attention.backends.choose_backend`, asked about tensors
with no storage); what the encoding adds is its own :meth:`~posenc.PositionEncoding.pair_bytes`. Everything is in
bytes per ``(query, key)`` pair and batch row. The numbers follow the backends' code (see :func:`pair_bytes`) and
were checked against the peak resident memory of fresh processes (``MALLOC_MMAP_THRESHOLD_=65536``, one thread,
2-core AMD EPYC, torch 2.13 CPU, 2026-11-30); they err high.

Shape key: ``B`` batch, ``H`` query heads, ``Q`` queries, ``K`` keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .backends import choose_backend, flex_or_sdpa, math_block_rows, sdpa_attention
from .flex import flex_attention_backend
from .inputs import AttentionInputs

if TYPE_CHECKING:
    from .attention import Attention

#: Bool masks of a masked or causal call: the caller's ``(B, 1, Q, K)`` keep-mask (``generate`` builds it from a
#: ``(Q, K)`` one), its ``&`` with the causal one, and the causal ``(Q, K)`` one.
MASK_BYTES = 4
#: SDPA's float copy of a bool ``attn_mask`` (a call with a mask and no bias).
SDPA_MASK_COPY = 4


def backend_kind(
    attn: Attention,
    batch: int,
    queries: int,
    keys: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    grad: bool,
    masked: bool,
) -> str:
    """``"math"``, ``"sdpa"`` or ``"flex"``: the backend ``attn`` runs for ``(B, H, Q, D)`` queries of ``dtype``
    on ``device`` against ``keys`` keys, with (``masked``) or without a keep-mask, gradients on or off: the pick
    of :func:`~posenc.attention.backends.choose_backend`, made on expanded 0-d tensors (no allocation of their
    size). A backend registered by a user counts as ``math`` (every ``(H, Q, K)`` tensor materialized)."""
    with torch.set_grad_enabled(grad):
        scalar = torch.empty((), dtype=dtype, device=device, requires_grad=grad and dtype.is_floating_point)
        q = scalar.expand(batch, attn.heads, queries, attn.head_dim)
        index = torch.zeros((), dtype=torch.long, device=device)
        keep = (
            torch.ones((), dtype=torch.bool, device=device).expand(batch, 1, queries, keys)
            if masked
            else None
        )
        ctx = AttentionInputs(
            position=attn.position,
            q_pos=index.expand(1, queries),
            k_pos=index.expand(1, keys),
            keep=keep,
            causal=attn.causal,
            training=grad,
        )
        fn = choose_backend(attn.backend, q, ctx)
    if fn is sdpa_attention:
        return "sdpa"
    if fn is flex_or_sdpa or fn is flex_attention_backend:
        return "flex"
    return "math"


def pair_bytes(attn: Attention, kind: str, item: int, *, grad: bool, masked: bool) -> int:
    """Bytes per (query, key) pair and batch row of one call of ``attn`` on backend ``kind`` (see
    :func:`backend_kind`), logits of ``item`` bytes (4: float32). ``grad=False``: the most alive at once during
    the call; ``grad=True``: what autograd keeps until the backward pass (the call's own peak comes on top, once:
    :func:`training_bytes`). The encoding's share is its :meth:`~posenc.PositionEncoding.pair_bytes`.

    * ``flex``: no ``(H, Q, K)`` tensor; the masks only.
    * ``sdpa``: with the encoding's bias, the bias and its masked copy (the ``attn_mask``, kept for backward), or
      the encoding's own peak while it builds the bias where that is higher; without a bias, a keep-mask and SDPA's
      float copy of it (nothing for plain causal self-attention: ``is_causal``).
    * ``math``: logits, bias, softmax and the weights with fully masked rows zeroed (with a keep-mask), four
      ``(H,)`` tensors at once, or the logits and the bias beside the encoding's own peak; kept: the weights
      (twice with a keep-mask: softmax's output and the zeroed copy the value product reads).
    """
    heads = attn.heads
    enc = attn.position.pair_bytes(heads, item, grad)
    per_head = item * heads  # one (H,) float tensor per pair
    bias = _has_bias(attn)
    masks = MASK_BYTES if masked or kind == "math" or (bias and kind == "sdpa") else 0
    if kind == "flex":
        return masks
    if kind == "sdpa":
        if bias:
            return enc + per_head + masks if grad else max(enc, 2 * per_head) + masks
        return masks + SDPA_MASK_COPY if masked else 0
    if grad:
        return enc + (2 if masked else 1) * per_head + masks
    return max(4 * per_head, 2 * per_head + enc) + masks


def _has_bias(attn: Attention) -> bool:
    """Whether ``attn``'s encoding materializes a bias (kept, masked, for SDPA's backward even when the encoding
    itself keeps nothing: ALiBi)."""
    return attn.position.pair_bytes(attn.heads, 4, False) > 0


def call_bytes(
    attn: Attention,
    batch: int,
    queries: int,
    keys: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    grad: bool,
    masked: bool,
) -> int:
    """:func:`pair_bytes` of the backend :func:`backend_kind` picks, times ``B * Q * K``; logits in float32 or
    better (float64 for float64 queries). ``math`` without gradients attends a block of queries at a time
    (:func:`~posenc.attention.backends.math_block_rows`): its tensors count for one block, the caller's keep-mask
    for all."""
    kind = backend_kind(attn, batch, queries, keys, dtype=dtype, device=device, grad=grad, masked=masked)
    item = max(4, torch.finfo(dtype).bits // 8) if dtype.is_floating_point else 4
    per_pair = pair_bytes(attn, kind, item, grad=grad, masked=masked)
    if kind == "math" and not grad:
        rows = math_block_rows(batch, attn.heads, queries, keys, item)
        if rows < queries:
            return batch * keys * (rows * per_pair + (queries * MASK_BYTES // 4 if masked else 0))
    return batch * queries * keys * per_pair


def training_bytes(attn: Attention, batch: int, length: int, depth: int, *, device: torch.device) -> int:
    """Bytes of ``(L, L)`` tensors one training step of ``depth`` layers like ``attn`` holds at its peak (float32,
    causal self-attention without a mask): what every layer keeps for backward, plus one layer's own peak and
    the gradients of what it kept.

    A training batch shares one row of positions ``(1, L)``: the encoding's tensors, and a bias built from them,
    are ``(1, H, L, L)`` whatever the batch (counted once: :func:`pair_bytes` as for one row); only the backend's
    own per-head tensors grow with it (:func:`_per_row`)."""
    kind = backend_kind(
        attn, batch, length, length, dtype=torch.float32, device=device, grad=True, masked=False
    )
    kept = pair_bytes(attn, kind, 4, grad=True, masked=False)
    peak = pair_bytes(attn, kind, 4, grad=False, masked=False) + attn.position.pair_bytes(attn.heads, 4, True)
    kept_row, peak_row = _per_row(attn, kind)
    rows = batch - 1  # (the first row's are in kept and peak)
    return length * length * (depth * (kept + rows * kept_row) + peak + rows * peak_row)


def _per_row(attn: Attention, kind: str) -> tuple[int, int]:
    """Bytes per pair that each further row of a training batch adds, kept and at the peak: ``math``'s weights
    (kept) and its logits, bias sum, softmax and zeroed copy (at once); on ``sdpa`` with a learned bias (an
    ``attn_mask`` that needs its gradient, which torch's CPU kernels compute as ``(B, H, L, L)`` weights and
    their gradient before summing over the batch; measured at batch 8: T5 at L = 1024 and FIRE at L = 2048
    took 1.34x and 1.13x of an estimate that counted one such tensor at the peak and none kept), two kept and
    three at the peak; nothing on ``flex`` or for a bias without parameters (ALiBi: 0.75 at batch 8)."""
    per_head = 4 * attn.heads
    if kind == "math":
        return per_head, 4 * per_head
    learned = any(p.requires_grad for p in attn.position.parameters())
    if kind == "sdpa" and _has_bias(attn) and learned:
        return 2 * per_head, 3 * per_head
    return 0, 0


__all__ = ["MASK_BYTES", "SDPA_MASK_COPY", "backend_kind", "call_bytes", "pair_bytes", "training_bytes"]
