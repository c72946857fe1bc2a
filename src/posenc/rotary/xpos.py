"""xPos: RoPE with an exponential decay by distance (Sun et al. 2022, "A Length-Extrapolatable Transformer").

Pair ``i`` of a query at position ``n`` is rotated as in RoPE and scaled by ``zeta_i^((n - c) / scale_base)``;
the same pair of a key at position ``m`` by ``zeta_i^(-(m - c) / scale_base)``, with
``zeta_i = (2i / D + gamma) / (1 + gamma)`` in ``(0, 1)``. Their dot product carries ``zeta_i^((n - m) /
scale_base)``: it depends only on ``n - m`` and decays with distance for causal attention (``n >= m``).

The centre ``c`` cancels in every logit; it only decides which positions are representable, since the
separate scales ``zeta^(+-(p - c)/scale_base)`` grow and shrink exponentially. The reference implementation
(torchscale, and rotary-embedding-torch) recentres on the middle of the current sequence and re-rotates all
keys at every decoding step; posenc caches rotated keys, so the centre is fixed (``center``, default 0), which
keeps KV-cache decoding exact. Positions must stay within :meth:`XPos.max_offset` of the centre
(33,427 for the defaults in float32 and bfloat16, 1,699 in float16: the scales keep room for query and key
pairs of norm up to 256); farther ones raise ``ValueError`` in
eager mode (the check is skipped under ``torch.compile``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ..base import PositionEncoding
from ..functional.rotary import (
    apply_rope,
    apply_rope_pairs,
    pair_matvec,
    phase_dtype,
    rope_cos_sin,
    rope_inv_freq,
    rope_pair_tables,
)
from ..functional.tables import RowViews, Span, decode_position, host_in_range, host_span, rows_at
from ..session import current_session
from ..validation import (
    ROPE_MAX_POSITION,
    as_index_positions,
    check_bool,
    check_float,
    check_int,
    check_module_device,
    check_position_range,
    check_positions,
    check_rotatable,
    check_table_sizes,
)


def xpos_zeta(head_dim: int, gamma: float, device: torch.device | None = None) -> Tensor:
    """``(D/2,)`` per-pair decay bases ``zeta_i = (2i / D + gamma) / (1 + gamma)`` in the phase dtype."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    i2 = torch.arange(0, head_dim, 2, device=dev, dtype=phase_dtype(dev))
    return (i2 / head_dim + gamma) / (1.0 + gamma)


