"""``posenc tasks``: length generalization on synthetic tasks with exact answers (passkey, copy, assoc).

Also runs data-parallel: ``torchrun --nproc_per_node N -m posenc tasks ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path

from .lists import comma_list
from .paths import kept_checkpoints, path_arg


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "tasks",
        help="length generalization on passkey, copy and associative recall: accuracy at L .. 16L",
        description=(
            "Train one small byte-level LM per (task, encoding, seed) on generated examples up to length L, then "
            "measure exact-match accuracy on held-out examples at L, 2L, 4L, 8L, 16L (Kazemnejad et al. 2023; "
            "Ruoss et al. 2023; Mohtashami & Jaggi 2023). Writes results.json, report.md, accuracy.png, a passkey "
            "heatmap per encoding and a checkpoint per model; rerun with the same --out to resume, or to add tasks, "
            "encodings or seeds (results.json keeps every earlier record)."
        ),
    )
    p.add_argument(
        "--out", type=path_arg, default=Path("runs/tasks"), help="output folder (default runs/tasks)"
    )
    p.add_argument("--tasks", type=str, default=None, help="comma-separated tasks (default: all)")
    p.add_argument(
        "--encodings",
        type=str,
        default=None,
        help="comma-separated names (default: all registered), each with options if wanted: "
        "alibi:max_bias=4, shaw:max_distance=32:per_head=true (a variant trains beside the plain one)",
    )
    p.add_argument("--train-len", type=int, default=None, help="training length L in bytes (default 16)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model")
    p.add_argument(
        "--seeds",
        type=str,
        default=None,
        help="a count (3: seeds 0,1,2) or a comma list (0,4,7 or 5,), as posenc compare takes (default 0)",
    )
    p.add_argument("--quick", action="store_true", help="a tiny run that takes seconds (smoke test)")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="models trained at once, each in its own process on its share of the cores (default: one per CPU "
        "core on a CPU, 1 on a GPU or under torchrun)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run, interrupted=_kept)


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted run keeps (``posenc`` prints it after Ctrl-C)."""
    return kept_checkpoints(args.out)


def _names(text: str | None, what: str, choices: list[str]) -> list[str] | None:
    """The names of ``--<what>`` (None when not given); empty or repeated entries are refused."""
    if text is None:
        return None
    return comma_list(text, f"--{what}", f"names from {', '.join(choices)}")


def _seeds(text: str | None) -> list[int] | None:
    """``--seeds`` as ``posenc compare`` reads it: ``3`` means seeds 0, 1, 2; ``0,4,7`` (any comma) lists them."""
    if text is None:
        return None
    from ..experiments.presets import parse_seeds

    return list(parse_seeds(text))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..experiments.checkpoints import check_out_dir, run_lock
    from ..experiments.dist import env_rank, resolve_device, world_size
    from ..experiments.pool import check_workers
    from ..experiments.tasks.experiment import check_request, run_tasks
    from ..experiments.tasks.report import task_table
    from ..experiments.tasks.run import TasksConfig
    from .compare import cpu_threads

    rank0 = env_rank() == 0  # (a bad RANK or WORLD_SIZE is refused here, naming it)
    if not rank0:  # under torchrun only rank 0 reports
        logging.getLogger("posenc").setLevel(logging.WARNING)
    for flag in ("train_len", "steps", "jobs"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads())
    cfg = TasksConfig.quick() if args.quick else TasksConfig()
    cfg = cfg.with_train(train_len=args.train_len, steps=args.steps)
    from .. import available
    from ..experiments.tasks import available_tasks

    tasks = _names(args.tasks, "tasks", available_tasks())
    unknown = [t for t in tasks or [] if t not in available_tasks()]
    if unknown:
        raise ValueError(
            f"--tasks: unknown task {unknown[0]!r}; choose one of {', '.join(available_tasks())}"
        )
    encodings = _names(args.encodings, "encodings", [*available(), "or name:key=value"])
    seeds = _seeds(args.seeds)
    # a bad --device, names, seeds, lengths or --jobs is refused before --out is touched; with several ranks each
    # runs the encodings on its own device in run_tasks, so here they are only built
    device = resolve_device(args.device)
    ranks = world_size()
    check_request(cfg, tasks, encodings, seeds, device if ranks == 1 else None)
    check_out_dir(args.out)
    if args.jobs is not None:
        check_workers(args.jobs, device, distributed=ranks > 1)
    with run_lock(args.out) if rank0 else contextlib.nullcontext():  # one lock per run, taken by its rank 0
        results = run_tasks(
            cfg,
            tasks=tasks,
            encodings=encodings,
            seeds=seeds,
            out=args.out,
            device=args.device,
            progress=not args.no_progress,
            jobs=args.jobs,
        )
    if rank0:
        for task in results["tasks"]:
            print(f"\n{task} (exact-match accuracy, %)\n{task_table(results, task)}")
        print(f"\nwrote {written(args.out, results['written'])}")
    return 0


def written(out: Path, names: list[str]) -> str:
    """The files a run wrote under ``out``, as printed: each by its path, the per-encoding passkey heatmaps
    counted."""
    heatmaps = [n for n in names if n.startswith("passkey_")]
    shown = ", ".join(str(out / n) for n in names if n not in heatmaps)
    return shown + (f" and {len(heatmaps)} passkey_<encoding>.png" if heatmaps else "")
