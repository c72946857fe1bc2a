"""Benchmark suites for ``posenc bench``.

A suite is a function ``suite(quick: bool, device: str) -> list[dict]`` in :data:`SUITES` (add one with
``@SUITES.register("name")`` in a module of this package, and import that module below); each row is a flat dict
of JSON-safe values (names, shapes, medians in ms, ratios to a baseline measured in the same run).
"""

from __future__ import annotations

from . import attention, decode, rope, train  # noqa: E402, F401  (each registers its suites)
from .suites import SUITES, Row, Suite, register_suite

__all__ = ["SUITES", "Row", "Suite", "register_suite"]
