"""``posenc bench``: run the benchmark suites, print a table, optionally write ``bench.json`` and ``bench.md``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .output import say
from .paths import path_arg


def run_suite(
    name: str,
    suite: Callable[[bool, str], Iterable[dict[str, Any]]],
    quick: bool,
    device: str,
    on_row: Callable[[dict[str, Any]], object] | None = None,
) -> list[dict[str, Any]]:
    """The suite's rows. A suite that raises keeps the rows it gave so far and ends with one row of status
    "error"; the next suite runs. ``on_row`` gets each row as it arrives (the CLI rewrites the report there)."""
    from ..bench.runner import error_note

    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    try:
        for row in suite(quick, device):
            add(row)
    except Exception as err:  # noqa: BLE001 - reported in the table, the other suites still run
        logging.getLogger(__name__).warning("bench: suite %s failed: %s", name, err)
        status, _, note = error_note(err).partition(": ")
        add({"suite": name, "status": status, "note": note})
    return rows


def run(args: argparse.Namespace) -> int:
    """Run the suites; with ``--out``, the report is rewritten as rows arrive (atomically), so a run stopped by
    Ctrl-C or a ``timeout`` leaves every finished group on disk."""
    from ..bench import SUITES
    from ..bench.runner import environment, markdown_report, write_report
    from ..experiments.checkpoints import check_out_dir
    from ..experiments.dist import resolve_device

    if args.out is not None:
        check_out_dir(args.out)  # before the suites run, not after
    choices = ", ".join(SUITES.names())
    given = [n.strip() for s in args.suite or [] for n in s.split(",")]  # repeated flags and commas alike
    if any(not n for n in given):
        raise ValueError(
            f"--suite got an empty name in {','.join(args.suite)!r}; it takes names from {choices}"
        )
    unknown = [n for n in given if n not in SUITES.names()]
    if unknown:
        raise ValueError(f"--suite: unknown suite {unknown[0]!r}; choose one of {choices}")
    names = given or SUITES.names()
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # a second run of a suite replaced the first one's rows in the report and doubled the time
        raise ValueError(f"--suite {', '.join(twice)} given more than once; name each suite once")
    suites = {n: SUITES.get(n) for n in names}
    device = str(resolve_device(args.device or "auto"))  # a name torch knows, with data (not meta)
    report: dict[str, Any] = {"environment": environment(device, args.quick), "suites": {}}

    for name in names:
        rows: list[dict[str, Any]] = []
        report["suites"][name] = rows

        def add(row: dict[str, Any], rows: list[dict[str, Any]] = rows) -> None:
            rows.append(row)
            if args.out is not None:
                write_report(report, args.out)
                args.written = args.out  # what Ctrl-C keeps (see _kept)

        run_suite(name, suites[name], args.quick, device, on_row=add)
    say(markdown_report(report))
    if args.out is not None:
        say(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted bench keeps (``posenc`` prints it after Ctrl-C)."""
    out = getattr(args, "written", None)
    if out is None:
        return "no rows written" + ("" if args.out is not None else " (no --out)")
    return f"the rows finished so far are in {out / 'bench.json'} and {out / 'bench.md'}"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time posenc against peers and a baseline measured in the same run",
        description="Run benchmark suites (default: all). Each figure is a median over repeats and a ratio to a "
        "baseline timed in the same rounds (for RoPE, a copy of q and k: the memory-bandwidth floor).",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (under a minute)")
    parser.add_argument(
        "--out", type=path_arg, default=None, metavar="DIR", help="write DIR/bench.json and DIR/bench.md"
    )
    parser.add_argument(
        "--suite",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this suite (repeatable, or comma-separated: --suite rope,decode)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.set_defaults(func=run, interrupted=_kept)
