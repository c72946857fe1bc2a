"""Checks of the fields a rerun reads back from ``results.json`` records and checkpoints (``posenc compare`` and
``posenc tasks``): each returns what is wrong as ``"<field> is <value>, not <what is expected>"``, or None when
the field can be read. The callers add the file's name, so a damaged file is refused as one line, before any
training, rather than failing in the summary after it (a ``KeyError`` or ``ZeroDivisionError`` traceback, or a
silent n/a).

Numbers may be written as JSON numbers or as the strings ``"inf"``, ``"-inf"``, ``"nan"`` (what
:func:`~posenc.experiments.checkpoints.json_safe` writes for them): a run that diverged records non-finite
losses and perplexities, and is kept (and left out of the statistics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: The strings :func:`~posenc.experiments.checkpoints.json_safe` writes for non-finite floats.
_SPECIAL = ("inf", "-inf", "nan")
#: Per-record scalars of ``posenc compare`` (``final_train_loss``: mean of the last training losses).
COMPARE_SCALARS = (
    "final_train_loss",
    "train_seconds",
    "eval_seconds",
    "tokens_per_second",
    "first_step_seconds",
)
#: Scalars a checkpoint must hold (the rest of :data:`COMPARE_SCALARS` came later: they may be absent).
CHECKPOINT_SCALARS = ("train_seconds", "eval_seconds")


def number(value: object) -> float | None:
    """``value`` as a float when it is a number (not a bool) or one of ``"inf"``, ``"-inf"``, ``"nan"``; else
    None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value in _SPECIAL:
        return float(value)
    return None


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a long list in a message stays one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scalars_problem(
    fields: Mapping[str, Any], keys: tuple[str, ...], *, required: bool = False, none_ok: bool = True
) -> str | None:
    """The first of ``keys`` in ``fields`` that is not a number (``required``: absent is wrong too; ``none_ok``:
    None, n/a, is accepted), or None."""
    for key in keys:
        if key not in fields:
            if required:
                return f"{key} is missing, not a number"
            continue
        value = fields[key]
        if (value is None and none_ok) or number(value) is not None:
            continue
        return f"{key} is {shown(value)}, not a number"
    return None


def losses_problem(fields: Mapping[str, Any]) -> str | None:
    """What makes ``fields["losses"]`` (a checkpoint's training losses, one per step) not a non-empty list of
    numbers, or None (NaN and infinities are numbers here: a diverged run records them)."""
    losses = fields.get("losses")
    if not isinstance(losses, list | tuple) or not losses or any(number(x) is None for x in losses):
        held = shown(losses) if "losses" in fields else "missing"
        return f"losses is {held}, not a non-empty list of numbers (one per training step)"
    return None


def rows_problem(rows: Mapping[str, Any], encoding: str, field: str) -> str | None:
    """What makes the rows of ``field`` not those of ``encoding`` (its own, and ``<encoding>+<method>`` for RoPE's
    extensions), or None: a record without its own row, or with another encoding's, would be summed up wrongly."""
    if encoding not in rows:
        return f"{field} has no row {encoding!r} (the encoding's own), only {shown(sorted(rows))}"
    other = [r for r in rows if r != encoding and not str(r).startswith(f"{encoding}+")]
    if other:
        return f"{field} has the row {other[0]!r}, not a row of {encoding!r}"
    return None


def _perplexity_ok(value: object) -> bool:
    """None (n/a: the model cannot take the length), NaN or a number > 0 (infinity: a diverged run)."""
    if value is None:
        return True
    x = number(value)
    return x is not None and (math.isnan(x) or x > 0)


def perplexity_problem(ppl: object, encoding: str, lengths: list[int]) -> str | None:
    """What makes ``ppl`` unreadable as the perplexities of ``encoding`` (row -> length -> value, with the
    encoding's own row and every one of ``lengths`` in each row), or None."""
    if not isinstance(ppl, dict):
        return f"perplexity is {shown(ppl)}, not row -> length -> perplexity"
    bad = rows_problem(ppl, encoding, "perplexity")
    if bad is not None:
        return bad
    for row, values in ppl.items():
        if not isinstance(values, dict):
            return f"perplexity.{row} is {shown(values)}, not length -> perplexity"
        missing = [str(lv) for lv in lengths if str(lv) not in values]
        if missing:
            return (
                f"perplexity.{row} has no length {', '.join(missing)}, not every evaluation length "
                f"({', '.join(map(str, lengths))})"
            )
        for length, value in values.items():
            if not _perplexity_ok(value):
                return f"perplexity.{row}.{length} is {shown(value)}, not a perplexity (a number > 0, or null: n/a)"
    return None


