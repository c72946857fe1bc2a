"""``posenc plot``: pictures of the encodings, and of what training made of them, as PNG + JSON files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .lists import comma_list
from .output import say
from .paths import path_arg

if TYPE_CHECKING:
    from ..plots.pictures import PlotContext
    from ..plots.run import TrainedRun


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "plot",
        help="draw every encoding (bias by distance, RoPE scalings, xPos decay, ...) and, with --run, what "
        "training made of them; each picture as <name>.png plus its numbers as <name>.json",
    )
    p.add_argument(
        "--out", type=path_arg, default=Path("runs/plots"), help="output folder (default runs/plots)"
    )
    p.add_argument(
        "--run", type=path_arg, default=None, help="a `posenc compare` output folder: trained pictures"
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help="draw only these pictures (repeat or comma-separate); default all that apply",
    )
    p.add_argument(
        "--dim",
        type=int,
        default=128,
        help="head_dim of the rotary and sinusoidal pictures (default 128; even, 4 to 4096)",
    )
    p.add_argument(
        "--heads",
        type=int,
        default=8,
        help="heads of the untrained bias encodings (default 8, at most 256)",
    )
    p.add_argument(
        "--length",
        type=int,
        default=None,
        help="the training length L the formula pictures are drawn for (default 256, or the run's L with --run; "
        "at least 2; the --run pictures of trained attention always use the run's own L); refused when "
        "a picture would need more than 4 GiB (bias draws heads x factor x L numbers per bias encoding) or half "
        "this machine's memory",
    )
    p.add_argument("--factor", type=int, default=16, help="curves by distance reach factor * L (default 16)")
    p.add_argument(
        "--max-distance",
        type=int,
        default=4,
        help="clipping distance for the index matrix (default 4, at most 2**20)",
    )
    p.add_argument(
        "--windows",
        type=int,
        default=1,
        help="held-out windows per length for the --run pictures (default 1; at most as many as the held-out "
        "text holds)",
    )
    p.set_defaults(func=run)


def context(args: argparse.Namespace, length: int, trained_run: TrainedRun | None = None) -> PlotContext:
    """The :class:`PlotContext` of the arguments, drawn for ``length``."""
    from ..plots.pictures import PlotContext

    return PlotContext(
        dim=args.dim,
        heads=args.heads,
        train_len=length,
        factor=args.factor,
        max_distance=args.max_distance,
        run=trained_run,
        windows=args.windows,
    )


def run(args: argparse.Namespace) -> int:
    from ..experiments.checkpoints import check_out_dir
    from ..plots.pictures import ON_TEXT, PICTURES, NotApplicable, check_sizes, draw, picture_names
    from ..plots.run import load_run

    check_out_dir(args.out)
    names = picture_names(args.run is not None)
    if args.only:
        names = comma_list(args.only, "--only", f"picture names from {', '.join(PICTURES)}")
        unknown = [n for n in names if n not in PICTURES]
        if unknown:
            raise ValueError(f"--only got {', '.join(unknown)}; choose from {', '.join(PICTURES)}")
        trained = [n for n in names if PICTURES[n][0]]
        if trained and args.run is None:
            raise ValueError(
                f"--only {', '.join(trained)} needs --run DIR (a `posenc compare` output folder)"
            )
    given = context(
        args, 256 if args.length is None else args.length
    )  # bad flags: refused before loading a run
    if args.length is not None:  # so are sizes
        check_sizes(names, given)
    trained_run = load_run(args.run) if args.run is not None else None
    if trained_run is not None and ON_TEXT.intersection(names):
        trained_run.held_out_text()  # text that is not the run's is refused before anything is drawn
    length = args.length
    if length is None:
        length = trained_run.train_len if trained_run is not None else 256
    ctx = context(args, length, trained_run)
    check_sizes(names, ctx)
    for name in names:
        start = time.perf_counter()
        try:
            picture = draw(name, ctx)
        except NotApplicable as err:
            if args.only:  # asked for by name: an error
                raise
            say(f"skipped {name}: {err}")  # drawing all that apply: this one does not
            continue
        paths = picture.save(args.out, name)
        say(f"{paths[0]}  (+ .json, {time.perf_counter() - start:.1f} s)")
    return 0
