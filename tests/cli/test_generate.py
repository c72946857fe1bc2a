"""posenc generate on a checkpoint in the format posenc compare writes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from posenc.cli import main
from posenc.experiments.checkpoints import load_model, save_checkpoint
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


def test_prompt_is_the_exact_bytes_even_when_not_utf8(
    checkpoint: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    raw = b"\xff\xfe def"  # not UTF-8: the shell hands Python these bytes, argv holds them surrogate-escaped
    argv = ["generate", "--checkpoint", str(checkpoint), "--tokens", "5", "--temperature", "0"]
    assert main([*argv, "--prompt", os.fsdecode(raw)]) == 0
    out = capfdbinary.readouterr().out
    model, _ = load_model(checkpoint)
    expected = model.generate(torch.tensor([list(raw)]), 5, temperature=0.0)[0, len(raw) :].tolist()
    assert out == bytes(expected) + b"\n"
    assert main([*argv, "--prompt", "é"]) == 0  # text is its UTF-8 bytes, as before
    assert (
        capfdbinary.readouterr().out
        == bytes(model.generate(torch.tensor([list("é".encode())]), 5, temperature=0.0)[0, 2:].tolist())
        + b"\n"
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--seed", str(2**64), "--seed must be an integer in [-2**63, 2**64 - 1], got 18446744073709551616"),
        ("--seed", "99999999999999999999999", "--seed must be an integer in [-2**63, 2**64 - 1]"),
        ("--seed", str(-(2**63) - 1), "--seed must be an integer in [-2**63, 2**64 - 1]"),
        ("--prompt", "\ud800", "--prompt holds '\\ud800' (U+D800) at 0, which no bytes encode"),
    ],
)
def test_generate_seed_out_of_range_and_non_bytes_prompt_are_one_line(
    checkpoint: Path, option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--checkpoint", str(checkpoint), "--prompt", "x", "--tokens", "2", option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_generate_takes_every_seed_torch_takes(
    checkpoint: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    for seed in (-(2**63), -1, 2**64 - 1):
        argv = [
            "generate",
            "--checkpoint",
            str(checkpoint),
            "--prompt",
            "x",
            "--tokens",
            "2",
            "--seed",
            str(seed),
        ]
        assert main(argv) == 0
        assert len(capfdbinary.readouterr().out) == 3
