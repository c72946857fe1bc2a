"""FIRE: functional interpolation for relative positions (Li et al. 2023)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import OptionsInState, ScoreMod
from ..functional.bias import fire_input, fire_mlp_unrolled
from ..functional.precision import at_least_float32, without_autocast
from ..validation import (
    F32_MAX,
    F32_TINY,
    check_distances,
    check_float,
    check_int,
    check_table_sizes,
    distance_positions,
    wide_positions,
)
from .base import BiasEncoding, position_reader

#: The largest ``init_c`` FIRE takes: ``c * |i - j|`` (float32) stays finite for distances up to 3e8; beyond it,
#: numerator and denominator overflow together and the bias is inf / inf = NaN.
FIRE_MAX_C = 1e30


class FIRE(OptionsInState, BiasEncoding):
    """Learned MLP of the normalized distance: ``b_h(i, j) = f_h(psi(i - j) / psi(max(i, L)))``.

    ``psi(x) = log(c x + 1)`` with learnable ``c``; the threshold ``L = |init_threshold * s|`` with learnable
    ``s`` (the paper's parametrization); ``f`` is ``Linear(1, width) -> ReLU -> Linear(width, H)``. The
    materialized path runs ``f`` as two ``nn.Linear`` layers; ``score_mod`` runs the same weights one hidden unit
    at a time (:func:`posenc.functional.bias.fire_mlp_unrolled`), elementwise.

    Args:
        heads: ``H``.
        width: hidden units of the MLP (32 in the paper).
        init_c: initial ``c`` (0.1), at most :data:`FIRE_MAX_C`.
        init_threshold: initial ``L`` (512), finite in float32.
        eps: added to the denominator; at least float32's smallest normal number (1.2e-38: a smaller one
            rounds to 0 there, and the bias at ``i = L = 0`` is 0 / 0).
    """

    name: ClassVar[str | None] = "fire"
    state_options: ClassVar[tuple[str, ...]] = ("init_threshold", "eps")  # the threshold is a scale of it

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
        # c, L and eps meet float32 tensors: c * distance must stay finite (c up to 1e30 leaves room for
        # distances up to 1e8), and eps must not round to 0 there (the denominator at i = L = 0 is eps alone)
        init_c = check_float("init_c", init_c, above=0, at_most=FIRE_MAX_C, owner="FIRE")
        init_threshold = check_float(
            "init_threshold", init_threshold, at_least=0, at_most=F32_MAX, owner="FIRE"
        )
        eps = check_float("eps", eps, at_least=F32_TINY, at_most=F32_MAX, owner="FIRE")
        item = torch.get_default_dtype().itemsize
        check_table_sizes(  # the MLP Linear(1, width), Linear(width, heads)
            "FIRE",
            {"width": (width, 1), "heads": (self.heads, 1)},
            lambda n: (2 * n["width"] + n["width"] * n["heads"] + n["heads"]) * item,
            "the MLP's (width,) and (heads, width) weights",
        )
        self.width, self.init_threshold, self.eps = width, float(init_threshold), eps
        self.hidden = nn.Linear(1, width)
        self.out = nn.Linear(width, heads)
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.threshold_scale = nn.Parameter(torch.tensor(1.0))

    def tables(self) -> tuple[Tensor, ...]:
        return (
            self.c,
            self.threshold(),
            self.hidden.weight[:, 0],
            self.hidden.bias,
            self.out.weight,
            self.out.bias,
        )

    def threshold(self) -> Tensor:
        """FIRE's threshold ``L = threshold_scale * init_threshold``, float32 or better whatever the weights' dtype
        (bf16 weights gave L = 300 for init_threshold 301)."""
        return at_least_float32(self.threshold_scale) * self.init_threshold

    def formula(self, tables: tuple[Tensor, ...], head: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        c, threshold, w1, b1, w2, b2 = tables
        return fire_mlp_unrolled(fire_input(c, threshold, q_pos, k_pos, self.eps), head, w1, b1, w2, b2)

    def pairwise(self, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> Tensor:
        """``(1|B, H, Q, K)``: the normalized distance through the MLP as batched ``nn.Linear`` layers (any
        positions: ``runs`` changes nothing)."""
        q_pos, k_pos = wide_positions(q_pos, k_pos)  # (int64: narrower integers' differences would wrap)
        if q_pos.shape[-1] == 1:  # one query (a decode step): from the session's vector where it holds
            fast = self.pairwise_in_session(q_pos, k_pos)
            if fast is not None:
                return fast
        check_distances("FIRE", q_pos, k_pos)
        return self._mlp_bias(q_pos, k_pos, q_pos.shape[-1] == 1)

    def _mlp_bias(self, q_pos: Tensor, k_pos: Tensor, one_query: bool) -> Tensor:
        threshold = self.threshold()  # as in tables(), without the MLP's views
        if one_query:  # (1|B, 1) broadcasts against (1|B, K) as it is
            x = fire_input(self.c, threshold, q_pos, k_pos, self.eps)[:, None, :, None]  # (1|B, 1, K, 1)
        else:
            x = fire_input(self.c, threshold, q_pos[:, :, None], k_pos[:, None, :], self.eps).unsqueeze(-1)
        # float32 or better whatever the weights' dtype (half-precision weights: half the MLP's rounding error
        # was 1e-2 in bf16, and the flex path's formula computes in float32)
        w1 = at_least_float32(self.hidden.weight[:, 0])  # (width,): Linear(1, width) is an outer product
        b1, w2, b2 = (at_least_float32(t) for t in (self.hidden.bias, self.out.weight, self.out.bias))
        x = x if x.dtype == w1.dtype else x.to(w1.dtype)  # (1|B, Q, K, 1)
        with without_autocast(x):  # (autocast would run the product in bf16/fp16)
            hidden = torch.addcmul(b1, x, w1).relu_()  # (1|B, Q, K, width)
            out = F.linear(hidden, w2, b2)  # (1|B, Q, K, H)
        out = out.permute(0, 3, 1, 2)  # (1|B, H, Q, K)
        return at_least_float32(out)

    def session_bytes_per_distance(self) -> int:
        """The table's row of ``H`` and the MLP's hidden row of ``width``, float32 (the build's largest tensor)."""
        return 4 * (self.heads + self.width)

    def pair_bytes(self, heads: int, item: int, grad: bool) -> int:
        """:meth:`_mlp_bias`'s ``(.., width)`` hidden layer (float32 or better: 128 bytes per pair at the paper's
        width 32), beside the normalized distance and the ``(H,)`` output; kept for backward: the hidden layer (the
        ReLU's output and the second layer's input, one tensor), the distance's int64 ``|i - j|`` and two float
        steps of it."""
        item = max(item, 4)
        if grad:
            return item * (self.width + 2) + 8
        return item * (self.width + heads + 2)

    def session_vector(self, slots: int, device: torch.device) -> tuple[Tensor, float | None] | None:
        """For queries at positions up to the threshold ``|L|`` the denominator ``psi(max(i, L))`` is ``psi(L)``,
        so the bias is a function of the distance: the one-query path at query 0 and keys ``-(slots-1) ..
        slots-1`` gives it. CPU only (the limit is checked on the host)."""
        if device.type != "cpu":
            return None
        dist = torch.arange(-(slots - 1), slots, device=device).unsqueeze(0)  # (1, 2 slots - 1)
        vec = self._mlp_bias(
            torch.zeros(1, 1, dtype=torch.long, device=device), dist, True
        )  # (1, H, 1, 2s-1)
        threshold = self.threshold().abs()  # as fire_input compares it
        return vec[0, :, 0], float(threshold)

    def score_mod(self, q: Tensor, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> ScoreMod | None:
        """The per-score formula; while learning, :meth:`score_mod_unbound` (FlexAttention's backward refuses a
        ``score_mod`` that indexes one tensor needing gradients more than once, or reads a 0-d one unindexed)."""
        if self._learning():
            self._check_heads(q)
            q_pos, k_pos = distance_positions("FIRE", q_pos, k_pos)
            return self.score_mod_unbound(q_pos, k_pos, runs)
        return super().score_mod(q, q_pos, k_pos, runs)

    def score_mod_unbound(self, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> ScoreMod:
        """The formula with every learned number a ``(H,)`` tensor of its own, each indexed once per score, by head.

        FlexAttention's backward takes the gradient of a captured tensor only when the ``score_mod`` reads it
        through one indexing operation: the unrolled MLP reads ``w1[u]``, ``b1[u]``, ``w2[h, u]`` for every
        hidden unit ``u`` (many indexings of one parameter: refused on the GPU), and a 0-d tensor read without
        indexing (``c``, the threshold) fails to trace. Here each weight column and each scalar is copied to
        heads (``c`` twice: numerator and denominator) and read as ``t[h]``; gradients flow back through the
        copies to the parameters. Values equal :meth:`formula`. Every such tensor receives one atomic add per
        score into ``H`` addresses, so this is correct rather than fast (FIRE's bias depends on the query
        position too, so no per-distance vector can stand in for it).
        """
        c, threshold, w1, b1, w2, b2 = self.tables()
        heads = self.heads

        def per_head(t: Tensor) -> Tensor:
            return t.reshape(()).expand(heads).clone()  # (H,), contiguous

        c_num, c_den, thr = per_head(c), per_head(c), per_head(threshold)
        w1s, b1s = [per_head(t) for t in w1.unbind(0)], [per_head(t) for t in b1.unbind(0)]  # (H,) each
        w2s, b2c = [t.clone() for t in w2.unbind(1)], b2.clone()  # (H,) each
        q_at, k_at, eps = position_reader(q_pos, runs), position_reader(k_pos, runs), self.eps

        def mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            x = fire_input(c_num[h], thr[h], q_at(b, q_idx), k_at(b, kv_idx), eps, c_norm=c_den[h])
            out = at_least_float32(b2c[h])
            for w1u, b1u, w2u in zip(w1s, b1s, w2s, strict=True):
                out = out + w2u[h] * torch.relu(w1u[h] * x + b1u[h])
            return score + out

        return mod

    def extra_repr(self) -> str:
        return f"heads={self.heads}, width={self.width}, init_threshold={self.init_threshold}"
