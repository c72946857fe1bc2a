"""``python -m posenc`` is the same command line as ``posenc``."""

from __future__ import annotations

import subprocess
import sys


def test_module_entry_point_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "posenc", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("bench", "compare", "plot"):
        assert command in out.stdout


def test_missing_subcommand_is_an_error() -> None:
    out = subprocess.run([sys.executable, "-m", "posenc"], capture_output=True, text=True)
    assert out.returncode == 2 and "COMMAND" in out.stderr
