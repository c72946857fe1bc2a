"""RoPE on q and k as one Triton kernel launch (GPU; on CPU only under ``TRITON_INTERPRET=1``, for tests).

One program rotates a block of ``BLOCK_S`` positions of one head of q or of k: the launch grid covers the heads
of both tensors, so q and k take a single launch. Each program loads the ``(BLOCK_S, P)`` tile of cos and sin
once and reads and writes every element of its rows once; the dims past ``R`` (partial rotary) are copied in
the same program. Math is float32 (float64 for float64 inputs), as in ``apply_rope``; the output has the input
dtype. The backward is the inverse rotation, i.e. the same kernel with ``-sin`` (see ``posenc.kernels``).

Shapes: ``q: (B, H, S, D)``, ``k: (B, Hkv, S, D)``, ``cos``/``sin``: ``(S, P)`` or ``(1|B, 1, S, P)``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised where triton is absent
    HAS_TRITON = False


def interpreting() -> bool:
    """True when this module's kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` set
    before this module was imported; tests reload it after setting the variable)."""
    return _INTERPRETED


_INTERPRETED = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def runs_on(device: torch.device) -> bool:
    """Whether :func:`rope_qk_triton` can run on ``device``: CUDA with triton, or CPU in the interpreter."""
    if not HAS_TRITON:
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


#: Launch option: products and sums rounded one by one, as ``apply_rope``'s eager ``x1 * c - x2 * s`` (the CUDA
#: backend fuses them into fma by default, 1 ulp off the reference in a fifth of the outputs; the interpreter
#: never fuses, so the CPU tests could not see it).
NO_FUSION = {"enable_fp_fusion": False}

if HAS_TRITON:

    @triton.jit
    def _rotate_rows(
        x_ptr: tl.tensor,
        o_ptr: tl.tensor,
        cos_ptr: tl.tensor,
        sin_ptr: tl.tensor,
        x_stride_s: tl.tensor,
        o_stride_s: tl.tensor,
        cs_stride_s: tl.tensor,
        seq_len: tl.tensor,
        s_start: tl.tensor,
        P: tl.constexpr,
        D: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_REST: tl.constexpr,
        INTERLEAVED: tl.constexpr,
        F64: tl.constexpr,
    ) -> None:
        s = s_start + tl.arange(0, BLOCK_S)  # (BLOCK_S,) positions
        p = tl.arange(0, BLOCK_P)  # (BLOCK_P,) pair index
        row_ok = (s < seq_len)[:, None]
        mask = row_ok & (p < P)[None, :]
        rows = s.to(tl.int64)[:, None]  # 64-bit offsets: long sequences with strided heads exceed 2**31
        cs_off = rows * cs_stride_s + p[None, :]
        c = tl.load(cos_ptr + cs_off, mask=mask, other=0.0)
        sn = tl.load(sin_ptr + cs_off, mask=mask, other=0.0)
        if not F64:  # (float64 tables stay float64 for float64 inputs, as in apply_rope)
            c = c.to(tl.float32)
            sn = sn.to(tl.float32)
        rotate_loaded(
            x_ptr + rows * x_stride_s,
            o_ptr + rows * o_stride_s,
            c,
            sn,
            row_ok,
            P,
            D,
            BLOCK_P,
            BLOCK_REST,
            INTERLEAVED,
            F64,
        )

    @triton.jit
    def block_and_head(seq_len: tl.tensor, BLOCK_S: tl.constexpr) -> tuple[tl.tensor, tl.tensor]:
        """This program's first position and its head, one of ``B * (H + Hkv)`` (q's first, then k's), in the
        one-dimensional grid of :func:`launch_grid`: blocks of positions vary fastest."""
        blocks = (seq_len + BLOCK_S - 1) // BLOCK_S  # (not tl.cdiv: see triton_rope_at on the interpreter)
        pid = tl.program_id(0)
        return (pid % blocks) * BLOCK_S, pid // blocks

    @triton.jit
    def rotate_loaded(
        x_row: tl.tensor,
        o_row: tl.tensor,
        c: tl.tensor,
        sn: tl.tensor,
        row_ok: tl.tensor,
        P: tl.constexpr,
        D: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_REST: tl.constexpr,
        INTERLEAVED: tl.constexpr,
        F64: tl.constexpr,
    ) -> None:
        """Rotate rows ``x_row (BLOCK_S, 1)`` (pointers) into ``o_row`` by float32 ``c``, ``sn (BLOCK_S, BLOCK_P)``.

        The arithmetic is float32, or float64 when ``F64`` (float64 inputs), as in ``apply_rope``."""
        if F64:
            c = c.to(tl.float64)
            sn = sn.to(tl.float64)
        p = tl.arange(0, BLOCK_P)
        mask = row_ok & (p < P)[None, :]
        if INTERLEAVED:
            i1 = 2 * p
            i2 = 2 * p + 1
        else:
            i1 = p
            i2 = p + P
        x1 = tl.load(x_row + i1[None, :], mask=mask, other=0.0).to(c.dtype)
        x2 = tl.load(x_row + i2[None, :], mask=mask, other=0.0).to(c.dtype)
        out_ty = o_row.dtype.element_ty
        tl.store(o_row + i1[None, :], (x1 * c - x2 * sn).to(out_ty), mask=mask)
        tl.store(o_row + i2[None, :], (x1 * sn + x2 * c).to(out_ty), mask=mask)
        if BLOCK_REST > 0:  # partial rotary: dims R..D-1 pass through
            r = 2 * P + tl.arange(0, BLOCK_REST)
            rmask = row_ok & (r < D)[None, :]
            rest = tl.load(x_row + r[None, :], mask=rmask, other=0.0)
            tl.store(o_row + r[None, :], rest, mask=rmask)

    @triton.jit
    def _rope_qk_kernel(
        q_ptr: tl.tensor,
        k_ptr: tl.tensor,
        oq_ptr: tl.tensor,
        ok_ptr: tl.tensor,
        cos_ptr: tl.tensor,
        sin_ptr: tl.tensor,
        seq_len: tl.tensor,
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
        cs_sb: tl.tensor,
        cs_ss: tl.tensor,
        P: tl.constexpr,
        D: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_REST: tl.constexpr,
        INTERLEAVED: tl.constexpr,
        F64: tl.constexpr,
    ) -> None:
        s_start, bh = block_and_head(seq_len, BLOCK_S)
        b = (bh // (heads_q + heads_k)).to(tl.int64)
        h = (bh % (heads_q + heads_k)).to(tl.int64)
        cos_b = cos_ptr + b * cs_sb
        sin_b = sin_ptr + b * cs_sb
        if h < heads_q:
            _rotate_rows(
                q_ptr + b * q_sb + h * q_sh,
                oq_ptr + b * oq_sb + h * oq_sh,
                cos_b,
                sin_b,
                q_ss,
                oq_ss,
                cs_ss,
                seq_len,
                s_start,
                P,
                D,
                BLOCK_S,
                BLOCK_P,
                BLOCK_REST,
                INTERLEAVED,
                F64,
            )
        else:
            hk = h - heads_q
            _rotate_rows(
                k_ptr + b * k_sb + hk * k_sh,
                ok_ptr + b * ok_sb + hk * ok_sh,
                cos_b,
                sin_b,
                k_ss,
                ok_ss,
                cs_ss,
                seq_len,
                s_start,
                P,
                D,
                BLOCK_S,
                BLOCK_P,
                BLOCK_REST,
                INTERLEAVED,
                F64,
            )


#: CUDA's limit on a grid's first dimension (the others take at most 65535, which a batch of many heads passes).
MAX_PROGRAMS = 2**31 - 1


def launch_grid(seq_len: int, block_s: int, heads: int) -> tuple[int]:
    """The one-dimensional launch grid of both kernels: ``ceil(seq_len / block_s)`` blocks for each of ``heads``
    (``B * (H + Hkv)``) heads, or ``ValueError`` past :data:`MAX_PROGRAMS`."""
    programs = -(-seq_len // block_s) * heads
    if programs > MAX_PROGRAMS:
        raise ValueError(
            f"RoPE Triton kernel: {programs} programs (batch * (heads + kv_heads) = {heads}, {seq_len} positions "
            f"in blocks of {block_s}) exceed CUDA's grid limit {MAX_PROGRAMS}; use impl='reference'"
        )
    return (programs,)


def _table(t: Tensor, batch: int, seq_len: int, name: str) -> Tensor:
    """cos or sin as a ``(1|B, S, P)`` float32 tensor (float64 if it is) with unit stride on ``P``."""
    if t.dim() == 2:
        t = t.unsqueeze(0)
    elif t.dim() == 4 and t.shape[1] == 1:
        t = t.squeeze(1)
    else:
        raise ValueError(f"{name} must be (S, P) or (1|B, 1, S, P), got {tuple(t.shape)}")
    if t.shape[0] not in (1, batch) or t.shape[1] != seq_len:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not match batch={batch}, seq_len={seq_len}")
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32).contiguous()


def _unit_last(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def rope_qk_triton(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
) -> tuple[Tensor, Tensor]:
    """Rotate q and k with one Triton launch (no autograd; see ``posenc.kernels.rope_qk``).

    Args:
        q: ``(B, H, S, D)``; k: ``(B, Hkv, S, D)`` with the same ``B``, ``S``, ``D`` and dtype. Any strides.
        cos: ``(S, P)`` or ``(1|B, 1, S, P)``; sin: same shape. ``2P <= D``.
        interleaved: pair layout.

    Returns:
        ``(q_rot, k_rot)``, new contiguous tensors in the input dtype.
    """
    if not HAS_TRITON:
        raise ValueError("impl='triton' needs the triton package (pip install triton)")
    if not runs_on(q.device):
        raise ValueError(
            f"impl='triton' runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1), got {q.device}"
        )
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(
            f"impl='triton' needs q and k of shape (B, H, S, D), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    bsz, heads_q, seq_len, dim = q.shape
    if k.shape[0] != bsz or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on B, S and D")
    if q.dtype != k.dtype:
        raise ValueError(f"q and k must have the same dtype for impl='triton', got {q.dtype} and {k.dtype}")
    heads_k = k.shape[1]
    c, s = _table(cos, bsz, seq_len, "cos"), _table(sin, bsz, seq_len, "sin")
    pairs = c.shape[-1]
    if 2 * pairs > dim:
        raise ValueError(f"cos/sin cover {2 * pairs} rotary dims but head_dim is {dim}")
    q, k = _unit_last(q), _unit_last(k)
    oq, ok = (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
    )
    if q.numel() + k.numel() == 0:
        return oq, ok
    if pairs == 0:  # nothing rotates (R = 0): the copies every impl returns
        return oq.copy_(q), ok.copy_(k)
    block_p = triton.next_power_of_2(pairs)
    rest = dim - 2 * pairs
    block_rest = triton.next_power_of_2(rest) if rest else 0
    block_s = min(triton.next_power_of_2(seq_len), max(1, 1024 // block_p))  # tiles of ~1024 pairs
    grid = launch_grid(seq_len, block_s, bsz * (heads_q + heads_k))
    cs_sb = 0 if c.shape[0] == 1 else c.stride(0)
    _rope_qk_kernel[grid](
        q, k, oq, ok, c, s, seq_len, heads_q, heads_k,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        oq.stride(0), oq.stride(1), oq.stride(2),
        ok.stride(0), ok.stride(1), ok.stride(2),
        cs_sb, c.stride(1),
        P=pairs, D=dim, BLOCK_S=block_s, BLOCK_P=block_p, BLOCK_REST=block_rest, INTERLEAVED=interleaved,
        F64=q.dtype == torch.float64, **NO_FUSION,
    )  # fmt: skip
    return oq, ok
