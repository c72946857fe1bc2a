"""Sinusoidal absolute encoding (Vaswani et al. 2017, section 3.5)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..base import PositionEncoding, as_positions
from ..functional.absolute import sinusoidal_table
from ..functional.tables import rows_at
from ..validation import (
    check_float,
    check_hidden,
    check_int,
    check_module_device,
    check_position_range,
    check_table_sizes,
)


class Sinusoidal(PositionEncoding):
    """``dropout(x + PE[positions])`` with the fixed sin/cos table, computed for whatever positions are asked.

    Args:
        dim: model width (odd widths allowed: the last even index gets its sine).
        base: wavelength base, 10000 in the paper.
        dropout: dropout on the sum, as in the paper.
        cache_len: the table is precomputed (float64 math, stored float32) for positions ``0 .. cache_len-1``
            and read by index for any positions inside it (decoding, per-row offsets); positions outside are
            computed on the fly, exactly (:func:`posenc.functional.tables.rows_at`). A speed knob only.

    Shapes: ``x: (B, S, dim)`` (or ``(S, dim)``, or ``(..., B, S, dim)``), ``positions: (S,)`` or ``(1|B, S)``;
    returns ``x``'s shape in ``x.dtype`` (float64 ``x``: the table computed in float64, not read from the float32
    one).
    """

    name: ClassVar[str | None] = "sinusoidal"
    family: ClassVar[str] = "absolute"
    sizes: ClassVar[tuple[str, ...]] = ("dim",)
    runtime_options: ClassVar[tuple[str, ...]] = ("cache_len",)

    table: Tensor

    def __init__(self, dim: int, base: float = 10000.0, dropout: float = 0.0, cache_len: int = 2048) -> None:
        super().__init__()
        dim = check_int("dim", dim, at_least=1, owner="Sinusoidal")
        base = check_float("base", base, above=0, owner="Sinusoidal")
        dropout = check_float("dropout", dropout, at_least=0, at_most=1, owner="Sinusoidal")
        cache_len = check_int("cache_len", cache_len, at_least=0, owner="Sinusoidal")
        check_table_sizes(  # float32 (cache_len, dim), from float64 frequencies (dim,)
            "Sinusoidal",
            {"cache_len": (cache_len, 0), "dim": (dim, 1)},
            lambda n: n["dim"] * (8 + 4 * n["cache_len"]),
            "a float32 (cache_len, dim) table",
        )
        self.dim, self.base, self.cache_len = dim, base, cache_len
        self.dropout = nn.Dropout(dropout)
        self.register_derived()

    def derived_buffers(self, device: torch.device) -> dict[str, Tensor]:
        """``table (cache_len, dim)`` float32, rebuilt (never cast) when the module moves."""
        return {"table": sinusoidal_table(torch.arange(self.cache_len, device=device), self.dim, self.base)}

    def embed(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        batch = check_hidden("Sinusoidal", x, self.dim)
        check_module_device("Sinusoidal", "x", x, self.table.is_meta)
        seq = x.shape[-2]
        pos: Tensor | None = None  # (1|B, S) when given, or needed beyond the table / in float64
        # float64 angles: within 2e-7 of exact up to |p| = 2**31, noise by 2**62 (as RoPE's)
        if positions is not None:
            pos = as_positions(positions, seq, x.device, batch=batch, owner="Sinusoidal")
            check_position_range(pos, seq, owner="Sinusoidal", hint="use smaller positions")
        elif x.dtype == torch.float64 or seq > self.cache_len:
            pos = as_positions(None, seq, x.device, owner="Sinusoidal")  # (1, S): 0 .. S-1
        if pos is None:  # default positions inside the table
            pe = self.table[:seq].to(x.dtype)  # (S, dim)
        elif x.dtype == torch.float64:  # finer than the float32 table: compute, for default positions too
            pe = sinusoidal_table(pos, self.dim, self.base, dtype=x.dtype)  # (1|B, S, dim)
        else:
            (pe,) = rows_at(pos, self.cache_len, (self.table,), self._exact)  # (1|B, S, dim) float32
            pe = pe.to(x.dtype)
        if x.dim() == 2:  # x (S, dim): positions have one row
            pe = pe.reshape(seq, self.dim)
        return self.dropout(x + pe)

    def _exact(self, positions: Tensor) -> tuple[Tensor]:
        return (sinusoidal_table(positions, self.dim, self.base),)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return self.embed(x, positions)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"
