"""Rotary position embedding (Su et al. 2021, RoFormer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..base import PositionEncoding
from ..functional.rotary import (
    apply_rope,
    apply_rope_full,
    apply_rope_pairs,
    check_rotary_dim,
    pair_matvec,
    rope_cos_sin,
    rope_full_tables,
    rope_inv_freq,
    rope_pair_tables,
)
from ..functional.tables import RowViews, Span, decode_position, host_span, rows_at
from ..kernels import AUTO_COMPILED_MIN_NUMEL, FALLBACK, check_impl, has_triton, rope_qk
from ..validation import (
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
from .scaling import RopeScaling, parse_scaling, scaled_inv_freq


class RoPE(PositionEncoding):
    """Rotate queries and keys so that ``<rope(q)_m, rope(k)_n>`` depends only on ``m - n`` (Su et al. 2021,
    "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv:2104.09864).

    Args:
        head_dim: size ``D`` of each head.
        base: frequency base ``theta`` (10000 in the paper; 500000 in Llama 3).
        rotary_dim: rotate only the first ``R`` dims (partial rotary, e.g. GPT-NeoX); even, ``<= D``.
        interleaved: pair ``(x[2i], x[2i+1])`` as in the paper and GPT-J; default pairs ``(x[i], x[i+R/2])``
            as GPT-NeoX and Llama in transformers.
        cache_len: cos/sin are precomputed for positions ``0 .. cache_len-1``, read by index for any positions
            inside (decoding at an offset, per-row offsets, packed sequences) and computed exactly outside;
            see :func:`posenc.functional.tables.rows_at` for how that is decided without a device sync.
            A speed knob only: it limits no position.
        scaling: context extension, a :class:`posenc.RopeScaling` (``LinearScaling``, ``NTKScaling``,
            ``DynamicNTKScaling``, ``YaRNScaling``, ``Llama3Scaling``, ``LongRoPEScaling``) or a transformers-style
            dict ``{"rope_type": "yarn", "factor": 4.0, ...}``; None for plain RoPE. See
            ``posenc.rotary.scaling``. Length-dependent methods (dynamic NTK, LongRoPE) recompute the
            frequencies per call from ``max(position) + 1`` over the whole batch (as transformers does within a
            call), without touching module state: unlike transformers' dynamic update, which keeps the largest
            length seen by earlier calls, every call equals a fresh transformers model.
        impl: how the rotation runs: "auto" (fastest correct path for the device and dtype), "reference"
            (always :func:`posenc.functional.apply_rope`), "compiled" or "triton"; see ``posenc.kernels``.

    Small calls on CPU rotate in fewer passes than the reference, bitwise equal to it: one position (a decode
    step) with its pairs' rotation matrices (:func:`posenc.functional.rotary.apply_rope_pairs`: two calls; the
    table ``pair_table (cache_len, 2, 2, R/2)``, ``(cache_len, R/2, 2, 2)`` interleaved, twice the memory of
    cos and sin), more positions with full-width rows (:func:`posenc.functional.rotary.apply_rope_full`: four
    passes, the fastest eager form forward and backward). Under ``torch.compile`` the forms inductor
    vectorizes: the reference's two halves (the default layout) or the full-width rows (interleaved).

    Phase math is float64 (angles, then cos/sin), stored as float32 whatever ``.to(dtype)`` is applied to the
    module; the rotation runs in float32 and returns the input dtype. Positions must satisfy
    ``|p| <= 2**31`` (``posenc.validation.ROPE_MAX_POSITION``): there cos/sin are within 2e-7 of exact; the
    float64 product's error grows like ``|p| * 2**-53`` beyond (1e-4 at 1e12). Larger positions raise
    ``ValueError`` where checking costs no device sync (default, CPU or int32 positions).

    Shapes: ``q: (B, H, S, D)``, ``k: (B, Hkv, S, D)``, ``positions: (S,)`` or ``(B, S)``; other ranks, q and k
    of different lengths or positions of another shape raise ``ValueError`` (shapes only: no sync).
    """

    name: ClassVar[str | None] = "rope"
    family: ClassVar[str] = "rotary"
    sizes: ClassVar[tuple[str, ...]] = ("head_dim",)
    runtime_options: ClassVar[tuple[str, ...]] = ("cache_len", "impl")
    scalable: ClassVar[bool] = True
    inv_freq: Tensor
    cos_cached: Tensor
    sin_cached: Tensor
    pair_table: Tensor

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        rotary_dim: int | None = None,
        interleaved: bool = False,
        cache_len: int = 2048,
        scaling: RopeScaling | Mapping[str, Any] | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.impl = check_impl(impl)
        head_dim = check_int("head_dim", head_dim, at_least=2, owner="RoPE")
        base = check_float("base", base, above=1, owner="RoPE")
        interleaved = check_bool("interleaved", interleaved, owner="RoPE")
        cache_len = check_int("cache_len", cache_len, at_least=0, owner="RoPE")
        if rotary_dim is None and head_dim % 2:
            raise ValueError(
                f"RoPE: head_dim={head_dim} is odd and rotary_dim defaults to head_dim, but dims are rotated in "
                f"pairs; pass an even rotary_dim <= {head_dim} (partial rotary)"
            )
        rotary_dim = head_dim if rotary_dim is None else check_int("rotary_dim", rotary_dim, owner="RoPE")
        check_rotary_dim(rotary_dim, head_dim)
        width = "head_dim" if rotary_dim == head_dim else "rotary_dim"
        check_table_sizes(  # float64 inv_freq (R/2,); per cached position float32 cos, sin (R/2,), pairs (2, 2, R/2)
            "RoPE",
            {"cache_len": (cache_len, 0), width: (rotary_dim, 2)},
            lambda n: 4 * n[width] * (1 + 3 * n["cache_len"]),
            "float32 tables (cache_len, rotary_dim) of cos, sin and pair rotations",
        )
        self.scaling = parse_scaling(scaling, base=base, head_dim=head_dim, rotary_dim=rotary_dim)
        if self.scaling is not None:
            self.scaling.validate(rotary_dim)
        self.head_dim, self.rotary_dim, self.base = head_dim, rotary_dim, float(base)
        self.interleaved, self.cache_len = interleaved, cache_len
        self._rows = RowViews()  # pair_table's rows, for a decode step
        self.register_derived()

    # -- phase tables: derived state, rebuilt (never cast) whenever the module moves -----------------
    def compute_inv_freq(self, device: torch.device) -> Tensor:
        """``(R/2,)`` frequencies in the phase dtype, with ``scaling`` applied (its construction-time value)."""
        if self.scaling is None:
            return rope_inv_freq(self.rotary_dim, self.base, device=device)
        return scaled_inv_freq(self.scaling, self.rotary_dim, self.base, None, device)[0]

    @property
    def attention_scale(self) -> float:
        """Factor folded into cos and sin (1 without scaling; YaRN and LongRoPE set a temperature)."""
        return 1.0 if self.scaling is None else self.scaling.attention_factor_value()

    def derived_buffers(self, device: torch.device) -> dict[str, Tensor]:
        """``inv_freq (R/2,)`` in the phase dtype, float32 ``cos_cached``/``sin_cached (cache_len, R/2)`` and
        ``pair_table (cache_len, 2, 2, R/2)``: each position's pair rotations (:func:`rope_pair_tables`)."""
        inv_freq = self.compute_inv_freq(device)
        pos = torch.arange(self.cache_len, device=device)
        cos, sin = rope_cos_sin(pos, inv_freq, scale=self.attention_scale)
        pairs = rope_pair_tables(cos, sin, self.interleaved)
        return {"inv_freq": inv_freq, "cos_cached": cos, "sin_cached": sin, "pair_table": pairs}

    def with_scaling(self, scaling: RopeScaling | Mapping[str, Any] | None) -> RoPE:
        """A RoPE like this one (head_dim, base, rotary_dim, layout, cache, impl, device) with ``scaling`` instead.

        For inference-time context extension of a trained model: ``rope.with_scaling({"rope_type": "yarn",
        "factor": 4.0, "original_max_position_embeddings": 128})``. None gives plain RoPE.
        """
        out = RoPE(
            self.head_dim,
            base=self.base,
            rotary_dim=self.rotary_dim,
            interleaved=self.interleaved,
            cache_len=self.cache_len,
            scaling=scaling,
            impl=self.impl,
        )
        return out.to(self.inv_freq.device)

    # -- math ------------------------------------------------------------------------------------------
    def cos_sin(
        self, seq_len: int, positions: Tensor | None, device: torch.device | str
    ) -> tuple[Tensor, Tensor]:
        """float32 cos and sin: ``(S, R/2)`` for default positions ``0 .. S-1``, ``(1|B, 1, S, R/2)`` for given
        ones (integer ``(S,)`` or ``(B, S)``, ``|p| <= 2**31``: checked as :meth:`rotate` checks them)."""
        owner = "RoPE.cos_sin"
        seq_len = check_int("seq_len", seq_len, at_least=0, owner=owner)
        check_positions(owner, positions, seq_len)
        positions = as_index_positions(positions)
        check_position_range(positions, seq_len, owner=owner)
        cos, sin = self._tables(seq_len, positions, torch.device(device), pairs=False)
        # copies: the rows read by index are views of the module's tables, which an in-place edit would change
        return cos.clone(), sin.clone()

    def _tables(
        self,
        seq_len: int,
        positions: Tensor | None,
        device: torch.device,
        pairs: bool,
        span: Span | None = None,
    ) -> tuple[Tensor, ...]:
        """cos/sin (``pairs=False``, ``(.., R/2)`` each) or the pair matrices (``pairs=True``, one ``(.., 2, 2, R/2)``,
        :func:`rope_pair_tables`) at ``positions``.

        Inside the table (and for scalings whose frequencies do not depend on the length) rows are read by
        index via :func:`rows_at`; elsewhere they are computed exactly from ``inv_freq`` in float64. ``span``:
        the positions' :func:`host_span`, when the caller has it.
        """
        cached: tuple[Tensor, ...] = (self.pair_table,) if pairs else (self.cos_cached, self.sin_cached)
        if positions is None:
            if seq_len <= self._static_len() and cached[0].device == device:
                return tuple(t[:seq_len] for t in cached)
            positions = torch.arange(seq_len, device=device)
        positions = positions.to(device)
        if positions.dim() == 2:  # (B, S) -> (B, 1, S): tables come out (B, 1, S, .), broadcast over heads
            positions = positions.unsqueeze(1)

        def exact(pos: Tensor) -> tuple[Tensor, ...]:
            cos, sin = rope_cos_sin(pos, self.inv_freq_for(pos), scale=self.attention_scale)
            return (rope_pair_tables(cos, sin, self.interleaved),) if pairs else (cos, sin)

        if self.scaling is not None and self.scaling.length_dependent:
            return exact(positions)
        return tuple(rows_at(positions, self.cache_len, cached, exact, span))

    def _static_len(self) -> int:
        """Lengths up to this one may use the cached tables."""
        limit = None if self.scaling is None else self.scaling.static_length
        return self.cache_len if limit is None else min(self.cache_len, limit)

    def inv_freq_for(self, positions: Tensor) -> Tensor:
        """``(R/2,)`` frequencies for a call at ``positions``: ``inv_freq``, or for a length-dependent scaling
        the ones for ``max(positions) + 1`` (a pure, traceable function of the positions' values)."""
        if self.scaling is None or not self.scaling.length_dependent:
            return self.inv_freq
        seq_len = positions.max() + 1
        return scaled_inv_freq(self.scaling, self.rotary_dim, self.base, seq_len, self.inv_freq.device)[0]

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        row = self._decode_row(q, k, positions)
        if row is not None:  # a decode step: every check passed at once, the row read by index
            return pair_matvec(q, row, self.interleaved), pair_matvec(k, row, self.interleaved)
        check_rotatable("RoPE", self.head_dim, q, k)
        check_positions("RoPE", positions, q.shape[-2], q.shape[0], k.shape[0], meta=q.is_meta)
        check_module_device("RoPE", "q", q, self._buffers["inv_freq"].is_meta)  # type: ignore[union-attr]
        positions = as_index_positions(positions)
        span = host_span(positions)  # (min, max) on the host, eager CPU only: one reduction for both uses
        check_position_range(positions, q.shape[-2], span=span)
        if self._small_or_traced(q, k):
            row = self._one_row(span, q)  # every position the same (a decode step): one row, broadcast
            if row is not None and q.dtype == k.dtype == row.dtype:  # float32: the bare arithmetic
                return pair_matvec(q, row, self.interleaved), pair_matvec(k, row, self.interleaved)
            if row is not None:
                return apply_rope_pairs(q, row, self.interleaved), apply_rope_pairs(k, row, self.interleaved)
            cos, sin = self._tables(q.shape[-2], positions, q.device, False, span)  # (.., S, R/2)
            if torch.compiler.is_compiling():
                return _rotate_traced(q, k, cos, sin, self.interleaved)
            return _rotate_full(q, k, *rope_full_tables(cos, sin, self.interleaved), self.interleaved)
        if positions is not None and self._at_kernel(q, k):
            return self._rotate_at(q, k, positions)
        cos, sin = self._tables(q.shape[-2], positions, q.device, pairs=False)  # (checked above)
        return rope_qk(q, k, cos, sin, self.interleaved, impl=self.impl)

    def _decode_row(self, q: Tensor, k: Tensor, positions: Tensor | None) -> Tensor | None:
        """``pair_table``'s row ``(2, 2, R/2)`` for the commonest eager call, a decode step on a CPU
        (:func:`decode_position`), with ``impl="auto"``, every dim rotated, frequencies independent of the
        length and a call too small for a fused kernel; else None. Those conditions imply the checks and
        choices :meth:`rotate` makes step by step for that call: the same row, the same arithmetic, bitwise."""
        if self.impl != "auto" or self.rotary_dim != self.head_dim:
            return None
        if self.scaling is not None and self.scaling.length_dependent:
            return None
        table = self._buffers["pair_table"]  # (not nn.Module.__getattr__: 0.7 us, the most of any one step)
        assert table is not None
        p = decode_position(q, k, positions, table, self.head_dim)
        if p is None or q.numel() + k.numel() >= AUTO_COMPILED_MIN_NUMEL:
            return None
        return self._rows(table, p)  # type: ignore[no-any-return]

    def _at_kernel(self, q: Tensor, k: Tensor) -> bool:
        """Whether explicit positions go to the one-launch Triton kernel that looks the rows up itself
        (:mod:`posenc.kernels.triton_rope_at`): ``impl="triton"`` always, ``auto`` on CUDA with triton; never
        while tracing or for length-dependent scalings (their frequencies follow the positions)."""
        if self.impl not in ("auto", "triton") or torch.compiler.is_compiling():
            return False
        if torch._C._are_functorch_transforms_active() or self.cos_cached.device != q.device:
            return False
        if q.is_meta or self.cache_len == 0:  # (meta: traced as the reference; no table: computed rows below)
            return False
        if self.scaling is not None and self.scaling.length_dependent:
            return False
        if self.impl == "triton":
            return True
        same = q.dim() == k.dim() == 4 and q.shape[0] == k.shape[0] and q.shape[2:] == k.shape[2:]
        usable = q.device.type == "cuda" and has_triton() and FALLBACK.usable("triton (positions)")
        return usable and same and q.dtype == k.dtype

    def _rotate_at(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        from ..kernels.triton_rope_at import rope_qk_at  # imports triton only here

        pos = positions.to(q.device).view(1, -1) if positions.dim() == 1 else positions.to(q.device)
        tables = (self.cos_cached, self.sin_cached, self.inv_freq)

        def fused() -> tuple[Tensor, Tensor]:
            return rope_qk_at(q, k, pos, tables, self.attention_scale, self.interleaved)

        def slow() -> tuple[Tensor, Tensor]:
            cos, sin = self._tables(q.shape[-2], positions, q.device, pairs=False)
            return rope_qk(q, k, cos, sin, self.interleaved, impl="reference")

        if self.impl == "auto":  # a kernel that cannot run here: the reference, for good
            return FALLBACK.run("triton (positions)", fused, slow, "the reference")
        return fused()

    def _one_row(self, span: Span | None, q: Tensor) -> Tensor | None:
        """``pair_table``'s row ``(2, 2, R/2)`` when all positions are one position ``p`` known on the host, inside the
        table and with frequencies that do not depend on the length, and the table is on ``q``'s device; else
        None (then :meth:`_tables` decides)."""
        if span is None or span[0] != span[1] or not 0 <= span[0] < self.cache_len:
            return None
        if self.scaling is not None and self.scaling.length_dependent:
            return None
        table = self.pair_table
        if not (table.is_cpu and q.is_cpu) and table.device != q.device:
            return None
        return self._rows(table, span[0])  # type: ignore[no-any-return]

    def _small_or_traced(self, q: Tensor, k: Tensor) -> bool:
        """Whether ``auto`` rotates in fewer passes than the reference (see the class docstring): all dims
        rotated, and either tracing or a call too small for a fused kernel off CUDA (eager calls dominate)."""
        if self.impl != "auto" or self.rotary_dim != self.head_dim:
            return False
        if torch.compiler.is_compiling():
            return True
        return not q.is_cuda and q.numel() + k.numel() < AUTO_COMPILED_MIN_NUMEL

    def forward(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Rotate ``q: (B, H, S, D)`` and ``k: (B, Hkv, S, D)`` at ``positions`` (default ``0..S-1``)."""
        return self.rotate(q, k, positions)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
            f"interleaved={self.interleaved}" + ("" if self.scaling is None else f", scaling={self.scaling}")
        )


def _rotate_traced(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
) -> tuple[Tensor, Tensor]:
    """q and k rotated in the forms inductor's CPU backend vectorizes: the half layout as :func:`apply_rope`'s two
    halves, the interleaved one as :func:`apply_rope_full`. (The pair form's sum over a dimension of two compiles
    to scalar loops there: 2.4x slower forward and backward at q ``(8, 4, 128, 32)`` bf16.) Bitwise equal to
    every other form."""
    if interleaved:
        tables = rope_full_tables(cos, sin, True)
        return apply_rope_full(q, *tables, True), apply_rope_full(k, *tables, True)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def _rotate_full(
    q: Tensor, k: Tensor, cos_full: Tensor, sin_rot: Tensor, interleaved: bool
) -> tuple[Tensor, Tensor]:
    """q and k through :func:`apply_rope_full`, each on its own: two tensors of their own (rotating them as one
    ``cat`` gave two views of one tensor, so an in-place edit of the rotated q failed k's backward, and a cache
    holding k kept q's memory alive, review s7; and it was no faster: one thread, fwd+bwd at (8, 4, 128, 32)
    0.64 against 1.09 ms, (1, 32, 16, 128) 0.18 against 0.24 ms, 2026-11-30)."""
    return apply_rope_full(q, cos_full, sin_rot, interleaved), apply_rope_full(
        k, cos_full, sin_rot, interleaved
    )
