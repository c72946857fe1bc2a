"""``posenc bench``: run the benchmark suites, print a table, optionally write ``bench.json`` and ``bench.md``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_suite(
    name: str, suite: Callable[[bool, str], list[dict[str, Any]]], quick: bool, device: str
) -> list[dict[str, Any]]:
    """The suite's rows; a suite that raises becomes one row with status "error", and the next suite runs."""
    from ..bench.runner import error_note

    try:
        return suite(quick, device)
    except Exception as err:  # noqa: BLE001 - reported in the table, the other suites still run
        logging.getLogger(__name__).warning("bench: suite %s failed: %s", name, err)
        status, _, note = error_note(err).partition(": ")
        return [{"suite": name, "status": status, "note": note}]


def run(args: argparse.Namespace) -> int:
    from ..bench import SUITES
    from ..bench.runner import environment, markdown_report, write_report
    from ..experiments.checkpoints import check_out_dir
    from ..experiments.dist import resolve_device

    if args.out is not None:
        check_out_dir(args.out)  # before the suites run, not after
    names = [SUITES.check(n, "suite") for n in args.suite] if args.suite else SUITES.names()
    suites = {n: SUITES.get(n) for n in names}
    device = str(resolve_device(args.device or "auto"))  # a name torch knows, with data (not meta)
    report = {
        "environment": environment(device, args.quick),
        "suites": {name: run_suite(name, suites[name], args.quick, device) for name in names},
    }
    print(markdown_report(report))
    if args.out is not None:
        json_path, md_path = write_report(report, args.out)
        print(f"wrote {json_path} and {md_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time posenc against peers and a baseline measured in the same run",
        description="Run benchmark suites (default: all). Each figure is a median over repeats and a ratio to a "
        "baseline timed in the same rounds (for RoPE, a copy of q and k: the memory-bandwidth floor).",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (under a minute)")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="write DIR/bench.json and DIR/bench.md"
    )
    parser.add_argument(
        "--suite", action="append", default=None, metavar="NAME", help="run only this suite (repeatable)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.set_defaults(func=run)
