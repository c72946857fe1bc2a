"""Kerple: kernelized relative positional embedding (Chi, Fan, Ramadge, Rudnicky 2022)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..base import OptionsInState
from ..functional.bias import kerple_bias
from ..validation import F32_MAX, check_float, check_table_size
from .base import BiasEncoding

KINDS = ("log", "power")


class Kerple(OptionsInState, BiasEncoding):
    """Learned per-head kernel of ``|i - j|``: ``-r1 log(1 + r2 |i - j|)`` ("log") or ``-r1 |i - j|^r2`` ("power").

    ``r1`` and ``r2`` are parameters used through ``clamp(min=eps)`` (``r2 <= 2`` for "power"), as in the
    paper's code, which keeps them positive; they start uniform in ``(0, 2)`` and ``(0, 1)``.

    Args:
        heads: ``H``.
        kind: "log" (the paper's best) or "power".
        eps: lower bound of ``r1, r2`` (float32 parameters: at most float32's largest value).
    """

    name: ClassVar[str | None] = "kerple"
    state_options: ClassVar[tuple[str, ...]] = ("kind", "eps")  # what r1, r2 mean
    by_distance: ClassVar[bool] = True

    def __init__(self, heads: int, kind: str = "log", eps: float = 1e-2) -> None:
        super().__init__(heads)
        if kind not in KINDS:
            raise ValueError(f"Kerple kind must be one of {', '.join(KINDS)}, got {kind!r}")
        eps = check_float("eps", eps, above=0, at_most=F32_MAX, owner="Kerple")  # r1, r2 are float32
        check_table_size(
            "Kerple",
            "heads",
            self.heads,
            lambda h: 2 * h * torch.get_default_dtype().itemsize,
            "r1 and r2 (heads,)",
            at_least=1,
        )
        self.kind, self.eps = kind, eps
        self.r1 = nn.Parameter(torch.rand(heads) * 2 + eps)
        self.r2 = nn.Parameter(torch.rand(heads) + eps)

    def tables(self) -> tuple[Tensor, ...]:
        r2 = self.r2.clamp(min=self.eps, max=2.0) if self.kind == "power" else self.r2.clamp(min=self.eps)
        return self.r1.clamp(min=self.eps), r2

    def formula(self, tables: tuple[Tensor, ...], head: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        r1, r2 = tables
        return kerple_bias(r1[head], r2[head], q_pos, k_pos, self.kind)

    def pair_bytes(self, heads: int, item: int, grad: bool) -> int:
        """``|i - j|`` (int64, then float), ``r2 |i - j|`` and its ``log1p`` (``(H,)`` each) and the bias; kept for
        backward: the float distance, ``r2 |i - j|`` and the ``log1p`` ("power": its base and result)."""
        return 2 * item * heads + item if grad else 2 * item * heads + 16

    def extra_repr(self) -> str:
        return f"heads={self.heads}, kind={self.kind!r}"
