"""The ``posenc`` console script's entry point, outside the package: importing ``posenc`` imports torch (a second
or more), and a Ctrl-C then arrived before any handler of the command's own, as a traceback. Here it is one line
and exit status 130, as everywhere else in the command."""

from __future__ import annotations

import sys


def main() -> int:
    """Import the command and run it; Ctrl-C while importing is exit status 130 with one line on stderr."""
    try:
        from posenc.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("posenc: interrupted\n")
        return 130
    return run()
