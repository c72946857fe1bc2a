"""Standard output of the commands: progress lines that outlive a reader who left (``| head``)."""

from __future__ import annotations

import os
import sys


def say(text: str) -> None:
    """Print ``text`` to stdout; if the reader has gone (a closed pipe), stop printing and go on working: the
    files a command writes are its result, its stdout only a log of them."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout's descriptor at ``os.devnull``, so that later prints and the interpreter's flush at exit, which
    would write the bytes left in the buffer into the closed pipe, report nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by something with no descriptor
        pass
