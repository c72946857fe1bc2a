"""``posenc compare``: train one small LM per encoding at length L, evaluate perplexity at L .. 16L.

Also runs data-parallel: ``torchrun --nproc_per_node N -m posenc compare ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "compare",
        help="train short, test long: perplexity of every encoding at L, 2L, 4L, 8L, 16L",
        description=(
            "Train one small byte-level LM per encoding on the same data and budget at length L, then evaluate "
            "perplexity on held-out text at L..16L (Press et al. 2022). Writes results.json, report.md, "
            "perplexity.png and a checkpoint per encoding; rerun with the same --out to resume."
        ),
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)"
    )
    p.add_argument(
        "--data", type=str, default=None, help="a text file or folder (default: the Python stdlib)"
    )
    p.add_argument(
        "--encodings", type=str, default=None, help="comma-separated names (default: all registered)"
    )
    p.add_argument("--train-len", type=int, default=None, help="training length L in bytes (default 128)")
    p.add_argument("--steps", type=int, default=None, help="training steps per encoding (default 400)")
    p.add_argument("--seed", type=int, default=None, help="seed for weights and batches (default 0)")
    p.add_argument("--quick", action="store_true", help="a tiny run that takes seconds (smoke test)")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run, interrupted=_kept)


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted comparison keeps (``posenc`` prints it after Ctrl-C)."""
    return (
        f"the checkpoints of finished encodings are kept in {args.out / 'checkpoints'}; "
        "rerun the same command to resume"
    )


def _threads() -> int:
    """CPU threads per process: the cores this process may use, shared among torchrun's local ranks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..experiments.checkpoints import check_out_dir, run_lock
    from ..experiments.compare import CompareConfig, run_compare
    from ..experiments.dist import resolve_device

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        logging.getLogger("posenc").setLevel(logging.WARNING)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(_threads())
    cfg = CompareConfig.quick() if args.quick else CompareConfig()
    cfg = cfg.with_train(train_len=args.train_len, steps=args.steps, seed=args.seed)
    if args.data is not None:
        from dataclasses import replace

        cfg = replace(cfg, data=args.data)
    names = None if args.encodings is None else [n.strip() for n in args.encodings.split(",") if n.strip()]
    check_out_dir(args.out)
    resolve_device(args.device)  # a bad --device is refused before the folder is touched
    main_rank = int(os.environ.get("RANK", "0")) == 0  # one lock per run, taken by its rank 0
    with run_lock(args.out) if main_rank else contextlib.nullcontext():
        results = run_compare(
            cfg, encodings=names, out=args.out, device=args.device, progress=not args.no_progress
        )
    if int(os.environ.get("RANK", "0")) == 0:
        from ..experiments.report import table

        print(table(results))
        print(f"\nwrote {args.out / 'results.json'}, {args.out / 'report.md'}, {args.out / 'perplexity.png'}")
    return 0
