"""Reading precomputed position tables by index, exactly, without a device sync.

Encodings precompute their phase tables (RoPE cos/sin, xPos scaled cos/sin, sinusoidal rows) for positions
``0 .. length-1``. At decode time every call brings explicit positions (the cache offset, per-row offsets
under left padding, packed sequences); recomputing float64 phases for them costs more than the whole
rotation, while reading the table rows is one gather. Positions outside the table must still give the exact
values, and deciding which case holds must not stall an accelerator.

:func:`rows_at` picks one of two exact strategies:

* **host check (eager, CPU positions)**: ``aminmax`` of the positions and a comparison on the host. On
  CPU there is no device queue to drain, so this is not a sync; it costs one tiny reduction (about 2 µs),
  far less than the float64 phase math it saves. In range: a plain gather (a view of one row when all
  positions are equal, as in a decode step). Out of range: the exact path.
* **gather-and-select (tracing, accelerators, meta)**: gather at ``positions.clamp(0, length-1)`` and
  ``torch.where(inside, gathered, exact)``. Data-independent control flow: no sync, no graph break, no
  recompilation when the position values change; under ``torch.compile`` inductor fuses the gather, the
  exact math and the select into one kernel, and under CUDA graphs it replays as is. In eager on a GPU
  it launches the exact math too (asynchronously); the compiled decode step is the fast route there.

Both return, for every position, exactly what the exact function returns for that position, because the
tables were built by the same exact function (tested in ``tests/functional/test_tables.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Exact = Callable[[Tensor], Sequence[Tensor]]


Span = tuple[int, int]


def host_span(positions: Tensor | None) -> Span | None:
    """``(min, max)`` of ``positions`` as Python ints when that is free to know on the host, else None.

    Decided only for non-empty CPU tensors in eager mode (no device queue to wait for): one ``aminmax`` and
    two reads of its 0-d results. None under tracing, on accelerators, on the meta device and for empty tensors. Computed
    once per call and shared by every check that needs it (range limits, table lookups).
    """
    if positions is None or not positions.is_cpu or positions.numel() == 0 or torch.compiler.is_compiling():
        return None
    if positions.numel() == 1:  # a decode step: one read, no reduction (tolist: the cheapest read there is)
        p = positions.tolist()
        while isinstance(p, list):
            p = p[0]
        return int(p), int(p)
    lo, hi = torch.aminmax(positions)
    return int(lo), int(hi)


#: Position dtypes :func:`decode_position` reads (integers, not bool).
_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def decode_position(
    q: Tensor, k: Tensor, positions: Tensor | None, table: Tensor, head_dim: int
) -> int | None:
    """The position ``p`` of an eager CPU decode step whose rows a rotary encoding may read from ``table``
    ``(length, ...)`` by index, or None.

    Such a step: plain float ``q (B, H, 1, head_dim)`` and ``k (B', Hkv, 1, head_dim)`` of ``table``'s dtype, one
    integer position ``0 <= p < length``, everything on the CPU, not tracing. Those conditions imply every
    check the encoding's general path makes for that call (argument types, shapes, position shape and range),
    so the caller may skip them. Checking them at once is the point: a decode step rotates once per layer and
    token, right after the weights have streamed through the caches, where each Python-level check costs
    several times its isolated time (the step-by-step checks were a third of RoPE's cost in a 4-layer decode
    step). The caller adds its own conditions (implementation, scaling).
    """
    if type(q) is not Tensor or type(k) is not Tensor or type(positions) is not Tensor:
        return None  # (exact types: subclasses and None go the general way)
    dtype, qs, ks = table.dtype, q.shape, k.shape
    if (
        q.dtype is not dtype
        or k.dtype is not dtype
        or positions.numel() != 1
        or positions.dim() not in (1, 2)
    ):
        return None
    if positions.dtype not in _INTEGER_DTYPES or len(qs) != 4 or len(ks) != 4:
        return None
    if qs[-2] != 1 or ks[-2] != 1 or qs[-1] != head_dim or ks[-1] != head_dim:
        return None
    if not (q.is_cpu and k.is_cpu and positions.is_cpu and table.is_cpu) or torch.compiler.is_compiling():
        return None
    p = int(positions.item())  # (an integer dtype: exact)
    return p if 0 <= p < table.shape[0] else None


def host_in_range(positions: Tensor, length: int, span: Span | None = None) -> bool | None:
    """True/False when ``0 <= positions < length`` can be decided on the host for free (see
    :func:`host_span`; pass ``span`` if already known), else None."""
    span = host_span(positions) if span is None else span
    return None if span is None else span[0] >= 0 and span[1] < length


#: Rows per block of :class:`RowViews` (``1 << ROW_BLOCK_SHIFT``) and blocks it keeps per table.
ROW_BLOCK_SHIFT, ROW_BLOCKS_KEPT = 5, 4
_ROW_MASK = (1 << ROW_BLOCK_SHIFT) - 1  # a row's index in its block


class RowViews:
    """Rows of a table as ready views, so a decode step takes its row with a dict and a tuple lookup.

    Indexing a tensor (``table[p]``) is a C++ call of about a microsecond, several inside a model whose weights
    have just streamed through the caches; a decode step does it once per layer. The views are built a block
    at a time, on the first lookup of a row of that block (``table[a:b].unbind(0)``: 32 view objects sharing
    the table's memory, no copy; one call for 32 decode steps), and at most :data:`ROW_BLOCKS_KEPT` blocks are
    kept (the oldest is dropped first), so the memory and the time they take do not grow with the table's
    length (a view object is larger than a row of 512 bytes: views of every row nearly doubled RoPE's memory).
    They are rebuilt when another table object is passed; :class:`posenc.PositionEncoding` clears every
    ``RowViews`` attribute when the module moves (its tables are rebuilt then), so no old table is kept.
    Copies and pickles start empty.

    ``nested``: also split each row along its first dimension (a tuple of views per position).
    """

    def __init__(self, nested: bool = False) -> None:
        self.nested = nested
        self.clear()

    def clear(self) -> None:
        """Forget the table and its views."""
        # (table, {block: its rows}), swapped as one and never changed once set: threads may share it
        self._state: tuple[Tensor | None, dict[int, tuple[Any, ...]]] = (None, {})

    def __call__(self, table: Tensor, index: int) -> Any:
        """Row ``index`` of ``table`` (``0 <= index < len(table)``): a view, or a tuple of views if nested."""
        state = self._state  # read once: another thread may swap it, never half of it
        if state[0] is table:
            rows = state[1].get(index >> ROW_BLOCK_SHIFT)
            if rows is not None:
                return rows[index & _ROW_MASK]
        return self._add_block(table, index)

    def _add_block(self, table: Tensor, index: int) -> Any:
        """Build the views of ``index``'s block, keep them with the newest blocks of the same table, and return
        the row."""
        block = index >> ROW_BLOCK_SHIFT
        start = block << ROW_BLOCK_SHIFT
        views = table[start : start + (1 << ROW_BLOCK_SHIFT)].unbind(0)
        rows: tuple[Any, ...] = tuple(r.unbind(0) for r in views) if self.nested else views
        state = self._state
        kept = list(state[1].items()) if state[0] is table else []
        kept = kept[max(0, len(kept) + 1 - ROW_BLOCKS_KEPT) :]  # the newest, with room for this one
        self._state = (table, dict([*kept, (block, rows)]))  # a new dict: one read elsewhere sees a whole one
        return rows[index - start]

    def held(self) -> int:
        """Rows held as views (at most ``ROW_BLOCKS_KEPT << ROW_BLOCK_SHIFT``)."""
        return sum(len(rows) for rows in self._state[1].values())

    def __reduce__(self) -> tuple[type[RowViews], tuple[bool]]:
        return (RowViews, (self.nested,))


def rows_at(
    positions: Tensor,
    length: int,
    tables: Sequence[Tensor],
    exact: Exact,
    span: Span | None = None,
) -> list[Tensor]:
    """Rows of ``tables`` at ``positions``, or what ``exact(positions)`` gives where a row is missing.

    Args:
        positions: ``(..., S)`` integer positions, any values (negative and past the table included).
        length: rows the tables hold (positions ``0 .. length-1``); 0 means no table.
        tables: ``(length, *F)`` tensors, row ``p`` equal to ``exact`` at position ``p``.
        exact: positions ``(..., S)`` -> one ``(..., S, *F)`` tensor per table, any positions.
        span: :func:`host_span` of ``positions`` if the caller already has it.

    Returns:
        one ``(..., S, *F)`` tensor per table, in the tables' dtype.
    """
    if length <= 0 or positions.device.type == "meta" or tables[0].device != positions.device:
        return [e.to(t.dtype) for e, t in zip(exact(positions), tables, strict=True)]
    span = host_span(positions) if span is None else span
    inside = host_in_range(positions, length, span)
    if inside is True and span is not None and span[0] == span[1]:  # one position (a decode step): a view
        return [t[span[0]].expand(positions.shape + t.shape[1:]) for t in tables]
    if inside is True:
        return [t[positions] for t in tables]
    if inside is False:
        return [e.to(t.dtype) for e, t in zip(exact(positions), tables, strict=True)]
    idx = positions.clamp(0, length - 1)
    keep = ((positions >= 0) & (positions < length)).unsqueeze(-1)
    out = []
    for t, e in zip(tables, exact(positions), strict=True):
        k = keep.reshape(keep.shape + (1,) * (t.dim() - 2))  # broadcast over the row's trailing dims
        out.append(torch.where(k, t[idx], e.to(t.dtype)))
    return out


__all__ = [
    "ROW_BLOCKS_KEPT",
    "ROW_BLOCK_SHIFT",
    "RowViews",
    "Span",
    "decode_position",
    "host_in_range",
    "host_span",
    "rows_at",
]
