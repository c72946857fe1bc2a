"""Relative position representations (Shaw, Uszkoreit, Vaswani 2018)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import PositionEncoding, ScoreMod
from ..bias.base import position_reader
from ..functional.precision import without_autocast
from ..functional.relative import relative_from_positions, shaw_key_bias, shaw_value_term
from ..registry import Sizes
from ..session import SESSION_TABLE_BYTES, SessionMemo, session_tables
from ..validation import (
    check_bool,
    check_distances,
    check_int,
    check_module_device,
    check_table_size,
    distance_positions,
    wide_positions,
)


class ShawRelative(PositionEncoding):
    """Learned ``a^K`` (added to keys in the logits) and ``a^V`` (added to values) over ``clip(j - i, k)``.

    Args:
        head_dim: ``D``.
        max_distance: clipping distance ``k``; tables have ``2k + 1`` rows.
        heads: one table per head when given; shared across heads (the paper's choice) when None.
        values: keep the value term ``a^V`` (the paper); False keeps only the key term (the seed's variant).

    Never builds an ``(n, n, D)`` tensor: the key term is ``q @ a^K`` as ``(B, H, Q, 2k+1)`` then gathered,
    the value term sums attention weights per clipped distance, ``(B, H, Q, 2k+1) @ a^V``.
    """

    name: ClassVar[str | None] = "shaw"
    family: ClassVar[str] = "relative"
    sizes: ClassVar[tuple[str, ...]] = ("head_dim",)
    takes_runs: ClassVar[bool] = True
    needs_probs: bool = True  # (per instance: False with values=False)

    def __init__(
        self, head_dim: int, max_distance: int = 16, heads: int | None = None, values: bool = True
    ) -> None:
        super().__init__()
        head_dim = check_int("head_dim", head_dim, at_least=1, owner="ShawRelative")
        max_distance = check_int("max_distance", max_distance, at_least=0, owner="ShawRelative")
        if heads is not None:
            heads = check_int("heads", heads, at_least=1, owner="ShawRelative")
        values = check_bool("values", values, owner="ShawRelative")
        tables, kinds = 1 if heads is None else heads, 2 if values else 1
        item = torch.get_default_dtype().itemsize
        check_table_size(
            "ShawRelative",
            "max_distance",
            max_distance,
            lambda k: kinds * tables * (2 * k + 1) * head_dim * item,
            f"{'key and value tables' if values else 'a key table'} of (2 * max_distance + 1, head_dim)"
            + ("" if heads is None else f" per head ({heads} heads)"),
        )
        self.head_dim, self.max_distance, self.heads = head_dim, max_distance, heads
        width = 2 * max_distance + 1
        self.key_table = nn.Parameter(torch.randn(tables, width, head_dim) * head_dim**-0.5)
        self.value_table = (
            nn.Parameter(torch.randn(tables, width, head_dim) * head_dim**-0.5) if values else None
        )
        self.needs_probs = values
        self._session_memo = SessionMemo()  # [arange, (a^K, a^V) by distance] of the open decode session

    @classmethod
    def from_sizes(cls, sizes: Sizes, per_head: bool = False, **options: Any) -> ShawRelative:
        """``build("shaw", ..., per_head=True)`` gives one table per head (``heads`` from the model sizes)."""
        if not isinstance(per_head, bool):
            raise TypeError(f"shaw: per_head must be a bool, got {per_head!r}")
        if per_head:
            options["heads"] = sizes.require("heads")
        return cls(sizes.require("head_dim"), **options)

    def index(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """``(1|B, Q, K)`` row of each (query, key) pair: ``clip(k_pos - q_pos, k) + k``."""
        q_pos, k_pos = distance_positions("ShawRelative", q_pos, k_pos)  # (int64, differences that fit)
        if q_pos.shape[-1] == 1:  # one query (a decode step): the same values in fewer calls
            return self._one_query_index(q_pos, k_pos).unsqueeze(-2)
        rel = relative_from_positions(q_pos, k_pos, self.max_distance)  # (1|B, Q, K), a new tensor
        return rel.add_(self.max_distance)  # in place: integer positions, nothing for autograd to record

    def _one_query_index(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """:meth:`index` for ``q_pos: (1|B, 1)`` without the query dimension: ``(1|B, K)``."""
        m = self.max_distance
        return (k_pos - q_pos).clamp_(-m, m).add_(m)  # integer positions: no autograd, in place is free

    def bias(self, q_len: int, k_len: int, offset: int = 0) -> Tensor:
        """Not available: Shaw's key term ``q_i . a^K_ij`` depends on the query content, not on positions alone
        (:meth:`score_bias` takes the queries)."""
        raise ValueError(
            "ShawRelative: bias() is not available: its key term q_i . a^K_ij depends on the queries, not on "
            "positions alone; call score_bias(q, q_pos, k_pos) with the queries (B, H, Q, head_dim)"
        )

    def _check_query(self, q: Tensor) -> None:
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"ShawRelative built for head_dim={self.head_dim}, got queries of {q.shape[-1]}")
        if self.key_table.is_meta:
            check_module_device("ShawRelative", "q", q, True)

    def score_bias(self, q: Tensor, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> Tensor | None:
        """Shaw's key term ``q_i . a^K_ij / sqrt(D)`` (eq. 4): ``q (B, H, Q, D)``, ``q_pos (1|B, Q)``,
        ``k_pos (1|B, K)`` -> ``(B, H, Q, K)`` in float32 or better (as attention's logits)."""
        self._check_query(q)
        return shaw_key_bias(q, self.key_table, self.index(q_pos, k_pos), self.head_dim**-0.5)

    def score_mod(self, q: Tensor, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> ScoreMod | None:
        """The key term for FlexAttention: ``q @ a^K`` as ``(B, H, Q, 2k+1)`` (float32, scaled), captured and
        read at ``clip(k_pos - q_pos, k) + k`` per score; never a ``(B, H, Q, K)`` tensor."""
        self._check_query(q)
        q_pos, k_pos = distance_positions("ShawRelative", q_pos, k_pos)
        # float32, as said: autocast would round the product's operands to bf16/fp16
        with without_autocast(q):
            scores = (q.float() @ self.key_table.float().transpose(-1, -2).unsqueeze(0)) * self.head_dim**-0.5
        q_at, k_at, m = position_reader(q_pos, runs), position_reader(k_pos, runs), self.max_distance

        def mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            rel = (k_at(b, kv_idx) - q_at(b, q_idx)).clamp(-m, m) + m
            return score + scores[b, h, q_idx, rel]

        return mod

    def value_term(self, probs: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Shaw's value term ``sum_j alpha_ij a^V_ij`` (eq. 3): ``probs (B, H, Q, K)`` -> ``(B, H, Q, D)``, or None
        when built with ``values=False``."""
        if self.value_table is None:
            return None
        if self.value_table.is_meta:
            check_module_device("ShawRelative", "probs", probs, True)
        return shaw_value_term(probs, self.value_table, self.index(q_pos, k_pos))

    def kv_rows(self, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """For one query: ``a^K`` and ``a^V`` at ``clip(j - i, k) + k`` of every key ``j``, ``(1|B, T, K, D)`` each
        (``T``: 1 or heads). ``q . (k_j + a^K_j) / sqrt(D)`` is Shaw's logit ``e_ij`` (eq. 4) and ``sum_j p_j
        (v_j + a^V_j)`` his output (eq. 3), so one query needs no bias and no weights."""
        if q_pos.shape[-1] != 1:
            return None, None
        if self.key_table.is_meta:
            check_module_device("ShawRelative", "q_pos", q_pos, True)
        q_pos, k_pos = wide_positions(q_pos, k_pos)
        rows = self._rows_in_session(q_pos, k_pos)
        if rows is not None:
            return rows
        check_distances("ShawRelative", q_pos, k_pos)
        idx = self._one_query_index(q_pos, k_pos)  # (1|B, K)
        values = None if self.value_table is None else _rows_at(self.value_table, idx)
        return _rows_at(self.key_table, idx), values

    def _rows_in_session(self, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor | None] | None:
        """:meth:`kv_rows` as views, no gather, for the common decode step on a CPU inside a
        :class:`posenc.DecodeSession` (grad off, not tracing): keys at ``0 .. K-1`` and one query ``p``, shared by
        the batch (``generate``'s :class:`posenc.StaticKVCache` keeps its unwritten slots at their own index, so
        its keys are ``0 .. K-1`` at every step). The first such step lays both tables out by distance,
        ``(T, 2 slots - 1, D)`` rows for ``k - q = -(slots-1) .. slots-1``; the keys' rows are then the slice
        starting at distance ``-p``. The same rows as the gather, bitwise; None where that does not apply (then
        the gather runs, and no table is laid out)."""
        session = session_tables()
        if session is None or q_pos.shape[0] != 1 or k_pos.shape[0] != 1:
            return None
        if not (q_pos.is_cpu and k_pos.is_cpu and self.key_table.is_cpu):
            return None
        slots, keys = session.slots, k_pos.shape[-1]
        memo = self._session_memo.get(session)
        if memo is None:  # [arange (None past SESSION_TABLE_BYTES: the gather), (a^K, a^V) by distance]
            fits = self._session_bytes(slots) <= SESSION_TABLE_BYTES
            memo = [torch.arange(slots, device=self.key_table.device) if fits else None, None]
            self._session_memo.put(session, memo)
        arange, tables = memo
        if arange is None or q_pos.dtype is not arange.dtype or k_pos.dtype is not arange.dtype:
            return None  # (int64 positions, as caches keep them; float ones go the general way)
        p = int(q_pos.item())  # (a CPU tensor: no device sync)
        if not (0 <= p < slots and keys <= slots and torch.equal(k_pos[0], arange[:keys])):
            return None
        if tables is None:
            tables = memo[1] = self._by_distance(slots)
        key_rows, value_rows = tables
        start = slots - 1 - p  # row of distance -p, the first key's
        rows = key_rows[None, :, start : start + keys]  # (1, T, K, D)
        return rows, None if value_rows is None else value_rows[None, :, start : start + keys]

    def _session_bytes(self, slots: int) -> int:
        """Bytes of :meth:`_by_distance`'s tables for a session of ``slots``."""
        tables = 1 if self.value_table is None else 2
        return tables * (2 * slots - 1) * self.key_table[:, 0].numel() * self.key_table.element_size()

    def _by_distance(self, slots: int) -> tuple[Tensor, Tensor | None]:
        """Both tables at every distance ``-(slots-1) .. slots-1``: ``(T, 2 slots - 1, D)`` each (the caller keeps
        to :data:`SESSION_TABLE_BYTES`)."""
        m, device = self.max_distance, self.key_table.device
        idx = (torch.arange(2 * slots - 1, device=device) - (slots - 1)).clamp_(-m, m).add_(m)
        values = None if self.value_table is None else self.value_table[:, idx]
        return self.key_table[:, idx], values

    def pair_bytes(self, heads: int, item: int, grad: bool) -> int:
        """The key term gathered to ``(H,)`` per pair and the int64 row index of every pair, built once for the key
        term and once for the value term (both kept for backward: the gather's and the scatter's index)."""
        index = 16 if self.value_table is not None else 8
        return index if grad else item * heads + index

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_distance={self.max_distance}, heads={self.heads}, values={self.needs_probs}"


def _rows_at(table: Tensor, idx: Tensor) -> Tensor:
    """Rows of a ``(T, W, D)`` table at ``idx: (1|B, K)``: ``(1|B, T, K, D)``."""
    if table.shape[0] == 1:  # one table for every head: a row lookup
        return F.embedding(idx, table[0]).unsqueeze(1)  # (1|B, 1, K, D)
    return table[:, idx].transpose(0, 1)  # (T, 1|B, K, D) -> (1|B, T, K, D)
