"""``python -m posenc`` is the same command line as ``posenc``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable

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


def test_quick_and_a_preset_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--quick", "--preset", "gpu"]) == 2
    assert "give --quick or --preset gpu, not both" in capsys.readouterr().err
