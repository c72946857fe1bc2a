"""``posenc bench --quick``: runs every registered suite, prints a table, writes bench.json and bench.md.

Checks the report's shape and that every ratio is a finite positive number; never a timing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from posenc.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    return json.loads((out / "bench.json").read_text()), out


def test_report_shape(report: tuple[dict[str, Any], Path]) -> None:
    data, out = report
    assert set(data) == {"environment", "suites"}
    assert data["environment"]["quick"] is True and data["environment"]["device"] == "cpu"
    assert "rope" in data["suites"]
    for name, rows in data["suites"].items():
        assert rows, f"suite {name} returned no rows"
        assert all(isinstance(row, dict) for row in rows)
    md = (out / "bench.md").read_text()
    assert all(f"## {name}" in md for name in data["suites"])


def test_every_ratio_is_finite(report: tuple[dict[str, Any], Path]) -> None:
    ratios = 0
    for rows in report[0]["suites"].values():
        for row in rows:
            for key, value in row.items():
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                if "ratio" in key and numeric:  # e.g. "ratio"; "ratio_to" names the baseline
                    assert math.isfinite(value) and value > 0, (key, row)
                    ratios += 1
    assert ratios > 0


def test_rope_rows(report: tuple[dict[str, Any], Path]) -> None:
    rows = report[0]["suites"]["rope"]
    assert {r["pass"] for r in rows} == {"forward", "backward"}
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    impls = {r["impl"] for r in rows}
    assert {
        "copy (floor)",
        "posenc",
        "transformers eager",
        "transformers compiled",
        "rotary-embedding-torch",
    } <= impls
    for row in rows:
        if row["status"] == "ok":
            assert math.isfinite(row["median_ms"]) and row["median_ms"] > 0 and math.isfinite(row["ratio"])
        else:
            assert row["status"] in ("missing", "skipped") and row["note"] and row["ratio"] is None
    floors = [r for r in rows if r["impl"] == "copy (floor)"]
    assert all(r["ratio"] == 1.0 for r in floors)


def test_unknown_suite_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--suite", "nope"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_attention_rows_train_every_bias_encoding(report: tuple[dict[str, Any], Path]) -> None:
    """Issue #9's training goals have rows: forward+backward of each bias encoding (learned parameters
    included) against causal SDPA's; on CPU through ``sdpa`` only (FlexAttention has no CPU backward)."""
    import posenc

    rows = [r for r in report[0]["suites"]["attention"] if r.get("pass") == "forward+backward"]
    by = {(r["encoding"], r["backend"]): r for r in rows}
    assert by[("none", "sdpa")]["status"] == "ok" and by[("none", "sdpa")]["ratio"] == 1
    for name in posenc.available(family="bias"):
        assert by[(name, "sdpa")]["status"] == "ok", by[(name, "sdpa")]
        assert by[(name, "flex")]["status"] == "skipped"
        assert "no backward on CPU" in by[(name, "flex")]["note"]


def test_a_suite_named_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--suite rope --suite rope`` ran rope twice, the second run's rows replacing the first's."""
    args = [
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--suite",
        "rope",
        "--suite",
        "rope",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--suite rope given more than once" in err
    assert not (tmp_path / "bench.json").exists()


def test_a_dangling_out_link_is_refused_before_the_suites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    assert main(["bench", "--quick", "--device", "cpu", "--suite", "nope-not-run", "--out", str(link)]) == 2
    assert "which does not exist" in capsys.readouterr().err
