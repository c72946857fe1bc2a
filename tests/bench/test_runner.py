"""One failing bench case never takes the run down: it becomes a row with status "error" and its reason."""

from __future__ import annotations

import pytest

from posenc.bench.runner import time_round_robin
from posenc.cli.bench import run_suite


def test_a_failing_case_is_dropped_with_its_reason() -> None:
    calls = {"ok": 0}

    def ok() -> None:
        calls["ok"] += 1

    def broken() -> None:
        raise RuntimeError("No valid triton configs. OutOfMemoryError: out of resource\nmore lines")

    errors: dict[str, str] = {}
    medians = time_round_robin({"ok": ok, "broken": broken}, "cpu", repeats=3, warmup=1, errors=errors)
    assert set(medians) == {"ok"} and calls["ok"] == 4
    assert errors == {
        "broken": "error: RuntimeError: No valid triton configs. OutOfMemoryError: out of resource"
    }


def test_a_failing_suite_is_one_error_row(caplog: pytest.LogCaptureFixture) -> None:
    def suite(quick: bool, device: str) -> list[dict[str, object]]:
        raise MemoryError("too big")

    rows = run_suite("broken", suite, True, "cpu")
    assert rows == [{"suite": "broken", "status": "error", "note": "MemoryError: too big"}]
