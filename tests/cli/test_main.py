"""``python -m posenc`` is the same command line as ``posenc``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from posenc.cli import main


def test_module_entry_point_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "posenc", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("bench", "compare", "plot"):
        assert command in out.stdout


def test_missing_subcommand_is_an_error() -> None:
    out = subprocess.run([sys.executable, "-m", "posenc"], capture_output=True, text=True)
    assert out.returncode == 2 and "COMMAND" in out.stderr


def test_out_of_memory_is_one_line_and_other_runtime_errors_propagate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from posenc.cli import compare

    def fails(message: str) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            raise RuntimeError(message)

        return run

    alloc = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"
    monkeypatch.setattr(compare, "run", fails(alloc))
    assert main(["compare", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posenc compare: error: out of memory (") and err.count("\n") == 1
    monkeypatch.setattr(compare, "run", fails("a bug, not a user's error"))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["compare", "--quick"])


def test_an_error_with_control_characters_stays_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from posenc.cli import compare

    def fails(args: argparse.Namespace) -> int:
        raise OSError("cannot write /tmp/a\nb/c\x1b[2J: no space\nsecond line")

    monkeypatch.setattr(compare, "run", fails)
    assert main(["compare", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err == "posenc compare: error: cannot write /tmp/a\\nb/c\\x1b[2J: no space\\nsecond line\n"


def test_one_line_escapes_c0_del_c1_and_unicode_line_breaks() -> None:
    """``one_line`` escapes every control character (C0, DEL, C1 as its comment says) and U+2028/2029, and only
    those: C1 holds a line break (U+0085, NEL) and the terminal's one-byte CSI (U+009B), which passed through raw
    when only C0 and DEL were tested (review s5)."""
    from posenc.cli.output import one_line

    assert one_line("\x85\x9b") == "\\x85\\x9b"
    controls = "".join(chr(c) for c in (*range(32), *range(127, 160), 0x2028, 0x2029))
    escaped = one_line(controls)
    assert escaped.isascii() and escaped.isprintable()
    assert escaped == "".join(repr(c)[1:-1] for c in controls)
    kept = "plain text, é, \xa0, ü, 日本, \U0001f600 \\n"
    assert one_line(kept) == kept


def test_quick_and_a_preset_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--quick", "--preset", "gpu"]) == 2
    assert "give --quick or --preset gpu, not both" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["compare", "--quick", "--out", ""], "argument --out: an empty path"),
        (["compare", "--quick", "--data", "", "--out", "OUT"], "--data is an empty path"),
        (["tasks", "--quick", "--out", " "], "argument --out: an empty path"),
        (["generate", "--checkpoint", "", "--prompt", "x"], "argument --checkpoint: an empty path"),
        (["compare", "--quick", "--jobs", "0", "--out", "OUT"], "--jobs must be an integer >= 1, got 0"),
    ],
)
def test_empty_paths_and_bad_jobs_are_refused_before_the_folder_exists(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty path silently meant the current folder (outputs written there, or every file in it read as
    training data); --jobs 0 was refused only after the lock had created --out."""
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals (a bad --out type) exit through SystemExit
        code = exit_.code  # type: ignore[assignment]
    assert code == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("config.json", "[]", "config.json is not a run configuration (not a JSON object)"),
        ("config.json", '{"train": 5}', "its 'train' is not an object"),
        ("config.json", "not json", "config.json is not a readable run configuration"),
        ("results.json", "not json", "results.json is not a readable results file"),
        ("results.json", '{"runs": 5}', "results.json is not a results file"),
    ],
)
def test_a_damaged_run_file_is_one_line_before_any_training(
    name: str, text: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged config.json was a traceback or a JSON message naming no file; a damaged results.json failed only
    after every model had trained."""
    (tmp_path / name).write_text(text)
    assert main(["compare", "--quick", "--jobs", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["compare", "--steps", "1e3"], "posenc compare: error: argument --steps: invalid int value: '1e3'"),
        (["generate", "--prompt", "x", "--prompt-file", "y"], "argument --prompt-file: not allowed with"),
        (["nope"], "posenc: error: argument COMMAND: invalid choice: 'nope'"),
    ],
)
def test_a_bad_flag_is_one_line_pointing_to_help(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2 and err.count("\n") == 1 and words in err and err.rstrip().endswith("--help)")
    )


def test_a_closed_pipe_ends_any_command_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """BrokenPipeError is an OSError: it was reported as "error: [Errno 32] Broken pipe" with status 2."""
    import posenc.cli as cli

    def broken(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "silence_stdout", lambda: None)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["bench", "--quick"])
    monkeypatch.setattr(
        parser, "parse_args", lambda argv=None: argparse.Namespace(**{**vars(args), "func": broken})
    )
    assert cli.main(["bench", "--quick"]) == 141
    assert capsys.readouterr().err == ""


def test_an_interrupted_run_counts_what_it_keeps(tmp_path: Path) -> None:
    from posenc.cli.paths import kept_checkpoints

    assert kept_checkpoints(tmp_path) == "no model had finished, so there is nothing to resume from yet"
    (tmp_path / "checkpoints" / "rope").mkdir(parents=True)
    (tmp_path / "checkpoints" / "rope" / "seed0.pt").write_bytes(b"")
    (tmp_path / "checkpoints" / "rope" / ".seed1.pt.x.tmp").write_bytes(b"")
    assert kept_checkpoints(tmp_path).startswith(
        f"1 checkpoint of finished models kept in {tmp_path / 'checkpoints'}"
    )


def test_ctrl_c_while_the_command_imports_is_one_line() -> None:
    """SIGINT while ``posenc`` imports torch (a second or more on a cold start) printed Python's KeyboardInterrupt
    traceback. The import is made slow here, so the signal lands inside it."""
    import signal
    import time

    code = (
        "import builtins, sys, time\n"
        "real = builtins.__import__\n"
        "def slow(name, *args, **kwargs):\n"
        "    if name == 'torch':\n"
        "        time.sleep(30)\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = slow\n"
        "import _posenc_main\n"
        "print('ready', flush=True)\n"
        "sys.exit(_posenc_main.main())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    time.sleep(1.0)  # (inside the slowed `import torch` by now)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "posenc: interrupted\n")
