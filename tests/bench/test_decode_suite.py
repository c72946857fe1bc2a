"""The decode suite is registered (running it compiles models: a benchmark, not a test)."""

from __future__ import annotations

from posenc.bench import SUITES
from posenc.bench.decode import _rope_call


def test_suite_is_registered_and_rope_group_runs() -> None:
    assert "decode" in SUITES
    rows = _rope_call("cpu", quick=True)
    assert {r["name"] for r in rows} >= {"posenc RoPE", "copy q, k"}