def curve_problem(curve: object) -> str | None:
    """What makes ``curve`` unreadable as a learning curve (``{"steps": [...], key: [...]}``, every list as long as
    ``steps``, ``steps`` step counts, the values numbers or None), or None; an absent or empty curve is none
    measured."""
    if curve is None or curve == {}:
        return None
    if not isinstance(curve, dict) or not all(isinstance(v, list) for v in curve.values()):
        return "curve is not lists of numbers"
    steps = curve.get("steps")
    if steps is None:
        return f"curve has no 'steps', only {shown(sorted(curve))}"
    if any(isinstance(s, bool) or not isinstance(s, int) for s in steps):
        return f"curve.steps is {shown(steps)}, not step counts"
    for key, values in curve.items():
        if len(values) != len(steps):
            return f"curve.{key} holds {len(values)} value(s), not one per step ({len(steps)} steps)"
        if any(v is not None and number(v) is None for v in values):
            return f"curve.{key} is {shown(values)}, not a list of numbers"
    return None


def record_problem(rec: Mapping[str, Any], encoding: str, lengths: list[int]) -> str | None:
    """The first field of a ``posenc compare`` record of ``encoding`` (``results.json``) that the summary cannot
    read: perplexities (:func:`perplexity_problem`), scalars (numbers or None), curve; or None."""
    return (
        perplexity_problem(rec.get("perplexity"), encoding, lengths)
        or scalars_problem(rec, COMPARE_SCALARS)
        or curve_problem(rec.get("curve"))
    )


def checkpoint_problem(ckpt: Mapping[str, Any], encoding: str, lengths: list[int]) -> str | None:
    """The first field of a ``posenc compare`` checkpoint of ``encoding`` that a rerun cannot read back: losses,
    timings (numbers, those of :data:`CHECKPOINT_SCALARS` present), perplexities, curve; or None."""
    return (
        losses_problem(ckpt)
        or scalars_problem(ckpt, CHECKPOINT_SCALARS, required=True, none_ok=False)
        or scalars_problem(ckpt, COMPARE_SCALARS[3:], none_ok=False)
        or perplexity_problem(ckpt.get("perplexity"), encoding, lengths)
        or curve_problem(ckpt.get("curve"))
    )


#: Per-record scalars of ``posenc tasks``.
TASK_SCALARS = ("final_train_loss", "train_seconds", "eval_seconds")


def cells_problem(
    cells: object, lengths: list[int], groups: list[str] | None = None, encoding: str | None = None
) -> str | None:
    """What makes ``cells`` unreadable as a ``posenc tasks`` record's accuracies (row -> length -> depth group ->
    accuracy in [0, 1] or None) with an entry for each of ``lengths`` (the reports read every one), the same
    depth groups everywhere (``groups`` when given, else those of its first row and length) and, given the
    ``encoding``, its rows (:func:`rows_problem`); or None."""
    if not isinstance(cells, dict):
        return f"cells is {type(cells).__name__}, not row -> length -> group -> accuracy"
    if encoding is not None and (bad := rows_problem(cells, encoding, "cells")) is not None:
        return bad
    expected = groups
    for row, by_length in cells.items():
        if not isinstance(by_length, dict) or any(str(lv) not in by_length for lv in lengths):
            return f"cells.{row} does not hold the lengths {', '.join(map(str, lengths))}"
        for length, by_group in by_length.items():
            if not isinstance(by_group, dict) or not by_group:
                return f"cells.{row}.{length} is not depth group -> accuracy"
            expected = list(by_group) if expected is None else expected
            if sorted(by_group) != sorted(expected):
                return (
                    f"cells.{row}.{length} holds the depth groups {', '.join(by_group)}, "
                    f"not {', '.join(expected)}"
                )
            for group, value in by_group.items():
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if value is not None and not (number and 0 <= value <= 1):
                    return f"cells.{row}.{length}.{group} is {value!r}, not an accuracy"
    return None


def depth_groups(cells: dict[str, Any]) -> list[str]:
    """The depth groups of a record's ``cells`` that :func:`cells_problem` accepted (those of its first row and
    length; [] when it has no rows)."""
    for by_length in cells.values():
        return list(next(iter(by_length.values())))
    return []


def task_record_problem(
    rec: Mapping[str, Any], encoding: str, lengths: list[int], groups: list[str] | None
) -> str | None:
    """The first field of a ``posenc tasks`` record of ``encoding`` (``results.json``) that the summary cannot
    read: cells (:func:`cells_problem`), scalars (numbers or None); or None."""
    return cells_problem(rec.get("cells"), lengths, groups, encoding) or scalars_problem(rec, TASK_SCALARS)


def task_checkpoint_problem(
    ckpt: Mapping[str, Any], encoding: str, lengths: list[int], groups: list[str]
) -> str | None:
    """The first field of a ``posenc tasks`` checkpoint of ``encoding`` that a rerun cannot read back: losses,
    timings, cells with the depth groups ``groups``; or None."""
    return (
        losses_problem(ckpt)
        or scalars_problem(ckpt, CHECKPOINT_SCALARS, required=True, none_ok=False)
        or cells_problem(ckpt.get("cells"), lengths, groups, encoding)
    )
