"""The registry of benchmark suites (see :mod:`posenc.bench`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry

Row = dict[str, Any]
Suite = Callable[[bool, str], list[Row]]
#: Suites by name, filled by the modules of :mod:`posenc.bench` when imported.
SUITES: Registry[Suite] = Registry("bench suite")


def register_suite(name: str) -> Callable[[Suite], Suite]:
    """Decorator: add ``fn`` to :data:`SUITES` under ``name`` (a taken name raises)."""
    return SUITES.register(name)
