"""The registry of benchmark suites (see :mod:`posenc.bench`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..registry import Registry

Row = dict[str, Any]
#: ``suite(quick, device)``: its rows, as a list or yielded group by group (``posenc bench`` writes the report
#: as rows arrive, so a run stopped by a timeout keeps every finished group).
Suite = Callable[[bool, str], Iterable[Row]]
#: Suites by name, filled by the modules of :mod:`posenc.bench` when imported.
SUITES: Registry[Suite] = Registry("bench suite")


def register_suite(name: str) -> Callable[[Suite], Suite]:
    """Decorator: add ``fn`` to :data:`SUITES` under ``name`` (a taken name raises)."""
    return SUITES.register(name)
