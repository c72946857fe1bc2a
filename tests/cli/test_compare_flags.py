"""``posenc compare``: a bad training flag is refused under its own name (not ``TrainConfig``'s field name), and
an encoding that cannot be built at the given sizes is refused before any model trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from posenc.cli import main

BAD_FLAGS = [
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--train-len", "-3"], "--train-len must be an integer >= 1, got -3"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--lr", "0"], "--lr must be > 0, got 0"),
    (["--warmup", "1"], "--warmup must be < 1, got 1"),
    (["--precision", "fp8"], "--precision 'fp8': choose one of auto, fp32, bf16"),
    (["--jobs", "0"], "--jobs must be an integer >= 1, got 0"),
    (
        ["--heads", "3"],
        "--heads must divide --dim; got dim 32, heads 3 (--heads 3, the rest from the preset)",
    ),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS, ids=[f[0][0] for f in BAD_FLAGS])
def test_bad_flag_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert main(["compare", "--quick", "--encodings", "none", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_unbuildable_encoding_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--dim 30 --heads 2`` (head size 15) trained ``none`` fully, then failed on rope's odd head size."""
    out = tmp_path / "run"
    argv = [
        "compare",
        "--quick",
        "--encodings",
        "none,rope",
        "--dim",
        "30",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "rope cannot be trained at dim 30 with 2 heads (head size 15)" in err and "--encodings" in err
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("has_matplotlib", [True, False])
def test_the_last_line_names_figures_only_when_they_are_drawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, has_matplotlib: bool
) -> None:
    """Without a working matplotlib no figure is written (a warning says so), and the closing line no longer
    claims any (an installed but broken matplotlib counts as missing: the import is what is checked)."""
    import sys

    import posenc.experiments.compare as compare
    import posenc.experiments.report as report

    monkeypatch.setattr(compare, "run_compare", lambda *args, **kwargs: {})
    monkeypatch.setattr(report, "table", lambda results: "the table")
    if not has_matplotlib:
        monkeypatch.setitem(sys.modules, "posenc.plots.compare", None)  # importing it raises ImportError
    out = tmp_path / "run"
    assert main(["compare", "--quick", "--encodings", "none", "--out", str(out), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    assert ("figures under" in last) is has_matplotlib
