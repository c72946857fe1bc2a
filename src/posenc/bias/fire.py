"""FIRE: functional interpolation for relative positions (Li et al. 2023)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..functional.bias import fire_input, fire_mlp_unrolled
from ..validation import check_float, check_int
from .base import BiasEncoding


class FIRE(BiasEncoding):
    """Learned MLP of the normalized distance: ``b_h(i, j) = f_h(psi(i - j) / psi(max(i, L)))``.

    ``psi(x) = log(c x + 1)`` with learnable ``c``; the threshold ``L = |init_threshold * s|`` with learnable
    ``s`` (the paper's parametrization); ``f`` is ``Linear(1, width) -> ReLU -> Linear(width, H)``. The
    materialized path runs ``f`` as two ``nn.Linear`` layers; ``score_mod`` runs the same weights one hidden unit
    at a time (:func:`posenc.functional.bias.fire_mlp_unrolled`), elementwise.

    Args:
        heads: ``H``.
        width: hidden units of the MLP (32 in the paper).
        init_c: initial ``c`` (0.1).
        init_threshold: initial ``L`` (512).
        eps: added to the denominator.
    """

    name: ClassVar[str | None] = "fire"

    def __init__(
        self,
        heads: int,
        width: int = 32,
        init_c: float = 0.1,
        init_threshold: float = 512.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(heads)
        width = check_int("width", width, at_least=1, owner="FIRE")
        init_c = check_float("init_c", init_c, above=0, owner="FIRE")
        init_threshold = check_float("init_threshold", init_threshold, at_least=0, owner="FIRE")
        eps = check_float("eps", eps, above=0, owner="FIRE")
        self.width, self.init_threshold, self.eps = width, float(init_threshold), eps
        self.hidden = nn.Linear(1, width)
        self.out = nn.Linear(width, heads)
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.threshold_scale = nn.Parameter(torch.tensor(1.0))

    def tables(self) -> tuple[Tensor, ...]:
        return (
            self.c,
            self.threshold_scale * self.init_threshold,
            self.hidden.weight[:, 0],
            self.hidden.bias,
            self.out.weight,
            self.out.bias,
        )

    def formula(self, tables: tuple[Tensor, ...], head: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        c, threshold, w1, b1, w2, b2 = tables
        return fire_mlp_unrolled(fire_input(c, threshold, q_pos, k_pos, self.eps), head, w1, b1, w2, b2)

    def pairwise(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """``(1|B, H, Q, K)``: the normalized distance through the MLP as batched ``nn.Linear`` layers."""
        threshold = self.threshold_scale * self.init_threshold  # as in tables(), without the MLP's views
        x = fire_input(self.c, threshold, q_pos[:, :, None], k_pos[:, None, :], self.eps)  # (1|B, Q, K)
        hidden = torch.relu(self.hidden(x.unsqueeze(-1).to(self.hidden.weight.dtype)))  # (1|B, Q, K, width)
        return self.out(hidden).permute(0, 3, 1, 2).float()  # (1|B, H, Q, K)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, width={self.width}, init_threshold={self.init_threshold}"
