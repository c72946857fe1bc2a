"""The shared shape of every attention-bias encoding: one elementwise formula, two ways to apply it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import PositionEncoding, ScoreMod, bias_positions
from ..functional.tables import host_span
from ..session import SESSION_TABLE_BYTES, DecodeSession, SessionMemo, session_tables
from ..validation import check_distances, check_int, check_module_device, distance_positions, wide_positions

ScoreModIndex = Callable[[Tensor, Tensor], Tensor]


class BiasEncoding(PositionEncoding, ABC):
    """An additive logit bias ``b_h(i, j)`` that depends on positions only (not on content).

    Subclasses give :meth:`tables` (the few small tensors the bias reads, rebuilt each call so gradients flow
    into learned parameters) and :meth:`formula` (elementwise over broadcastable head / position tensors).
    From them this class derives:

    * :meth:`score_bias`: the materialized ``(1|B, H, Q, K)`` bias, for the ``math`` and ``sdpa`` backends;
    * :meth:`score_mod`: a FlexAttention ``score_mod`` that evaluates the formula per score, reading the
      positions by index from the ``(1|B, Q)`` / ``(1|B, K)`` position tensors, so no ``(H, Q, K)`` tensor
      (or, for :attr:`by_distance` encodings at consecutive positions, reads the ``(H, Q + K - 1)`` vector);
    * :meth:`bias`: ``(heads, q_len, k_len)`` for queries at ``offset ...`` and keys at ``0 ...``.

    Args:
        heads: number of (query) heads ``H``.
    """

    family: ClassVar[str] = "bias"
    sizes: ClassVar[tuple[str, ...]] = ("heads",)
    #: True when the bias depends on the distance ``k - q`` only. For consecutive positions the formula is then
    #: evaluated once per distance, an ``(H, Q + K - 1)`` vector (:meth:`distance_vector`) that both paths read:
    #: learned parameters get their gradient from that small dense vector, never from ``Q * K`` contributions
    #: funnelled into a few addresses (atomic adds that serialize on a GPU).
    by_distance: ClassVar[bool] = False
    takes_runs: ClassVar[bool] = True

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = check_int("heads", heads, at_least=1, owner=type(self).__name__)
        self._session_memo = SessionMemo()  # (distance vector, query limit) of the open decode session

    @abstractmethod
    def tables(self) -> tuple[Tensor, ...]:
        """The small tensors :meth:`formula` reads (parameters, possibly transformed)."""

    @abstractmethod
    def formula(self, tables: tuple[Tensor, ...], head: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Float32 bias for broadcastable ``head`` indices and query / key positions."""

    def pairwise(self, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> Tensor:
        """``(1|B, H, Q, K)`` float32 bias (float64 for float64 weights) for positions ``(1|B, Q)`` and ``(1|B, K)``
        (``runs``: vouched ``start + arange`` each, see :meth:`_consecutive`)."""
        # CPU inference: per distance measured faster (T5 sdpa n=1024: 47 vs 68 ms). CPU training: unfold's
        # backward costs more than the per-pair gather's and no atomics serialize, so per pair. GPU: per distance
        # only while learning (the atomics it avoids); inference keeps the per-pair path, which needs no host
        # sync to find out whether the positions are consecutive.
        # One query (a decode step): Q + K - 1 distances save nothing over K pairs, and finding out whether the
        # positions are consecutive costs more than the formula, so per pair.
        q_pos, k_pos = wide_positions(q_pos, k_pos)  # (int64: narrower integers' differences would wrap)
        if q_pos.shape[-1] == 1:
            fast = self.pairwise_in_session(q_pos, k_pos)  # (inside [0, slots): no distance overflows)
            if fast is not None:
                return fast
        check_distances(type(self).__name__, q_pos, k_pos)
        if q_pos.shape[-1] == 1:
            return self.pairwise_reference(q_pos, k_pos)
        cpu = q_pos.is_cpu
        if (cpu and not torch.is_grad_enabled()) or (not cpu and self._learning()):
            fast = self.pairwise_by_distance(q_pos, k_pos, runs)
            if fast is not None:
                return fast
        return self.pairwise_reference(q_pos, k_pos)

    def pairwise_in_session(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """``(1|B, H, 1, K)`` for one query, read by index from the open :class:`posenc.DecodeSession`'s
        per-distance vector (:meth:`session_vector`, built on the session's first step); None where that does
        not apply: no session, grad mode on, tracing, or :meth:`session_vector` gives None.

        Five small calls per layer and token instead of the formula's dozen; the values are the formula's at
        each distance (within float32 rounding of the per-pair path). Positions must lie in ``[0, slots)``
        (the session's promise): then every distance ``k - q`` indexes the vector, and on a CPU an index
        outside it raises rather than reading another distance's bias.
        """
        session = session_tables()
        if session is None:
            return None
        memo = self._session_memo.get(session)
        if memo is None:
            memo = self._session_table(session, q_pos.device)
            self._session_memo.put(session, memo)
        vec, limit = memo
        if vec is None or (not (vec.is_cpu and q_pos.is_cpu) and vec.device != q_pos.device):
            return None
        if limit is not None:  # the vector holds only for queries up to `limit`, checked on the host
            span = host_span(q_pos)
            if span is None or span[1] > limit:
                return None
        idx = (k_pos - q_pos).add_(session.slots - 1)  # (1|B, K): distance k - q, as an index into vec
        try:
            rows = F.embedding(idx, vec)  # (1|B, K, H)
        except IndexError:  # (a CPU's check; a GPU's is a device assertion)
            raise IndexError(
                f"{type(self).__name__}: a key-query distance outside the open {session!r}'s table "
                f"(|k - q| < {session.slots}); the session promises every position in [0, {session.slots}): "
                "open it with more slots"
            ) from None
        return rows.permute(0, 2, 1).unsqueeze(2)  # (1|B, K, H) -> (1|B, H, 1, K)

    def _session_table(
        self, session: DecodeSession, device: torch.device
    ) -> tuple[Tensor | None, float | None]:
        """The session's ``(2 slots - 1, H)`` table and its query limit; ``(None, None)`` (the per-pair path, as
        outside a session) where there is none, or where building it would take more than
        :data:`SESSION_TABLE_BYTES` (a very long session, or a loose ``slots``: the table's size follows ``slots``,
        not the keys in use)."""
        if (2 * session.slots - 1) * self.session_bytes_per_distance() > SESSION_TABLE_BYTES:
            return None, None
        found = self.session_vector(session.slots, device)
        if found is None:
            return None, None
        vec, limit = found
        return vec.t().contiguous(), limit  # (2n - 1, H): one row per distance, as F.embedding reads it

    def session_bytes_per_distance(self) -> int:
        """Bytes per distance of the session table that :data:`posenc.session.SESSION_TABLE_BYTES` caps (4 heads: up
        to 1,048,576 slots; FIRE of width 32 and 4 heads: 116,508): its float32 row of ``H``
        (FIRE adds its MLP's hidden row, the build's largest tensor). Checked before anything is built; the build
        holds about twice the table for a moment (the ``(H, 2 slots - 1)`` vector and its transposed copy)."""
        return 4 * self.heads

    def session_vector(self, slots: int, device: torch.device) -> tuple[Tensor, float | None] | None:
        """``(vec, limit)``: the bias at every distance ``k - q`` of ``-(slots-1) .. slots-1`` as ``(H, 2 slots - 1)``
        float32, valid for queries at positions up to ``limit`` (None: any); None when the bias is not a
        function of the distance (the default unless :attr:`by_distance`)."""
        return self.every_distance(slots, device) if self.by_distance else None

    def every_distance(self, slots: int, device: torch.device) -> tuple[Tensor, None]:
        """:meth:`distance_vector` at distances ``-(slots-1) .. slots-1`` (for any query), as :meth:`session_vector`
        gives it."""
        zero = torch.zeros((), dtype=torch.long, device=device)
        return self.distance_vector(self.tables(), slots, slots, zero, zero), None

    def pair_bytes(self, heads: int, item: int, grad: bool) -> int:
        """The per-pair path's (:meth:`pairwise_reference`) memory: a formula of a few elementwise steps, int64
        distances first (see :meth:`posenc.PositionEncoding.pair_bytes`). Subclasses that know their formula
        count it exactly; this default allows two ``(H,)`` float tensors and an int64 distance, each way."""
        return 2 * item * heads + 16 if not grad else 2 * item * heads + 8

    def _learning(self) -> bool:
        """Whether autograd will want gradients of this encoding's parameters."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def pairwise_by_distance(self, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> Tensor | None:
        """``(1, H, Q, K)`` from the :meth:`distance_vector` (a Toeplitz view), or None where it does not apply."""
        starts = self._consecutive(q_pos, k_pos, runs)
        if starts is None:
            return None
        q_len, k_len = q_pos.shape[-1], k_pos.shape[-1]
        vec = self.distance_vector(self.tables(), q_len, k_len, *starts)  # (H, Q + K - 1)
        if torch.compiler.is_compiling() and not self._learning():
            # by index: unfold's window fixes Q and K in the graph (a recompile per length, the 9th a failure
            # under fullgraph); training keeps unfold, whose backward sums along diagonals without atomics
            dev = vec.device
            at = (
                torch.arange(k_len, device=dev) - torch.arange(q_len, device=dev)[:, None] + (q_len - 1)
            )  # (Q, K)
            return vec[:, at].unsqueeze(0)  # (1, H, Q, K)
        return vec.unfold(-1, k_len, 1).flip(-2).unsqueeze(0)  # (1, H, Q, K): [i, j] = vec[j - i + Q - 1]

    def pairwise_reference(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """``(1|B, H, Q, K)``: the formula evaluated at every (query, key) pair (any positions)."""
        return self.formula(
            self.tables(), self._head_index(q_pos), q_pos[:, None, :, None], k_pos[:, None, None, :]
        )

    def _head_index(self, like: Tensor) -> Tensor:
        """``arange(H)`` as ``(H, 1, 1)`` on ``like``'s device; on CPU one tensor kept for every call (a decode step
        would otherwise build it per layer and token). Built outside inference mode, so autograd may save it."""
        # (while tracing: export's fake tensors must not be kept)
        if not like.is_cpu or torch.compiler.is_compiling():
            return torch.arange(self.heads, device=like.device).view(-1, 1, 1)
        cached = self.__dict__.get("_cpu_heads")
        if cached is None:
            with torch.inference_mode(False):
                cached = torch.arange(self.heads).view(-1, 1, 1)  # (H, 1, 1)
            self.__dict__["_cpu_heads"] = cached
        return cached  # type: ignore[no-any-return]

    def distance_vector(
        self, tables: tuple[Tensor, ...], q_len: int, k_len: int, q_start: Tensor, k_start: Tensor
    ) -> Tensor:
        """``(H, Q + K - 1)`` float32: entry ``t`` is the bias at distance ``k - q = k_start - q_start - (Q-1) + t``,
        for queries at ``q_start ...`` and keys at ``k_start ...`` (0-d tensors: no host sync)."""
        dev = q_start.device
        dist = (k_start - q_start) - (q_len - 1) + torch.arange(q_len + k_len - 1, device=dev)  # (Q + K - 1,)
        head = torch.arange(self.heads, device=dev).view(-1, 1)  # (H, 1)
        return self.formula(tables, head, torch.zeros_like(q_start), dist.unsqueeze(0))

    def _consecutive(self, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> tuple[Tensor, Tensor] | None:
        """``(q_start, k_start)`` when :attr:`by_distance` and both are shared runs ``start + arange``, else None.
        ``runs``: the caller vouches for it (no check of the values: no device sync, and it holds while tracing);
        else :func:`arange_start` checks, on a CPU only."""
        if not self.by_distance or q_pos.shape[0] != 1 or k_pos.shape[0] != 1:
            return None
        q_start, k_start = arange_start(q_pos[0], runs), arange_start(k_pos[0], runs)
        return None if q_start is None or k_start is None else (q_start, k_start)

    def score_bias(self, q: Tensor, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> Tensor | None:
        self._check_heads(q)
        return self.pairwise(q_pos, k_pos, runs=True) if runs else self.pairwise(q_pos, k_pos)

    def score_mod(self, q: Tensor, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> ScoreMod | None:
        self._check_heads(q)
        q_pos, k_pos = distance_positions(type(self).__name__, q_pos, k_pos)
        # per distance where gradients of learned tables would otherwise be n^2 atomic adds (GPU training);
        # elsewhere the per-score formula, which measured as fast or faster in the CPU kernel
        if self._learning() and q.device.type != "cpu":
            fast = self.score_mod_by_distance(q_pos, k_pos, runs)
            if fast is not None:
                return fast
        # contiguous: FlexAttention's traced backward silently drops the gradient of a captured tensor that is a
        # strided view (T5's transposed table; reproduced on CPU in tests/attention/test_flex_backward_trace.py)
        tables, formula = tuple(t.contiguous() for t in self.tables()), self.formula
        q_at, k_at = position_reader(q_pos, runs), position_reader(k_pos, runs)

        def mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return score + formula(tables, h, q_at(b, q_idx), k_at(b, kv_idx))

        return mod

    def score_mod_by_distance(self, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> ScoreMod | None:
        """A ``score_mod`` reading the :meth:`distance_vector` at ``kv_idx - q_idx``, or None where it does not apply."""
        starts = self._consecutive(q_pos, k_pos, runs)
        if starts is None:
            return None
        vec = self.distance_vector(self.tables(), q_pos.shape[-1], k_pos.shape[-1], *starts)  # (H, Q + K - 1)
        vec = vec.contiguous()  # a strided view would get no gradient (see score_mod)
        shift = q_pos.shape[-1] - 1

        def by_distance(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return score + vec[h, kv_idx - q_idx + shift]

        return by_distance

    def bias(self, q_len: int, k_len: int, offset: int = 0) -> Tensor:
        """``(heads, q_len, k_len)`` float32 bias (float64 for float64 weights): queries at ``offset ... offset+q_len-1``, keys at ``0 ... k_len-1``."""
        q_pos, k_pos = bias_positions(f"{type(self).__name__}.bias", q_len, k_len, offset, self.device)
        return self.pairwise(q_pos, k_pos)[0]

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def _check_heads(self, q: Tensor) -> None:
        if q.shape[1] != self.heads:
            raise ValueError(f"{type(self).__name__} was built for {self.heads} heads but q has {q.shape[1]}")
        if not q.is_meta and self.tables_on_meta():
            check_module_device(type(self).__name__, "q", q, True)

    def extra_repr(self) -> str:
        return f"heads={self.heads}"


def position_reader(pos: Tensor, runs: bool = False) -> ScoreModIndex:
    """``(b, idx) -> pos[b, idx]`` for ``(1|B, S)`` positions (batch 1 is shared by every batch row).

    Consecutive positions shared by the batch (the default, also at a KV-cache offset) are read as
    ``idx + start`` with ``start`` a captured 0-d tensor: no gather per score (about 15 % of a CPU
    FlexAttention call) and no recompilation when the offset changes. Known so when ``runs`` (vouched by the
    caller: also while tracing), else checked by :func:`arange_start` (eager, CPU); otherwise gathered.
    """
    if pos.shape[0] == 1:
        row = pos[0]
        start = arange_start(row, runs)
        if start is not None:
            return lambda b, idx: idx + start
        return lambda b, idx: row[idx]
    return lambda b, idx: pos[b, idx]


def arange_start(row: Tensor, runs: bool = False) -> Tensor | None:
    """``row[0]`` as a 0-d tensor when ``row == row[0] + arange(len(row))``, else None.

    ``runs``: the caller vouches for it, so ``row[0]`` (a view: no sync). Otherwise the values are checked only
    where that costs no device sync and can be traced: eager, on a CPU (None on a GPU and while tracing)."""
    if row.numel() == 0:
        return None
    if runs:
        return row[0]
    if torch.compiler.is_compiling() or row.device.type != "cpu":
        return None
    start = row[0]
    steps = torch.arange(row.numel(), device=row.device, dtype=row.dtype)
    return start if torch.equal(row - start, steps) else None