def xpos_cos_sin(
    positions: Tensor, inv_freq: Tensor, zeta: Tensor, scale_base: float, center: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scaled phase tables for queries and keys, float32.

    Args:
        positions: ``(S,)`` or ``(B, S)`` integer positions.
        inv_freq: ``(P,)`` RoPE frequencies; zeta: ``(P,)`` decay bases.
        scale_base: positions per power of ``zeta``; center: the position with scale 1.

    Returns:
        ``(cos_q, sin_q, cos_k, sin_k)``, each ``(..., S, P)``: cos and sin times ``zeta^(+(p-c)/scale_base)``
        for queries and ``zeta^(-(p-c)/scale_base)`` for keys, computed in the phase dtype, then float32.
    """
    dt = phase_dtype(inv_freq.device)
    cos, sin = rope_cos_sin(positions, inv_freq, dtype=dt)
    log_scale = (positions.to(dt) - center).unsqueeze(-1) / scale_base * zeta.to(dt).log()  # (..., S, P)
    up, down = log_scale.exp(), (-log_scale).exp()
    f32 = torch.float32
    return (cos * up).to(f32), (sin * up).to(f32), (cos * down).to(f32), (sin * down).to(f32)


#: How large a query or key pair (its norm) may be, at any position :meth:`XPos.max_offset` allows, before its scaled value
#: overflows the dtype (or, on the query side, falls to a subnormal).
XPOS_HEADROOM = 2.0**8


def _room(dtype: torch.dtype) -> float:
    """How many powers of e a scale may span in ``dtype`` and leave :data:`XPOS_HEADROOM` for the pair's norm."""
    info = torch.finfo(dtype)
    return min(math.log(info.max), -math.log(info.tiny)) - math.log(XPOS_HEADROOM)


class XPos(PositionEncoding):
    """xPos rotary encoding with distance decay (Sun et al. 2022, arXiv:2212.10554), for causal attention.

    Args:
        head_dim: ``D``, even; all dims are rotated.
        scale_base: positions per power of ``zeta`` (512 in the paper).
        gamma: ``zeta_i = (2i/D + gamma) / (1 + gamma)`` (0.4 in the paper).
        base: RoPE frequency base.
        interleaved: pair layout as in :class:`posenc.RoPE` (the reference implementation is interleaved).
        center: the position whose scale is 1; logits do not depend on it, the representable window
            ``|position - center| <= max_offset(dtype)`` does.

    Shapes: ``q: (B, H, S, D)``, ``k: (B, Hkv, S, D)``, ``positions: (S,)`` or ``(B, S)`` (others raise
    ``ValueError``, as in :class:`posenc.RoPE`). The scaled phase
    tables for positions ``0 .. cache_len-1`` are precomputed (float64 math, stored float32, rebuilt never cast
    when the module moves) and read by index for explicit positions inside them (decoding); positions outside
    are computed exactly per call (:func:`posenc.functional.tables.rows_at`). The range check against
    :meth:`max_offset` is free for positions inside the table (their span is known on the host); outside it
    costs a sync in eager mode (none under ``torch.compile``, where it is skipped). Outputs keep the input dtype.
    Only meaningful with ``causal=True``: for keys after the query the factor grows instead of decaying.
    """

    name: ClassVar[str | None] = "xpos"
    family: ClassVar[str] = "rotary"
    causal_only: ClassVar[bool] = True
    sizes: ClassVar[tuple[str, ...]] = ("head_dim",)
    runtime_options: ClassVar[tuple[str, ...]] = ("cache_len",)
    inv_freq: Tensor
    zeta: Tensor
    cos_q: Tensor
    sin_q: Tensor
    cos_k: Tensor
    sin_k: Tensor
    pair_table: Tensor

    def causal_only_reason(self) -> str | None:
        return "for keys after the query its scale grows instead of decaying"

    def __init__(
        self,
        head_dim: int,
        scale_base: float = 512.0,
        gamma: float = 0.4,
        base: float = 10000.0,
        interleaved: bool = False,
        center: int = 0,
        cache_len: int = 2048,
    ) -> None:
        super().__init__()
        head_dim = check_int("head_dim", head_dim, at_least=2, owner="XPos")
        if head_dim % 2:
            raise ValueError(f"XPos: head_dim must be even (all dims are rotated in pairs), got {head_dim}")
        base = check_float("base", base, above=1, owner="XPos")
        scale_base = check_float(
            "scale_base (positions per power of zeta)", scale_base, above=0, owner="XPos"
        )
        gamma = check_float(
            "gamma (zeta_0 = gamma / (1 + gamma) must be positive)", gamma, above=0, owner="XPos"
        )
        interleaved = check_bool("interleaved", interleaved, owner="XPos")
        cache_len = check_int("cache_len", cache_len, at_least=0, owner="XPos")
        center = check_int("center", center, owner="XPos")
        # (the angles' precision limit; past int64 torch cannot subtract it)
        if abs(center) > ROPE_MAX_POSITION:
            raise ValueError(
                f"XPos: center must be a position in [-2**31, 2**31] (the positions RoPE's angles are exact "
                f"for), got {center}"
            )
        zeta_min = gamma / (1.0 + gamma)
        if not zeta_min < 1.0:
            raise ValueError(
                f"XPos: gamma={gamma:g} gives zeta_0 = gamma / (1 + gamma) = 1 in float64: no decay, and no "
                "representable window to compute; use a smaller gamma (0.4 in the paper)"
            )
        if not math.isfinite(scale_base * _room(torch.float64) / -math.log(zeta_min)):  # (the widest range)
            raise ValueError(
                f"XPos: scale_base={scale_base:g} makes the representable window |position - center| infinite "
                "(no decay within any float range); use a smaller scale_base (512 in the paper)"
            )
        self.head_dim, self.scale_base, self.gamma, self.base = (
            head_dim,
            float(scale_base),
            float(gamma),
            float(base),
        )
        self.interleaved, self.center = interleaved, center
        # cache only positions whose scales stay finite in float32 (a far centre leaves nothing to cache)
        fits = max(abs(center), abs(cache_len - 1 - center)) <= self.max_offset(torch.float32)
        self.cache_len = cache_len if fits else 0
        check_table_sizes(  # float64 inv_freq and zeta (D/2,); per cached position 4 (D/2,) and 8 (D/2,) float32
            "XPos",
            {"cache_len": (self.cache_len, 0), "head_dim": (head_dim, 2)},
            lambda n: 8 * n["head_dim"] + 24 * n["head_dim"] * n["cache_len"],
            "float32 tables (cache_len, head_dim) of cos, sin and pair matrices for queries and keys",
        )
        self._rows = RowViews(nested=True)  # pair_table's (query, key) rows, for a decode step
        self.register_derived()

    def derived_buffers(self, device: torch.device) -> dict[str, Tensor]:
        """``inv_freq``, ``zeta`` ``(D/2,)``, float32 ``(cache_len, D/2)`` tables, and ``pair_table``
        ``(cache_len, 2, ...)``: each position's pair matrices (:func:`rope_pair_tables`) for queries then keys,
        read as one row per decode step."""
        inv_freq = rope_inv_freq(self.head_dim, self.base, device=device)
        zeta = xpos_zeta(self.head_dim, self.gamma, device)
        pos = torch.arange(self.cache_len, device=device)
        cq, sq, ck, sk = xpos_cos_sin(pos, inv_freq, zeta, self.scale_base, self.center)
        pairs = (rope_pair_tables(cq, sq, self.interleaved), rope_pair_tables(ck, sk, self.interleaved))
        return {
            "inv_freq": inv_freq,
            "zeta": zeta,
            "cos_q": cq,
            "sin_q": sq,
            "cos_k": ck,
            "sin_k": sk,
            "pair_table": torch.stack(pairs, dim=1),
        }

    @property
    def max_length(self) -> int | None:
        """Positions ``0 .. n-1`` stay within :meth:`max_offset` (float32, the tables' dtype) of ``center`` up to
        ``n = center + max_offset + 1`` (33,428 for the defaults); 0 when position 0 is already too far."""
        limit = self.max_offset(torch.float32)
        return 0 if abs(self.center) > limit else max(0, int(self.center) + limit + 1)

    def max_length_in(self, dtype: torch.dtype) -> int | None:
        """:attr:`max_length` for queries and keys of ``dtype``: the tables' float32 range or ``dtype``'s, the smaller
        (1,700 for the defaults in float16)."""
        limit = min(
            self.max_offset(torch.float32), self.max_offset(dtype) if dtype.is_floating_point else 2**62
        )
        return 0 if abs(self.center) > limit else max(0, int(self.center) + limit + 1)

    def max_offset(self, dtype: torch.dtype = torch.float32) -> int:
        """Largest ``|position - center|`` whose scales ``zeta_0^(+-offset/scale_base)`` stay within
        ``[tiny * XPOS_HEADROOM, max / XPOS_HEADROOM]`` of ``dtype``: a query or key pair of norm up to
        ``XPOS_HEADROOM`` (256), rotated and scaled, neither overflows nor loses precision as a subnormal. (The scales alone
        at the dtype's edge put an inf into any key entry above about 4, and NaN into the attention.)"""
        zeta_min = self.gamma / (1.0 + self.gamma)
        return math.floor(self.scale_base * _room(dtype) / -math.log(zeta_min))

    def _check_range(self, positions: Tensor, dtype: torch.dtype) -> None:
        if torch.compiler.is_compiling() or positions.device.type == "meta" or positions.numel() == 0:
            return
        tables = self.max_offset(torch.float32)  # the tables are float32
        own = self.max_offset(dtype) if dtype.is_floating_point else tables
        limit = min(tables, own)
        span = int((positions - self.center).abs().max().item())
        if span > limit:
            holder = "the float32 tables hold" if tables <= own else f"{dtype} holds"
            advice = "" if tables <= own else ", or run in float32"
            raise ValueError(
                f"xPos: a position is {span} away from center={self.center}, but {holder} the scales "
                f"zeta^(+-offset/{self.scale_base:g}) only up to {limit}; set center nearer the positions"
                f"{' or' if not advice else ','} raise scale_base{advice}"
            )

    def _exact(self, positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        inv_freq, zeta = self.inv_freq.to(positions.device), self.zeta.to(positions.device)
        return xpos_cos_sin(positions, inv_freq, zeta, self.scale_base, self.center)

    def _promised(self, dtype: torch.dtype, span: Span | None) -> bool:
        """Whether an open :class:`posenc.DecodeSession` promises positions below a length whose scales fit
        ``dtype``: then a decode step on a GPU needs no range check (a device sync per layer and token). Where
        the positions' ``span`` is known on the host (a CPU) the promise is checked too: a position outside
        ``[0, slots)`` gets the range check (a scale that overflows raised there, inside a session it was NaN)."""
        if torch.compiler.is_compiling():
            return False  # (dynamo cannot trace a ContextVar; traced code checks nothing anyway)
        session = current_session()
        if session is None or not self._span_fits(session.slots, dtype):
            return False
        return span is None or (span[0] >= 0 and span[1] < session.slots)

    def _span_fits(self, length: int, dtype: torch.dtype) -> bool:
        """Whether every position in ``0 .. length-1`` passes the range check in ``dtype`` (host arithmetic)."""
        span = max(abs(self.center), abs(length - 1 - self.center))
        return not dtype.is_floating_point or span <= self.max_offset(dtype)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        table = self._buffers["pair_table"]  # (not nn.Module.__getattr__, see RoPE._decode_row)
        assert table is not None
        p = decode_position(q, k, positions, table, self.head_dim)
        if p is not None:  # a CPU decode step inside the table (float32 scales fit there): the general path's
            mq, mk = self._rows(table, p)  # one-position branch below without its checks, bitwise the same
            return pair_matvec(q, mq, self.interleaved), pair_matvec(k, mk, self.interleaved)
        check_rotatable("XPos", self.head_dim, q, k)
        check_positions("XPos", positions, q.shape[-2], q.shape[0], k.shape[0], meta=q.is_meta)
        if table.is_meta:  # (real tables take meta inputs: shapes only)
            check_module_device("XPos", "q", q, True)
        positions = as_index_positions(positions)
        seq = q.shape[-2]
        if positions is None and seq <= self.cache_len and self.cos_q.device == q.device:
            cq, sq, ck, sk = self.cos_q[:seq], self.sin_q[:seq], self.cos_k[:seq], self.sin_k[:seq]
            if not self._span_fits(seq, q.dtype):
                self._check_range(torch.tensor([0, seq - 1]), q.dtype)  # raises with the full message
        else:
            pos = torch.arange(seq, device=q.device) if positions is None else positions.to(q.device)
            span = host_span(pos)  # (min, max) on the host, eager CPU only
            in_table = bool(self.cache_len) and host_in_range(pos, self.cache_len, span) is True
            if not (in_table and self._span_fits(self.cache_len, q.dtype)):
                if not self._promised(q.dtype, span):
                    self._check_range(pos, q.dtype)
                check_position_range(pos, seq, owner="XPos", span=span)  # angles as RoPE's: |p| <= 2**31
            elif span is not None and span[0] == span[1] and self.pair_table.is_cpu and q.is_cpu:
                # one position (a decode step): its pair matrices, broadcast; bitwise the apply_rope result
                mq, mk = self._rows(self.pair_table, span[0])  # (2, 2, D/2) each ((D/2, 2, 2) interleaved)
                return apply_rope_pairs(q, mq, self.interleaved), apply_rope_pairs(k, mk, self.interleaved)
            if pos.dim() == 2:  # (B, S) -> (B, 1, S): tables come out (B, 1, S, P), broadcast over heads
                pos = pos.unsqueeze(1)
            tables = (self.cos_q, self.sin_q, self.cos_k, self.sin_k)
            cq, sq, ck, sk = rows_at(pos, self.cache_len, tables, self._exact, span)
        return apply_rope(q, cq, sq, self.interleaved), apply_rope(k, ck, sk, self.interleaved)

    def forward(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Rotate and scale ``q: (B, H, S, D)`` and ``k: (B, Hkv, S, D)`` at ``positions`` (default ``0..S-1``)."""
        return self.rotate(q, k, positions)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, scale_base={self.scale_base:g}, gamma={self.gamma:g}, base={self.base:g}, "
            f"interleaved={self.interleaved}, center={self.center}"
        )
