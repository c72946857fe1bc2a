"""T5 relative position bias (Raffel et al. 2020, section 2.1): a learned scalar per head and distance bucket."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..base import OptionsInState
from ..functional.bias import check_t5, lookup_bias, t5_distance_buckets
from ..validation import check_table_sizes
from .base import BiasEncoding


class T5Bias(OptionsInState, BiasEncoding):
    """Learned ``(num_buckets, H)`` table indexed by T5's log-spaced bucket of ``key - query``.

    Buckets equal transformers' ``T5Attention._relative_position_bucket`` (see
    :func:`posenc.functional.t5_buckets`). Since they saturate at ``max_distance``, each call first gathers the
    table into ``(H, 2 * max_distance + 1)`` over clipped distances; both backends then read that small
    tensor (FlexAttention's ``score_mod`` by index, so gradients reach the table through it).

    Args:
        heads: ``H``.
        num_buckets: buckets (shared by both directions when bidirectional).
        max_distance: distances at or beyond it share the last bucket.
        bidirectional: separate buckets for keys after the query (encoders); False for causal decoders.
    """

    name: ClassVar[str | None] = "t5"
    state_options: ClassVar[tuple[str, ...]] = ("max_distance", "bidirectional")  # not in the table's shape
    by_distance: ClassVar[bool] = True

    bucket_of: Tensor

    def causal_only_reason(self) -> str | None:
        if self.bidirectional:
            return None
        return (
            "with bidirectional=False (a decoder's buckets) every key after the query shares the bucket of "
            "distance 0; build it with bidirectional=True for keys on both sides"
        )

    def __init__(
        self, heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = False
    ) -> None:
        super().__init__(heads)
        num_buckets, max_distance, bidirectional = check_t5(num_buckets, max_distance, bidirectional)
        item = torch.get_default_dtype().itemsize
        smallest = (num_buckets // 2 if bidirectional else num_buckets) // 2 + 1  # what check_t5 accepts
        check_table_sizes(  # the (2M+1,) int64 buckets, the (H, 2M+1) table each call gathers, the embedding
            "T5Bias",
            {
                "max_distance": (max_distance, smallest),
                "heads": (self.heads, 1),
                "num_buckets": (num_buckets, 2),
            },
            lambda n: (
                (2 * n["max_distance"] + 1) * (8 + n["heads"] * item) + n["num_buckets"] * n["heads"] * item
            ),
            "a bucket per clipped distance, a (heads, 2 * max_distance + 1) table and a (num_buckets, heads) one",
        )
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(num_buckets, heads)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.register_derived()

    def derived_buffers(self, device: torch.device) -> dict[str, Tensor]:
        """``bucket_of (2 * max_distance + 1,)``: the bucket of each clipped distance, rebuilt when moved."""
        buckets = t5_distance_buckets(
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
            device=device,
        )
        return {"bucket_of": buckets}

    def tables(self) -> tuple[Tensor, ...]:
        return (self.embedding.weight[self.bucket_of].t(),)  # (H, 2M + 1)

    def formula(self, tables: tuple[Tensor, ...], head: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return lookup_bias(tables[0], head, q_pos, k_pos)

    def pair_bytes(self, heads: int, item: int, grad: bool) -> int:
        """The clipped distance, int64 (two at once while it is clipped), then the ``(H,)`` table lookup; the int64
        index is kept for the table's gradient (counted 12: the backward's accumulation into the table sorts it)."""
        return 12 if grad else item * heads + 16

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
            f"bidirectional={self.bidirectional}"
        )
