"""ALiBi: attention with linear biases (Press, Smith, Lewis 2022, "Train Short, Test Long")."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..functional.bias import alibi_bias, alibi_slopes
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

    name: ClassVar[str | None] = "alibi"

    slopes: Tensor

    def __init__(self, heads: int) -> None:
        super().__init__(heads)
        self.register_derived()

    def derived_buffers(self, device: torch.device) -> dict[str, Tensor]:
        """``slopes (H,)`` float32, recomputed (never cast) when the module moves."""
        return {"slopes": alibi_slopes(self.heads).to(device)}

    def tables(self) -> tuple[Tensor, ...]:
        return (self.slopes,)

    def formula(self, tables: tuple[Tensor, ...], head: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return alibi_bias(tables[0][head], q_pos, k_pos)

    def session_vector(self, slots: int, device: torch.device) -> tuple[Tensor, float | None] | None:
        """ALiBi depends on the distance only (its training paths stay per pair: no parameters, no atomics)."""
        return self.every_distance(slots, device)
