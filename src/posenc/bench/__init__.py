"""Benchmark suites for ``posenc bench``.

A suite is a function ``suite(quick: bool, device: str) -> list[dict]`` registered with
:func:`register_suite`; each row is a flat dict of JSON-safe values (names, shapes, medians in ms, ratios to a
baseline measured in the same run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
Suite = Callable[[bool, str], list[Row]]
SUITES: dict[str, Suite] = {}


def register_suite(name: str) -> Callable[[Suite], Suite]:
    """Decorator: add ``fn`` to :data:`SUITES` under ``name``."""

    def deco(fn: Suite) -> Suite:
        SUITES[name] = fn
        return fn

    return deco
