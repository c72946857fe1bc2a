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


#: Control characters (C0, DEL, C1) and Unicode's line and paragraph separators as the escapes Python writes for
#: them (``\n`` as the two characters ``\`` and ``n``).
_ESCAPES = {c: repr(chr(c))[1:-1] for c in (*range(32), *range(127, 160), 0x2028, 0x2029)}


def one_line(text: str) -> str:
    """``text`` with its control characters escaped: an error message stays one line on the terminal (a path
    with a newline in it, a multi-line message from a library) and cannot move the cursor."""
    return text.translate(_ESCAPES)


def silence_stdout() -> None:
    """Point stdout's descriptor at ``os.devnull``, so that later prints and the interpreter's flush at exit, which
    would write the bytes left in the buffer into the closed pipe, report nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by something with no descriptor
        pass
