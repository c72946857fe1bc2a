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
        (["--length", "0"], "--length must be an integer >= 2, got 0"),
        (["--length", "1"], "--length must be an integer >= 2, got 1"),  # was LongRoPE's error, midway
        (["--dim", "7"], "--dim must be an even number"),
        (["--dim", "2"], "--dim must be an integer >= 4, got 2"),  # was dynamic NTK's error, midway
        (["--heads", "0"], "--heads must be an integer >= 1"),
        (["--factor", "0"], "--factor must be an integer >= 1"),
        (["--only", "nope"], "--only got nope; choose from"),
        (["--only", "attention_distance"], "needs --run DIR"),
        (["--run", "/nonexistent/run"], "no config.json there"),
        (["--run", "/nonexistent/run", "--windows", "0"], "--windows must be an integer >= 1, got 0"),
        (["--length", "100000000"], "--length 100000000 is too large to plot"),
        (["--length", "100000000", "--run", "/nonexistent/run"], "--length takes at most"),
        (["--length", "100000000", "--only", "sinusoidal"], "the sinusoidal picture would need about"),
        (
            ["--factor", str(10**20), "--only", "bias"],
            f"--factor {10**20}, --dim 128 and --heads 8 are too large",
        ),
        (["--dim", "100000"], "--dim must be at most 4096 for a picture, got 100000"),
        (["--heads", "100000"], "--heads must be at most 256 for a picture, got 100000"),
        (["--max-distance", str(10**23)], "--max-distance must be at most 1048576 for a picture"),
    ],
)
def test_bad_arguments_give_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # refused before drawing


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


def test_length_beyond_this_machines_memory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import posenc.models.generate

    monkeypatch.setattr(posenc.models.generate, "device_memory", lambda device: 2**30)  # a 1 GiB machine
    argv = ["plot", "--out", str(tmp_path / "o"), "--only", "bias"]
    assert main([*argv, "--length", "8192"]) == 2  # about 0.7 GiB, more than half of it
    err = capsys.readouterr().err
    assert "more than the 0.5 GiB a picture may use here" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert main([*argv, "--length", "64"]) == 0


def test_attention_windows_are_run_one_at_a_time() -> None:
    """Memory of the --run pictures does not grow with --windows: one (1, H, N, N) score tensor at a time."""
    import torch

    from posenc.experiments.train import TrainConfig, build_model
    from posenc.plots.attention import attention_stats

    model = build_model("alibi", TrainConfig(dim=16, depth=1, heads=2, train_len=8))
    batches: list[int] = []
    model.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    text = torch.randint(0, 256, (100,), dtype=torch.uint8)
    stats = attention_stats(model, text, 8, windows=5)
    assert batches == [1] * 5 and stats is not None and stats[0].rows == 5 * 2
