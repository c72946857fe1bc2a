"""posenc generate on a checkpoint in the format posenc compare writes."""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import threading
from pathlib import Path

import pytest
import torch

from posenc.cli import generate as generate_cli
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
    assert len(first) == 7  # the new bytes only (a newline is added on a terminal alone)
    assert main([*argv, "--scaling", "yarn"]) == 0  # inference-time context extension
    assert len(capfdbinary.readouterr().out) == 7


def test_a_model_limit_and_a_scaling_without_rope_name_the_flags_and_the_encoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = TrainConfig(dim=32, depth=2, heads=2, train_len=16)
    path = tmp_path / "learned.pt"
    model = build_model("learned", config)
    save_checkpoint(
        path, encoding="learned", config={"train": dataclasses.asdict(config)}, state_dict=model.state_dict()
    )
    argv = ["generate", "--checkpoint", str(path), "--prompt", "def "]
    assert main([*argv, "--tokens", "50"]) == 2
    err = capsys.readouterr().err
    assert (
        "this learned model takes positions below 16 only, but the prompt (4 bytes) + --tokens 50 - 1 = 53"
        in err
    )
    assert main([*argv, "--tokens", "2", "--scaling", "yarn"]) == 2
    assert (
        "--scaling yarn: this checkpoint's encoding is learned; context extension needs RoPE layers, found "
        "LearnedAbsolute (on the embeddings)" in capsys.readouterr().err  # (not its layers' NoPE)
    )


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
    assert out == bytes(expected)
    assert main([*argv, "--prompt", "é"]) == 0  # text is its UTF-8 bytes, as before
    assert capfdbinary.readouterr().out == bytes(
        model.generate(torch.tensor([list("é".encode())]), 5, temperature=0.0)[0, 2:].tolist()
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
        assert len(capfdbinary.readouterr().out) == 2  # the two new bytes


def test_a_folder_with_one_checkpoint_is_that_checkpoint(
    checkpoint: Path, tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    argv = ["generate", "--prompt", "def ", "--tokens", "6", "--temperature", "0", "--checkpoint"]
    assert main([*argv, str(checkpoint)]) == 0
    expected = capfdbinary.readouterr().out
    folder = tmp_path / "rope"
    folder.mkdir()
    (folder / "seed0.pt").write_bytes(checkpoint.read_bytes())
    assert main([*argv, str(folder)]) == 0  # an encoding's folder of a one-seed compare run
    assert capfdbinary.readouterr().out == expected


def test_a_folder_of_several_or_none_and_files_that_are_no_checkpoint_are_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--prompt", "x", "--tokens", "2", "--checkpoint"]
    empty = tmp_path / "empty"
    empty.mkdir()
    several = tmp_path / "several"
    several.mkdir()
    for seed in range(3):
        (several / f"seed{seed}.pt").write_bytes(checkpoint.read_bytes())
    run = tmp_path / "run"
    (run / "checkpoints" / "rope").mkdir(parents=True)
    (run / "checkpoints" / "rope" / "seed0.pt").write_bytes(checkpoint.read_bytes())
    text = tmp_path / "notes.md"
    text.write_text("# not a checkpoint\n")
    damaged = tmp_path / "damaged.pt"
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    torch.save(ckpt, damaged)
    for path, says in (
        (empty, "is a folder holding no checkpoint (.pt)"),
        (
            run,
            f"is a run's folder; give one of its checkpoints, e.g. {run / 'checkpoints' / 'rope' / 'seed0.pt'}",
        ),
        (several, "is a folder of 3 checkpoints (seed0.pt, seed1.pt, seed2.pt); give one of them"),
        (text, "is corrupt, truncated or not a posenc checkpoint (UnpicklingError); give a .pt written by"),
        (damaged, "is damaged (RuntimeError: Error(s) in loading state_dict"),
    ):
        assert main([*argv, str(path)]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
        assert "delete it" not in err  # a file the user named is never theirs to delete on our word
    assert text.exists() and damaged.exists()


def test_bytes_are_written_as_they_come_and_a_closed_pipe_ends_quietly(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Pipe:
        """stdout whose reader leaves after three bytes (`| head -c 3`)."""

        def __init__(self) -> None:
            self.got: list[bytes] = []
            self.buffer = self

        def write(self, data: bytes) -> int:
            if len(self.got) == 3:
                raise BrokenPipeError(32, "Broken pipe")
            self.got.append(bytes(data))
            return len(data)

        def flush(self) -> None:
            pass

    pipe = Pipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    argv = [
        "generate",
        "--prompt",
        "x",
        "--tokens",
        "50",
        "--temperature",
        "0",
        "--checkpoint",
        str(checkpoint),
    ]
    assert main(argv) == 141
    assert [len(b) for b in pipe.got] == [1, 1, 1]  # one byte per write: each token as soon as it is picked
    assert capsys.readouterr().err == ""


def test_prompt_file_and_stdin_give_the_bytes_of_the_same_prompt(
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    raw = b"def f(x):\n\x00\xff  return"  # a NUL and a byte that is not UTF-8: no argv carries these
    prompt = tmp_path / "prompt.py"
    prompt.write_bytes(raw)
    argv = ["generate", "--checkpoint", str(checkpoint), "--tokens", "5", "--temperature", "0"]
    model, _ = load_model(checkpoint)
    expected = bytes(model.generate(torch.tensor([list(raw)]), 5, temperature=0.0)[0, len(raw) :].tolist())
    assert main([*argv, "--prompt-file", str(prompt)]) == 0
    assert capfdbinary.readouterr().out == expected

    class Stdin:
        buffer = io.BytesIO(raw)

    monkeypatch.setattr(sys, "stdin", Stdin())
    assert main([*argv, "--prompt-file", "-"]) == 0
    assert capfdbinary.readouterr().out == expected
    fifo = tmp_path / "fifo"  # a pipe by name, as `--prompt-file <(cat prompt.py)` gives
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(raw,))
    writer.start()
    assert main([*argv, "--prompt-file", str(fifo)]) == 0
    writer.join()
    assert capfdbinary.readouterr().out == expected
    monkeypatch.setattr(sys, "stdin", None)  # started with stdin closed (`<&-`)
    assert main([*argv, "--prompt-file", "-"]) == 2
    assert b"standard input is closed" in capfdbinary.readouterr().err
    monkeypatch.setattr(sys, "stdout", None)  # and stdout (`>&-`)
    assert main([*argv, "--prompt-file", str(prompt)]) == 2
    assert b"standard output is closed" in capfdbinary.readouterr().err


def test_a_prompt_file_that_is_missing_empty_a_folder_or_too_long_is_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    long = tmp_path / "long.txt"
    long.write_bytes(b"x" * (generate_cli.MAX_PROMPT_FILE + 1))
    argv = ["generate", "--checkpoint", str(checkpoint), "--tokens", "2", "--prompt-file"]
    for path, says in (
        (tmp_path / "missing.txt", "does not exist"),
        (tmp_path, "is a folder"),
        (empty, "is empty"),
        (long, f"holds over {generate_cli.MAX_PROMPT_FILE} bytes"),
    ):
        assert main([*argv, str(path)]) == 2
        err = capsys.readouterr().err
        assert f"--prompt-file {path} {says}" in err and err.count("\n") == 1, err
