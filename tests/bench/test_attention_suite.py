"""The attention suite's order and grouping: issue #9's goal rows first, one encoding per timed group (so a
run cut short by make gpu-check's timeout keeps every encoding it finished), the baseline of the same rounds
beside each row. Checks shapes and order on CPU at tiny sizes, never a timing."""

from __future__ import annotations

from typing import Any

import pytest

import posenc
from posenc.bench import attention


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Tiny lengths; flex skipped (no compile); records which encodings were built, in order."""
    monkeypatch.setattr(attention, "QUICK_SIZES", (32,))
    monkeypatch.setattr(attention, "QUICK_TRAIN_SIZES", (32,))
    monkeypatch.setattr(attention, "QUICK_SHAW_SIZES", (16,))
    monkeypatch.setattr(attention, "peak_bytes", lambda fn, device: 0)
    real_skip = attention._skip_reason
    monkeypatch.setattr(
        attention,
        "_skip_reason",
        lambda name, backend, *a, **kw: (
            "skipped: no compile here" if backend == "flex" else real_skip(name, backend, *a, **kw)
        ),
    )
    monkeypatch.setattr(
        attention,
        "_shaw_group",
        lambda n, device, quick: [
            {"pass": "forward", "n": n, "encoding": "shaw", "status": "skipped", "note": "x"}
        ],
    )
    built: list[str] = []
    real_build = attention.build

    def build(name: str, **kw: Any) -> posenc.PositionEncoding:
        built.append(name)
        return real_build(name, **kw)

    monkeypatch.setattr(attention, "build", build)
    return built


def test_one_encoding_per_group_goal_rows_first(tiny: list[str]) -> None:
    bias = posenc.available(family="bias")
    suite = iter(attention.attention_suite(True, "cpu"))
    first = [next(suite) for _ in range(3)]  # baseline, then the first encoding's flex and sdpa rows
    assert [(r["encoding"], r["backend"]) for r in first] == [
        ("none", "sdpa"),
        (bias[0], "flex"),
        (bias[0], "sdpa"),
    ]
    assert tiny == [bias[0]], "the first group's rows must come before the next encoding is built"
    rows = first + list(suite)
    forward = [(r["encoding"], r["backend"]) for r in rows if r["pass"] == "forward" and r["n"] == 32]
    train = [(r["encoding"], r["backend"]) for r in rows if r["pass"] == "forward+backward"]
    goal = [(name, b) for name in bias for b in ("flex", "sdpa")]
    assert forward == [("none", "sdpa"), *goal, ("none", "flex")]  # the flex floor after the goal rows
    assert train == [("none", "sdpa"), *goal]
    assert rows.index(next(r for r in rows if r["pass"] == "forward+backward")) < rows.index(
        next(r for r in rows if r["encoding"] == "none" and r["backend"] == "flex")
    )
    assert rows[-1]["encoding"].startswith("shaw")
    for row in rows:
        if row["status"] == "ok":
            assert row["baseline_ms"] > 0 and row["ratio"] == pytest.approx(
                row["median_ms"] / row["baseline_ms"]
            )
        else:
            assert row["status"] == "skipped" and row["note"]
