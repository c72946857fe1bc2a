"""Sinusoidal absolute encoding (Vaswani et al. 2017, section 3.5)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from ..base import PositionEncoding, as_positions
from ..functional.absolute import sinusoidal_table
from ..registry import Sizes, register


class Sinusoidal(PositionEncoding):
    """``dropout(x + PE[positions])`` with the fixed sin/cos table, computed for whatever positions are asked.

    Args:
        dim: model width (odd widths allowed: the last even index gets its sine).
        base: wavelength base, 10000 in the paper.
        dropout: dropout on the sum, as in the paper.

    Shapes: ``x: (B, S, dim)``, ``positions: (S,)`` or ``(B, S)``; returns ``(B, S, dim)`` in ``x.dtype``.
    """

    family: ClassVar[str] = "absolute"

    def __init__(self, dim: int, base: float = 10000.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim, self.base = dim, base
        self.dropout = nn.Dropout(dropout)

    def embed(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got {x.shape[-1]}")
        pos = as_positions(positions, x.shape[-2], x.device)  # (1|B, S)
        pe = sinusoidal_table(pos, self.dim, self.base, dtype=x.dtype)  # (1|B, S, dim)
        return self.dropout(x + pe)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return self.embed(x, positions)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"


@register("sinusoidal")
def _build(sizes: Sizes, **options: float) -> Sinusoidal:
    return Sinusoidal(sizes.require("dim"), **options)
