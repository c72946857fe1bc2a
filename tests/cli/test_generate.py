"""posenc generate on a checkpoint in the format posenc compare writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from posenc.cli import main
from posenc.experiments.checkpoints import save_checkpoint
from posenc.experiments.train import TrainConfig, build_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig(dim=32, depth=2, heads=2, train_len=16)
    model = build_model("rope", config)
    path = tmp_path_factory.mktemp("ckpt") / "rope.pt"
    save_checkpoint(
        path, encoding="rope", config={"train": dataclasses.asdict(config)}, state_dict=model.state_dict()
    )
    return path


def test_generate_prints_the_new_bytes(checkpoint: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    argv = [
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "def ",
        "--tokens",
        "7",
        "--temperature",
        "0",
    ]
    assert main(argv) == 0
    first = capfdbinary.readouterr().out
    assert len(first) == 8 and first.endswith(b"\n")
    assert main([*argv, "--scaling", "yarn"]) == 0  # inference-time context extension
    assert len(capfdbinary.readouterr().out) == 8


def test_generate_bad_arguments_exit_with_one_line(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "x", "--scaling", "nope"]) == 2
    assert "--scaling must be one of" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", "missing.pt", "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    for device, says in (("bogus", "is not a device name"), ("meta", "holds no data")):
        assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "x", "--device", device]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
    # a cache beyond the machine's memory: one line, not a process killed partway
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "x", "--tokens", str(10**12)]) == 2
    err = capsys.readouterr().err
    assert "GiB, more than the" in err and err.count("\n") == 1
