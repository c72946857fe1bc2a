"""RoPE at explicit positions in one Triton launch: table lookup, exact fallback and rotation together.

A decode step on a GPU rotates one token per layer. Done with tensor ops, finding the cos/sin rows for the
step's positions is about ten launches (clamp, gather, an exact float64 computation for positions past the
table, a select) before the rotation itself, and no host sync is allowed to skip any of them: the call costs
launches, not bandwidth. Here one program per (block of positions, head of q or k):

* loads each position and, when ``0 <= p < table_len``, the precomputed float32 row of ``cos_table`` /
  ``sin_table`` (the module's own tables);
* only in a program holding a position outside the table, computes that row exactly as
  :func:`posenc.functional.rope_cos_sin` does: float64 angle ``p * inv_freq`` reduced to ``[-pi, pi)`` with
  the same ``fmod`` rule as ``torch.remainder``, float64 cos/sin times ``scale``, rounded to float32;
* rotates its rows (:func:`posenc.kernels.triton_rope.rotate_loaded`, the kernel shared with
  ``impl="triton"``), with ``-sin`` for the backward (the inverse rotation).

In-table rows are bitwise the table's; computed rows agree with the reference within float32 rounding (the
float64 cos/sin come from the device's math library instead of torch's).

Shapes: ``q: (B, H, S, D)``, ``k: (B, Hkv, S, D)``, ``positions: (1|B, S)`` integer, tables ``(L, P)``
float32, ``inv_freq: (P,)`` float64; ``R = 2P <= D``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .triton_rope import HAS_TRITON, NO_FUSION, launch_grid, runs_on

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_rope import block_and_head, rotate_loaded

    @triton.jit
    def _add(a: tl.tensor, b: tl.tensor) -> tl.tensor:
        return a + b

    @triton.jit
    def _rope_qk_at_kernel(
        q_ptr: tl.tensor,
        k_ptr: tl.tensor,
        oq_ptr: tl.tensor,
        ok_ptr: tl.tensor,
        pos_ptr: tl.tensor,
        cos_ptr: tl.tensor,
        sin_ptr: tl.tensor,
        freq_ptr: tl.tensor,
        const_ptr: tl.tensor,
        seq_len: tl.tensor,
        table_len: tl.tensor,
        heads_q: tl.tensor,
        heads_k: tl.tensor,
        q_sb: tl.tensor,
        q_sh: tl.tensor,
        q_ss: tl.tensor,
        k_sb: tl.tensor,
        k_sh: tl.tensor,
        k_ss: tl.tensor,
        oq_sb: tl.tensor,
        oq_sh: tl.tensor,
        oq_ss: tl.tensor,
        ok_sb: tl.tensor,
        ok_sh: tl.tensor,
        ok_ss: tl.tensor,
        pos_sb: tl.tensor,
        P: tl.constexpr,
        D: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_REST: tl.constexpr,
        INTERLEAVED: tl.constexpr,
        INVERSE: tl.constexpr,
        F64: tl.constexpr,
    ) -> None:
        s_start, bh = block_and_head(seq_len, BLOCK_S)  # bh: one of B * (H + Hkv) heads, q's first
        b = (bh // (heads_q + heads_k)).to(tl.int64)
        h = (bh % (heads_q + heads_k)).to(tl.int64)
        s = s_start + tl.arange(0, BLOCK_S)
        p = tl.arange(0, BLOCK_P)
        s_ok = s < seq_len
        mask = s_ok[:, None] & (p < P)[None, :]
        pos = tl.load(pos_ptr + b * pos_sb + s, mask=s_ok, other=0).to(tl.int64)  # (BLOCK_S,)
        inside = (pos >= 0) & (pos < table_len)
        off = tl.where(inside, pos, 0)[:, None] * P + p[None, :]
        c = tl.load(cos_ptr + off, mask=mask & inside[:, None], other=0.0)  # (no row 0 in an empty table)
        sn = tl.load(sin_ptr + off, mask=mask & inside[:, None], other=0.0)
        # tl.reduce with our own combine, not tl.sum: the standard library's jit functions do not run in the
        # interpreter when triton was imported before TRITON_INTERPRET was set (as in the test suite)
        if tl.reduce((s_ok & ~inside).to(tl.int32), 0, _add) > 0:  # exact rows, as rope_cos_sin computes them
            pi = tl.load(const_ptr)  # float64 constants: a literal would be float32
            two_pi = tl.load(const_ptr + 1)
            scale = tl.load(const_ptr + 2)
            freq = tl.load(freq_ptr + p, mask=p < P, other=0.0)
            angle = pos.to(tl.float64)[:, None] * freq[None, :] + pi
            rem = angle % two_pi  # fmod; torch.remainder adds the divisor to negative remainders
            angle = tl.where(rem < 0, rem + two_pi, rem) - pi
            c = tl.where(inside[:, None], c, (tl.cos(angle) * scale).to(tl.float32))
            sn = tl.where(inside[:, None], sn, (tl.sin(angle) * scale).to(tl.float32))
        if INVERSE:
            sn = -sn
        rows = s.to(tl.int64)[:, None]
        if h < heads_q:
            x_row = q_ptr + b * q_sb + h * q_sh + rows * q_ss
            o_row = oq_ptr + b * oq_sb + h * oq_sh + rows * oq_ss
            rotate_loaded(x_row, o_row, c, sn, s_ok[:, None], P, D, BLOCK_P, BLOCK_REST, INTERLEAVED, F64)
        else:
            hk = h - heads_q
            x_row = k_ptr + b * k_sb + hk * k_sh + rows * k_ss
            o_row = ok_ptr + b * ok_sb + hk * ok_sh + rows * ok_ss
            rotate_loaded(x_row, o_row, c, sn, s_ok[:, None], P, D, BLOCK_P, BLOCK_REST, INTERLEAVED, F64)


_CONSTANTS: dict[tuple[torch.device, float], Tensor] = {}


def _constants(device: torch.device, scale: float) -> Tensor:
    """``[pi, 2 pi, scale]`` as a float64 tensor on ``device``, made once: a new one per call would be a host
    to device copy per decode step."""
    key = (device, float(scale))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor([math.pi, 2.0 * math.pi, scale], dtype=torch.float64, device=device)
    return _CONSTANTS[key]


def rope_qk_at_triton(
    q: Tensor,
    k: Tensor,
    positions: Tensor,
    tables: tuple[Tensor, Tensor, Tensor],
    scale: float,
    interleaved: bool,
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Rotate q and k at ``positions`` with one launch (no autograd; see :func:`rope_qk_at`).

    Args:
        q: ``(B, H, S, D)``; k: ``(B, Hkv, S, D)``, same ``B``, ``S``, ``D`` and dtype; any strides.
        positions: ``(1|B, S)`` integer positions, any values.
        tables: ``(cos_table, sin_table, inv_freq)``: float32 ``(L, P)`` rows for positions ``0 .. L-1`` (from
            :func:`posenc.functional.rope_cos_sin` with ``scale``) and the float64 ``(P,)`` frequencies.
        scale: the factor folded into cos and sin (YaRN's temperature; 1 for plain RoPE).
        interleaved: pair layout. inverse: rotate by ``-angle`` (the backward).

    Returns:
        ``(q_rot, k_rot)``, new contiguous tensors in the input dtype.
    """
    cos_t, sin_t, inv_freq = tables
    if not HAS_TRITON or not runs_on(q.device):
        raise ValueError(
            f"the positions kernel runs on CUDA (or CPU with TRITON_INTERPRET=1), got {q.device}"
        )
    bsz, heads_q, seq_len, dim = q.shape
    heads_k = k.shape[1]
    pairs = inv_freq.shape[0]
    if k.dim() != 4 or k.shape[0] != bsz or k.shape[2:] != q.shape[2:] or k.dtype != q.dtype:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on B, S, D and dtype")
    if positions.dim() != 2 or positions.shape[0] not in (1, bsz) or positions.shape[1] != seq_len:
        raise ValueError(f"positions must be (1|{bsz}, {seq_len}), got {tuple(positions.shape)}")
    if cos_t.shape != sin_t.shape or cos_t.dim() != 2 or cos_t.shape[1] != pairs or 2 * pairs > dim:
        raise ValueError(f"tables {tuple(cos_t.shape)} do not match {pairs} frequencies and head_dim {dim}")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    oq, ok = (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
    )
    if q.numel() + k.numel() == 0:
        return oq, ok
    pos = positions.contiguous()
    consts = _constants(q.device, scale)
    block_p = triton.next_power_of_2(pairs)
    rest = dim - 2 * pairs
    block_s = min(triton.next_power_of_2(seq_len), max(1, 1024 // block_p))
    grid = launch_grid(seq_len, block_s, bsz * (heads_q + heads_k))
    _rope_qk_at_kernel[grid](
        q, k, oq, ok, pos, cos_t.contiguous(), sin_t.contiguous(), inv_freq.to(torch.float64), consts,
        seq_len, cos_t.shape[0], heads_q, heads_k,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        oq.stride(0), oq.stride(1), oq.stride(2),
        ok.stride(0), ok.stride(1), ok.stride(2),
        0 if pos.shape[0] == 1 else pos.stride(0),
        P=pairs, D=dim, BLOCK_S=block_s, BLOCK_P=block_p,
        BLOCK_REST=triton.next_power_of_2(rest) if rest else 0, INTERLEAVED=interleaved, INVERSE=inverse,
        F64=q.dtype == torch.float64, **NO_FUSION,
    )  # fmt: skip
    return oq, ok


class RotateQKAt(torch.autograd.Function):
    """:func:`rope_qk_at_triton` with autograd: the backward is the same launch with ``inverse`` flipped."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        positions: Tensor,
        tables: tuple[Tensor, Tensor, Tensor],
        scale: float,
        interleaved: bool,
        inverse: bool,
    ) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(positions.clone(), *tables)  # (the caller may advance its positions in place)
        ctx.scale, ctx.interleaved, ctx.inverse = scale, interleaved, inverse
        return rope_qk_at_triton(q, k, positions, tables, scale, interleaved, inverse)

    @staticmethod
    def backward(ctx: Any, grad_q: Tensor, grad_k: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        positions, *tables = ctx.saved_tensors
        dq, dk = RotateQKAt.apply(
            grad_q, grad_k, positions, tuple(tables), ctx.scale, ctx.interleaved, not ctx.inverse
        )
        return dq, dk, None, None, None, None, None


def rope_qk_at(
    q: Tensor,
    k: Tensor,
    positions: Tensor,
    tables: tuple[Tensor, Tensor, Tensor],
    scale: float,
    interleaved: bool,
) -> tuple[Tensor, Tensor]:
    """Rotate q and k at ``positions`` in one launch, differentiable in q and k (tables are constants).

    The same result as looking the rows up with :func:`posenc.functional.tables.rows_at` and rotating with
    :func:`posenc.functional.apply_rope`; see the module docstring for the shapes.
    """
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)):  # decoding: no autograd node
        return rope_qk_at_triton(q, k, positions, tables, scale, interleaved)
    return RotateQKAt.apply(q, k, positions, tables, scale, interleaved, False)  # type: ignore[no-any-return]


__all__ = ["RotateQKAt", "rope_qk_at", "rope_qk_at_triton"]
