"""ALiBi: attention with linear biases (Press, Smith, Lewis 2022, "Train Short, Test Long")."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..functional.bias import SLOPE_BYTES, alibi_bias, alibi_slopes, check_max_bias
from ..validation import check_table_size
from .base import BiasEncoding


class ALiBi(BiasEncoding):
    """Fixed per-head linear penalty ``-m_h * |i - j|``; no parameters, no scaling by ``sqrt(D)``.

    Slopes ``m_h`` are the paper's geometric sequence (:func:`posenc.functional.alibi_slopes`, with the
    paper's rule for head counts that are not powers of two). Keys after the query (bidirectional attention)
    get the same penalty by distance.

    Args:
        heads: number of heads ``H``.
        max_bias: the exponent behind the slopes, 8 in the paper (MPT's ``alibi_bias_max``): with ``H`` a
            power of two they are ``2^(-max_bias * h / H)`` for ``h = 1 .. H``. Smaller is steeper: at 4 heads the
            paper's slopes start at 1/4, ``max_bias=4``'s at 1/2 (see the README's compare section for what that
            does to a small byte-level model).

    Shapes: ``bias(q_len, k_len) -> (H, q_len, k_len)``.
    """

    name: ClassVar[str | None] = "alibi"

    slopes: Tensor

    def __init__(self, heads: int, max_bias: float = 8.0) -> None:
        super().__init__(heads)
        self.max_bias = check_max_bias(max_bias, "ALiBi")
        check_table_size(
            "ALiBi", "heads", self.heads, lambda h: h * SLOPE_BYTES, "the (heads,) slopes", at_least=1
        )
        self.register_derived()

    def derived_buffers(self, device: torch.device) -> dict[str, Tensor]:
        """``slopes (H,)`` float32, recomputed (never cast) when the module moves."""
        return {"slopes": alibi_slopes(self.heads, self.max_bias).to(device)}

    def tables(self) -> tuple[Tensor, ...]:
        return (self.slopes,)

    def formula(self, tables: tuple[Tensor, ...], head: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return alibi_bias(tables[0][head], q_pos, k_pos)

    def pair_bytes(self, heads: int, item: int, grad: bool) -> int:
        """``|i - j|`` as int64 (16 bytes per pair while ``abs`` runs), then the ``(H,)`` bias; nothing for backward
        (no parameters)."""
        return 0 if grad else item * heads + 16

    def session_vector(self, slots: int, device: torch.device) -> tuple[Tensor, float | None] | None:
        """ALiBi depends on the distance only (its training paths stay per pair: no parameters, no atomics)."""
        return self.every_distance(slots, device)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.max_bias == 8.0 else f", max_bias={self.max_bias:g}")
