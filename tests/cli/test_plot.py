"""``posenc plot``: every untrained picture as PNG + JSON, one-line errors for bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posenc.cli import main
from posenc.plots.pictures import picture_names


def test_plot_writes_every_untrained_picture_with_its_numbers(tmp_path: Path) -> None:
    assert main(["plot", "--out", str(tmp_path), "--length", "32", "--dim", "16", "--heads", "4"]) == 0
    names = picture_names(with_run=False)
    assert {"bias", "rope_scaling", "xpos_decay", "sinusoidal"} <= set(names)
    for name in names:
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
        assert json.loads((tmp_path / f"{name}.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.{ext}" for n in names for ext in ("png", "json")
    )


def test_only_draws_the_named_pictures(tmp_path: Path) -> None:
    assert main(["plot", "--out", str(tmp_path), "--only", "bias,xpos_decay", "--length", "16"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bias.json",
        "bias.png",
        "xpos_decay.json",
        "xpos_decay.png",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--length", "0"], "--length must be an integer >= 1, got 0"),
        (["--dim", "7"], "--dim must be an even number"),
        (["--heads", "0"], "--heads must be an integer >= 1"),
        (["--factor", "0"], "--factor must be an integer >= 1"),
        (["--only", "nope"], "--only got nope; choose from"),
        (["--only", "attention_distance"], "needs --run DIR"),
        (["--run", "/nonexistent/run"], "no config.json there"),
    ],
)
def test_bad_arguments_give_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_out_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["plot", "--out", str(target), "--only", "bias"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_rope_decay_bound_starts_at_its_maximum_and_decays() -> None:
    from posenc.plots import rope_decay_bound

    bound = rope_decay_bound(256, head_dim=128)
    assert abs(bound[0].item() - (64 + 1) / 2) < 1e-9  # |S_j| = j at distance 0, mean over j = 1..64
    assert bound[200:].mean() < 0.4 * bound[0]
