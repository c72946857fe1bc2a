"""The ``posenc`` command. Each subcommand is a module of this package listed in :data:`SUBCOMMANDS`; it defines
``register(subparsers)``, and the parser it adds sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from ..fallback import out_of_memory
from ..validation import first_line
from . import bench, compare, generate, plot, tasks
from .output import one_line, silence_stdout
from .stops import exit_status, leave_process_group, peer_stopped, stop_signals

#: The subcommands, in ``posenc --help`` order.
SUBCOMMANDS = (bench, compare, generate, plot, tasks)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the command's usage block pointed to, not printed), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="posenc", description="Positional encodings: pictures, comparisons, benchmarks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    with stop_signals():
        try:
            return _run(args)
        finally:
            leave_process_group()


def _run(args: argparse.Namespace) -> int:
    """The subcommand, every expected failure one line on stderr and a non-zero status."""
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # (an OSError: first) the reader of stdout left (`| head`): stop quietly
        silence_stdout()
        return 141  # 128 + SIGPIPE, the status of a writer that the pipe ended
    except (ValueError, TypeError, OSError) as err:  # expected failures: one line, no traceback
        print(one_line(f"{_who(args)}: error: {err}"), file=sys.stderr)
        return 2
    except RuntimeError as err:
        if peer_stopped(err):
            text = (
                f"{_who(args)}: error: another process of this torchrun run stopped ({first_line(err)}); this one "
                "stops too (the other processes' messages say why)"
            )
            print(one_line(text), file=sys.stderr)
            return 2
        if not out_of_memory(err):
            raise
        first = first_line(err)
        text = f"{_who(args)}: error: out of memory ({first}); ask for less (batch, sizes, lengths)"
        print(one_line(text), file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        kept = getattr(args, "interrupted", None)
        detail = f"; {kept(args)}" if callable(kept) else ""
        word = "interrupted" if exit_status(err) == 130 else "terminated"
        print(one_line(f"{_who(args)}: {word}{detail}"), file=sys.stderr)
        return exit_status(err)


def _who(args: argparse.Namespace) -> str:
    """``posenc <command>``, and under torchrun ``[rank N]``: each process of a run says what it met."""
    size, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK")
    tag = f" [rank {rank}]" if size not in ("", "0", "1") and rank is not None else ""
    return f"posenc {args.command}{tag}"
