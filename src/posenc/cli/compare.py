"""``posenc compare``: train one small LM per encoding at length L, evaluate perplexity at L .. 16L.

Also runs data-parallel: ``torchrun --nproc_per_node N -m posenc compare ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .lists import comma_list
from .paths import kept_checkpoints, path_arg

if TYPE_CHECKING:
    from ..experiments.presets import CompareConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "compare",
        help="train short, test long: perplexity of every encoding at L, 2L, 4L, 8L, 16L",
        description=(
            "Train one small byte-level LM per encoding on the same data and budget at length L, then evaluate "
            "perplexity on held-out text at L..16L (Press et al. 2022), per seed. Writes results.json, report.md, "
            "perplexity.png, curves.png and a checkpoint per (encoding, seed); rerun with the same --out to "
            "resume, to add seeds or to add encodings (results.json keeps every earlier record)."
        ),
    )
    p.add_argument(
        "--out", type=path_arg, default=Path("runs/compare"), help="output folder (default runs/compare)"
    )
    p.add_argument(
        "--data", type=str, default=None, help="a text file or folder (default: the Python stdlib)"
    )
    p.add_argument(
        "--encodings",
        type=str,
        default=None,
        help="comma-separated names (default: all registered), each with options if wanted: "
        "alibi:max_bias=4, shaw:max_distance=32:per_head=true (a variant trains beside the plain one)",
    )
    p.add_argument(
        "--preset",
        type=str,
        default=None,
        help="demo (default: ~10 min on 2 CPU cores), cpu-long (3.5x the steps, ~30 min), gpu (larger model, "
        "3 seeds, compiled); the flags below override its values",
    )
    p.add_argument("--seeds", type=str, default=None, help="a count (3 = seeds 0,1,2) or a list (0,4,7)")
    p.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds N,)")
    p.add_argument("--train-len", type=int, default=None, help="training length L in bytes (default 128)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model")
    p.add_argument("--dim", type=int, default=None, help="model width")
    p.add_argument("--depth", type=int, default=None, help="layers")
    p.add_argument("--heads", type=int, default=None, help="attention heads (must divide --dim)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (global, over all ranks)")
    p.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate")
    p.add_argument(
        "--warmup", type=float, default=None, help="fraction of the steps spent warming up, in [0, 1)"
    )
    p.add_argument(
        "--eval-bytes",
        type=int,
        default=None,
        help="held-out bytes scored at every length, in whole blocks of 16L spread evenly over the held-out text "
        "(default: the preset's, 16 blocks in demo)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training step (pays on long runs; default: the preset's choice)",
    )
    p.add_argument(
        "--precision",
        type=str,
        default=None,
        help="bf16: mixed precision (bfloat16 matrix products under autocast, float32 weights and optimizer); "
        "auto (the presets' choice): bf16 where the device computes in bfloat16 natively, else fp32",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: OMP_NUM_THREADS when set, which torchrun sets to 1 for several processes a "
        "machine unless you set it; else every core this process may use, shared among torchrun's processes on "
        "this machine); on a busy machine 1 can be several times faster. Another count may change the last bits "
        "of the numbers",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="models trained at once, each in its own process on its share of the cores (default: one per CPU "
        "core on a CPU, 1 with --threads, on a GPU or under torchrun)",
    )
    p.add_argument("--quick", action="store_true", help="a tiny run that takes seconds (smoke test)")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run, interrupted=_kept)


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted comparison keeps (``posenc`` prints it after Ctrl-C)."""
    return kept_checkpoints(args.out)


#: The most CPU threads ``--threads`` takes (torch.set_num_threads(100000) crashed the process).
MAX_THREADS = 1024


