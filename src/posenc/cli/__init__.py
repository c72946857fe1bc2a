"""The ``posenc`` command. Each subcommand is a module of this package listed in :data:`SUBCOMMANDS`; it defines
``register(subparsers)``, and the parser it adds sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from ..fallback import out_of_memory
from ..validation import first_line
from . import bench, compare, generate, plot, tasks
from .output import one_line, silence_stdout

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
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # (an OSError: first) the reader of stdout left (`| head`): stop quietly
        silence_stdout()
        return 141  # 128 + SIGPIPE, the status of a writer that the pipe ended
    except (ValueError, TypeError, OSError) as err:  # expected failures: one line, no traceback
        print(one_line(f"posenc {args.command}: error: {err}"), file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not out_of_memory(err):
            raise
        first = first_line(err)
        text = f"posenc {args.command}: error: out of memory ({first}); ask for less (batch, sizes, lengths)"
        print(one_line(text), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = getattr(args, "interrupted", None)
        detail = f"; {kept(args)}" if callable(kept) else ""
        print(one_line(f"posenc {args.command}: interrupted{detail}"), file=sys.stderr)
        return 130
