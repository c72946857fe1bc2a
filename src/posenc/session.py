"""Decode sessions: what a decode loop promises the encodings, and the per-session tables that buys.

A decode step evaluates every layer's positional bias for one query against every cached key, once per layer
and token. For an encoding whose bias depends on the distance ``k - q`` only (ALiBi, T5, Kerple; FIRE below its
threshold) that is the same handful of values every step, recomputed from the parameters in a dozen small
calls: in a 4-layer dim-256 model on a CPU, 8-19 % of the whole step. Keyed on the parameters themselves such
a table would go stale without notice (a write through ``.data`` bumps no version counter), so it lives only as
long as a :class:`DecodeSession`, inside which the caller promises that nothing it depends on changes.

:func:`posenc.models.generate.generate` opens one around its decode loop; a hand-written loop may do the same::

    with posenc.DecodeSession(slots=max_len), torch.no_grad():  # every position below max_len
        for t in range(n):
            logits = model(tokens[:, -1:], positions=pos, caches=caches)
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

import torch
from torch import Tensor

from .validation import check_int

#: The most memory an encoding's per-session table may take, per layer (32 MiB): a bias encoding's ``(2 slots - 1,
#: H)`` bias by distance, Shaw's ``a^K`` and ``a^V`` by distance. Past it the steps compute as without a session
#: (the same values), so a loose ``slots`` costs no memory.
SESSION_TABLE_BYTES = 32 << 20


class DecodeSession:
    """A decode loop's promise, for as long as the ``with`` block runs.

    Inside it the caller promises that (1) no parameter or buffer of the model changes, (2) no gradient is
    wanted (the session is ignored while grad mode is on), and (3) every query and key position lies in
    ``[0, slots)``. Encodings may then build tables from their parameters once and read them by index every
    step (see :meth:`posenc.bias.base.BiasEncoding.pairwise`); the tables are dropped when the ``with`` block
    ends, so a change made between two sessions, or between two ``with`` blocks of one session object (an
    optimizer step, ``load_state_dict``, a write through ``.data``), is always seen. A position outside
    ``[0, slots)`` never reads a wrong row: where a table of the session would be read outside its rows (a bias
    encoding's key-query distance of ``slots`` or more) it raises ``IndexError`` naming the session on a CPU
    (a device assertion on a GPU), and elsewhere the encoding computes it as without the session. Sessions nest (the innermost
    one counts) and are per thread and per asyncio task.

    Args:
        slots: the key slots of the loop's caches (``max_len``): positions stay below it. The tables it sizes are
            capped (:data:`SESSION_TABLE_BYTES`, 32 MiB per layer); past the cap the encoding computes as without a session, so a loose bound costs
            neither memory nor a different result.
    """

    def __init__(self, slots: int) -> None:
        self.slots = check_int("slots", slots, at_least=1, owner="DecodeSession")
        self._token: Token[DecodeSession | None] | None = None
        self._opening: object | None = None  # new at each __enter__: what the memos are keyed on
        self._memos: list[SessionMemo] = []  # those holding a table of this opening, emptied at __exit__

    def __enter__(self) -> DecodeSession:
        if self._token is not None:
            raise RuntimeError("DecodeSession: this session is already open; open a new one to nest")
        self._token = _CURRENT.set(self)
        self._opening = object()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is None:
            raise RuntimeError(
                "DecodeSession: __exit__ without __enter__ (use it as `with DecodeSession(n):`)"
            )
        _CURRENT.reset(self._token)
        for memo in self._memos:
            memo.drop(self._opening)
        self._token, self._opening, self._memos = None, None, []

    def __repr__(self) -> str:
        return f"DecodeSession(slots={self.slots})"


_CURRENT: ContextVar[DecodeSession | None] = ContextVar("posenc_decode_session", default=None)


def current_session() -> DecodeSession | None:
    """The innermost open :class:`DecodeSession` of this thread / task, or None."""
    return _CURRENT.get()


def session_tables() -> DecodeSession | None:
    """The open session whose tables an encoding may read, or None: there are none while gradients are recorded
    (grad mode, forward-mode AD, torch.func's transforms: a table built from the plain parameters carries no
    tangent and no batch dimension; under ``jvp`` T5's tangent came out 0) or while tracing (dynamo cannot trace
    a ContextVar; a jit trace would keep this session's table)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        return None
    return _CURRENT.get()


class SessionMemo:
    """A value kept per open session: ``get(session)`` gives what ``put(session, value)`` stored, within the same
    ``with`` block of that session object only; the value is dropped when the block ends. Sessions open at once
    (one model decoding in several threads, each in its own session) keep one value each: with one slot they
    evicted each other's table every step. Copies and pickles start empty (a session never outlives its
    process), and :class:`posenc.PositionEncoding` clears it when the module moves."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every value."""
        self._values: dict[int, tuple[object, Any]] = {}  # id(opening) -> (opening, value)

    def get(self, session: DecodeSession) -> Any:
        """The value stored for ``session``'s current ``with`` block, or None."""
        opening = session._opening
        found = self._values.get(id(opening)) if opening is not None else None
        return found[1] if found is not None and found[0] is opening else None

    def put(self, session: DecodeSession, value: Tensor | tuple[Any, ...] | list[Any]) -> None:
        """Keep ``value`` for ``session``'s current ``with`` block; nothing if it is not open."""
        opening = session._opening
        if opening is None:
            return
        if id(opening) not in self._values:  # (once per block: the block drops it at its end)
            session._memos.append(self)
        self._values[id(opening)] = (opening, value)

    def drop(self, opening: object) -> None:
        """Forget the value of ``opening`` (a session's ``with`` block that ends)."""
        found = self._values.get(id(opening))
        if found is not None and found[0] is opening:
            del self._values[id(opening)]

    def __reduce__(self) -> tuple[type[SessionMemo], tuple[()]]:
        return (SessionMemo, ())


__all__ = ["SESSION_TABLE_BYTES", "DecodeSession", "SessionMemo", "current_session"]