def cpu_threads() -> int:
    """CPU threads per process: the cores this process may use, shared among torchrun's local ranks."""
    from ..experiments.dist import local_world_size
    from ..experiments.pool import available_cores

    return max(1, available_cores() // local_world_size())


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The preset (or ``--quick``) with every given flag applied."""
    from ..experiments.presets import parse_seeds, preset
    from ..experiments.train import MAX_SEED
    from ..validation import check_seed

    if args.seeds is not None and args.seed is not None:
        raise ValueError("give --seeds or --seed, not both")
    if args.data is not None and not args.data.strip():
        raise ValueError("--data is an empty path (it would read the current folder); name a file or folder")
    if args.quick and args.preset is not None:
        raise ValueError(f"--quick is a preset of its own; give --quick or --preset {args.preset}, not both")
    cfg = preset("quick" if args.quick else "demo" if args.preset is None else args.preset)
    _check_train_flags(args, cfg)
    cfg = cfg.with_train(
        train_len=args.train_len,
        steps=args.steps,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_fraction=args.warmup,
        compile=args.compile,
        precision=args.precision,
    )
    changes: dict[str, Any] = {}
    if args.seeds is not None:
        changes["seeds"] = parse_seeds(args.seeds)
    elif args.seed is not None:
        changes["seeds"] = (check_seed("--seed", args.seed, low=0, high=MAX_SEED - 1),)
    if args.data is not None:
        changes["data"] = args.data
    if args.eval_bytes is not None:
        changes["eval_bytes"] = args.eval_bytes
    return replace(cfg, **changes) if changes else cfg


def _check_train_flags(args: argparse.Namespace, cfg: CompareConfig) -> None:
    """The training flags given, checked under their own names (``TrainConfig`` would name its fields:
    "batch_size must be ...", "dim (32) must be divisible by heads (3)")."""
    from ..experiments.train import PRECISIONS
    from ..validation import check_float, check_int

    for field in ("train_len", "steps", "dim", "depth", "heads", "batch_size"):
        if getattr(args, field) is not None:
            check_int(f"--{field.replace('_', '-')}", getattr(args, field), at_least=1)
    if args.lr is not None:
        check_float("--lr", args.lr, above=0)
    if args.warmup is not None:
        check_float("--warmup", args.warmup, at_least=0, below=1)
    if args.precision is not None and args.precision not in PRECISIONS:
        raise ValueError(f"--precision {args.precision!r}: choose one of {', '.join(PRECISIONS)}")
    dim = cfg.train.dim if args.dim is None else args.dim
    heads = cfg.train.heads if args.heads is None else args.heads
    if dim % heads:
        given = " and ".join(
            f"--{f} {getattr(args, f)}" for f in ("dim", "heads") if getattr(args, f) is not None
        )
        raise ValueError(
            f"--heads must divide --dim; got dim {dim}, heads {heads} ({given}, the rest from the preset)"
        )


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import available
    from ..experiments.checkpoints import check_out_dir, run_lock
    from ..experiments.compare import check_buildable, check_encodings, run_compare
    from ..experiments.dist import check_batch_split, env_rank, resolve_device, world_size
    from ..experiments.evaluate import eval_lengths, eval_passes
    from ..experiments.pool import check_workers
    from ..validation import check_int

    main_rank = env_rank() == 0  # (a bad RANK or WORLD_SIZE is refused here, naming it)
    if not main_rank:  # under torchrun only rank 0 reports
        logging.getLogger("posenc").setLevel(logging.WARNING)
    jobs = args.jobs
    if jobs is not None:
        check_int("--jobs", jobs, at_least=1)
    if args.threads is not None:
        if not 1 <= args.threads <= MAX_THREADS:  # (torch.set_num_threads(100000) segfaults)
            raise ValueError(f"--threads must be between 1 and {MAX_THREADS}, got {args.threads}")
        if jobs is not None and jobs > 1:
            raise ValueError(
                f"--threads sets the threads of one process and --jobs {jobs} gives each model cores / {jobs}; "
                "give one of them"
            )
        jobs = 1
        torch.set_num_threads(args.threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads())
    cfg = config_from_args(args)
    given = args.batch_size is not None
    check_batch_split(
        cfg.train.batch_size, "--batch-size" if given else "the preset's batch size (--batch-size)"
    )
    names = None
    if args.encodings is not None:
        names = comma_list(
            args.encodings, "--encodings", f"names from {', '.join(available())}, or name:key=value"
        )
    check_out_dir(args.out)
    device = resolve_device(args.device)  # a bad --device is refused before the folder is touched
    if names is not None:  # so are unknown encodings and options they cannot run with
        names = check_encodings(names, "--encodings")
        # several ranks: each checks on its own device in run_compare
        lengths = eval_lengths(cfg.train.train_len, cfg.multiples)
        check_buildable(names, cfg.train, device if world_size() == 1 else None, passes=eval_passes(lengths))
    if jobs is not None:  # so is a bad --jobs
        check_workers(jobs, device, distributed=world_size() > 1)
    with (
        run_lock(args.out) if main_rank else contextlib.nullcontext()
    ):  # one lock per run, taken by its rank 0
        results = run_compare(
            cfg,
            encodings=names,
            out=args.out,
            device=args.device,
            progress=not args.no_progress,
            jobs=jobs,
        )
    if main_rank:
        from ..experiments.report import table

        print(table(results))
        figures = f" and figures under {args.out}" if _figures_drawn() else ""
        print(f"\nwrote {args.out / 'results.json'} and {args.out / 'report.md'}{figures}")
    return 0


def _figures_drawn() -> bool:
    """Whether ``write_outputs`` could draw the figures: it imports the same module and, when the import fails
    (matplotlib missing or broken), warns and draws none."""
    try:
        import posenc.plots.compare  # noqa: F401 - already imported when the figures were drawn
    except ImportError:
        return False
    return True
