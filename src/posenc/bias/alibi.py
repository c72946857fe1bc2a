"""ALiBi: attention with linear biases (Press, Smith, Lewis 2022, "Train Short, Test Long")."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..functional.bias import alibi_bias, alibi_slopes
from ..registry import Sizes, register
from .base import BiasEncoding


class ALiBi(BiasEncoding):
    """Fixed per-head linear penalty ``-m_h * |i - j|``; no parameters, no scaling by ``sqrt(D)``.

    Slopes ``m_h`` are the paper's geometric sequence (:func:`posenc.functional.alibi_slopes`, with the
    paper's rule for head counts that are not powers of two). Keys after the query (bidirectional attention)
    get the same penalty by distance.

    Args:
        heads: number of heads ``H``.

    Shapes: ``bias(q_len, k_len) -> (H, q_len, k_len)``.
    """

    slopes: Tensor

    def __init__(self, heads: int) -> None:
        super().__init__(heads)
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ALiBi:  # type: ignore[override]
        super()._apply(fn, recurse)
        self.slopes = alibi_slopes(self.heads).to(self.slopes.device)  # recomputed, never cast: float32
        return self

    def tables(self) -> tuple[Tensor, ...]:
        return (self.slopes,)

    def formula(self, tables: tuple[Tensor, ...], head: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return alibi_bias(tables[0][head], q_pos, k_pos)


@register("alibi")
def _build(sizes: Sizes) -> ALiBi:
    return ALiBi(sizes.require("heads"))
