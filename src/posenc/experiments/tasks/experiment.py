"""The whole ``posenc tasks`` run: every (task, encoding, seed), the results averaged over seeds (merged with the
records of earlier runs in the folder: :mod:`posenc.experiments.tasks.results`), the files."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ... import available
from ...validation import check_seed
from ..checkpoints import check_out_dir, json_safe, save_figure, write_text
from ..compare import check_buildable, check_encodings
from ..dist import check_batch_split, rank_device, resolve_device, setup_world, versions
from ..evaluate import eval_passes, rope_extensions
from ..pool import map_jobs, model_threads, resolve_workers, using_threads
from ..specs import file_stem
from ..train import MAX_SEED
from .generators import available_tasks, get_task
from .results import TaskRuns, aggregate, merge_task_runs, old_runs, record
from .run import ModelRun, TaskContext, TasksConfig, check_config, checked_checkpoint, run_one

log = logging.getLogger(__name__)


def check_tasks(names: list[str]) -> list[str]:
    """Validate a user's list of tasks: known, no repeats, not empty."""
    if not names:
        raise ValueError(f"no tasks given; choose from {', '.join(available_tasks())}")
    for name in names:
        get_task(name)
    if len(set(names)) != len(names):
        raise ValueError(f"tasks listed twice: {names}")
    return list(names)


def check_seeds(seeds: list[int], name: str = "seeds") -> list[int]:
    """Validate a user's list of seeds: not empty, each in ``[0, 2**32)`` (what training takes), no repeats."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{name} must be distinct non-negative integers, got {seeds}")
    return [check_seed(name, s, low=0, high=MAX_SEED - 1) for s in seeds]


def check_request(
    cfg: TasksConfig,
    tasks: list[str] | None,
    encodings: list[str] | None,
    seeds: list[int] | None,
    device: torch.device | str | None = "cpu",
) -> tuple[list[str], list[str], list[int]]:
    """The tasks, encodings and seeds of a run (defaults filled in), validated, every evaluation length checked
    against every task and every encoding run once at L on ``device`` (:func:`check_buildable`); touches no file
    (``posenc tasks`` calls it before taking its run lock)."""
    task_names = check_tasks(available_tasks() if tasks is None else tasks)
    names = check_encodings(available() if encodings is None else encodings, "--encodings")
    check_buildable(names, cfg.train, device, passes=eval_passes(cfg.lengths, cfg.batch_tokens))
    seed_list = check_seeds([0] if seeds is None else seeds)
    check_batch_split(cfg.train.batch_size, "the batch size", settable=False)  # not a flag of posenc tasks
    for name in task_names:
        for length in cfg.lengths:
            try:
                get_task(name).check_length(length)
            except ValueError as err:
                raise ValueError(
                    f"{err}: {name} is trained up to L = {cfg.train.train_len} (--train-len) and evaluated at "
                    f"{', '.join(map(str, cfg.lengths))}; choose another --train-len or leave {name} out of --tasks"
                ) from None
    return task_names, names, seed_list


def run_tasks(
    cfg: TasksConfig | None = None,
    *,
    tasks: list[str] | None = None,
    encodings: list[str] | None = None,
    seeds: list[int] | None = None,
    out: str | Path = "runs/tasks",
    device: str | torch.device = "auto",
    progress: bool = True,
    jobs: int | None = 1,
) -> dict[str, Any]:
    """Run (or resume) every (task, encoding, seed) and write the files under ``out`` (rank 0).

    Args:
        cfg: configuration; default :class:`TasksConfig`.
        tasks: default every task (:func:`available_tasks`).
        encodings: default every registered encoding (:func:`posenc.available`).
        seeds: default ``[0]``.
        out: output folder. Records of (task, encoding, seed) already in its ``results.json`` are kept; those
            this run trains or loads again replace theirs.
        device: "auto", "cpu", "cuda", ...; under torchrun each rank uses ``cuda:<local_rank>``.
        progress: tqdm bars on stderr.
        jobs: models trained at once in worker processes, each with its share of the cores (see
            :mod:`posenc.experiments.pool`); None: one per CPU core, 1 on an accelerator or under torchrun (the
            CLI's default). Workers are fresh interpreters: an encoding registered at run time is known there
            only if registering it is part of importing a module (not under ``if __name__ == "__main__"``).

    Returns:
        The contents of ``results.json`` (see :func:`posenc.experiments.tasks.results.aggregate`), plus
        ``written``: the names of the files written under ``out`` (``results.json``, ``report.md`` and the figures
        drawn: none without matplotlib; empty on ranks other than 0), which ``results.json`` itself does not hold.

    Raises:
        ValueError: unknown tasks or encodings, bad seeds, bad ``jobs``, a length a task cannot take, an ``out``
            that cannot be a folder, ``out`` holding a run with another configuration or a damaged
            ``results.json``.
    """
    start = time.perf_counter()
    # before any work
    check_out_dir(Path(out), files=("config.json", "results.json", "report.md", "accuracy.png"))
    cfg = TasksConfig() if cfg is None else cfg
    base = resolve_device(device)
    world = setup_world(base)
    ctx = TaskContext(cfg, Path(out), rank_device(base, world), world, progress)
    task_names, names, seed_list = check_request(cfg, tasks, encodings, seeds, ctx.device)
    # every rank runs the same models on the same data, or none does (before any collective of the training)
    world.agree(configuration=cfg.fingerprint(), tasks=task_names, encodings=names, seeds=seed_list)
    check_out_dir(Path(out), files=tuple(passkey_picture(n) for n in names))
    keys = [(t, enc, seed) for t in task_names for enc in names for seed in seed_list]
    workers = resolve_workers(jobs, ctx.device, len(keys), distributed=world.distributed)
    # a damaged or foreign results.json is refused now, not after the training, and before config.json is written
    earlier = old_runs(ctx.out, cfg.fingerprint(), cfg.lengths)
    check_config(ctx, keys)  # a refused run writes nothing
    # a folder that cannot be made (a link to nothing) is refused now, not after training
    for task in task_names:
        check_out_dir(ctx.checkpoint(task, names[0], 0).parent, f"the checkpoint folder of {task}")
    for task, enc, seed in keys:  # so is a checkpoint of another run or with a damaged field, whichever it is
        checked_checkpoint(get_task(task), enc, seed, ctx)
    threads = model_threads(jobs, ctx.device, distributed=world.distributed)  # (not a function of len(keys))
    if workers > 1 and len(keys) > 1:
        calls = [(t, enc, seed, cfg, str(ctx.out), str(ctx.device)) for t, enc, seed in keys]
        done = map_jobs(
            _pooled_run, calls, workers=workers, threads=threads, progress=progress, desc="tasks x encodings"
        )
        model_runs = dict(zip(keys, done, strict=True))
    else:
        with using_threads(threads):
            model_runs = {key: run_one(get_task(key[0]), key[1], key[2], ctx) for key in keys}
    new: TaskRuns = {}
    for (task, enc, seed), run in model_runs.items():
        new.setdefault(task, {}).setdefault(enc, {})[str(seed)] = record(run)
    meta = {
        "train_len": cfg.train.train_len,
        "eval_lengths": cfg.lengths,
        "depths": list(cfg.depths),
        "rope_extensions": sorted(rope_extensions()),
        "this_run": {"tasks": task_names, "encodings": names, "seeds": seed_list},
        "resumed": [f"{t}/{enc}/s{seed}" for (t, enc, seed), run in model_runs.items() if run.resumed],
        "config": cfg.fingerprint(),
        "versions": versions(ctx.device, world),
        "jobs": min(workers, len(model_runs)),
        "threads_per_model": threads,
        "wall_seconds": time.perf_counter() - start,
    }
    results = aggregate(merge_task_runs(earlier, new), meta)
    written = ["results.json", "report.md", *write_outputs(results, ctx.out)] if world.is_main else []
    world.barrier()
    return {**results, "written": written}


def _pooled_run(task: str, encoding: str, seed: int, cfg: TasksConfig, out: str, device: str) -> ModelRun:
    """:func:`run_one` in a worker process (a context of its own; no progress bars, no process group)."""
    return run_one(get_task(task), encoding, seed, TaskContext(cfg, Path(out), torch.device(device)))


def passkey_picture(encoding: str) -> str:
    """The file name of ``encoding``'s passkey-depth picture."""
    return f"passkey_{file_stem(encoding).replace('+', '_')}.png"


def write_outputs(results: dict[str, Any], out: Path) -> list[str]:
    """``results.json``, ``report.md``, ``accuracy.png`` and ``passkey_<row>.png`` under ``out``; returns the
    names of the figures written (none without matplotlib)."""
    from .report import write_report

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(json_safe(results), indent=2) + "\n")
    figures: list[str] = []
    try:
        from ...plots.tasks import accuracy_figure, passkey_figure

        save_figure(accuracy_figure(results), out / "accuracy.png")
        figures.append("accuracy.png")
        for row in results["passkey_depth"]:
            name = passkey_picture(row)
            save_figure(passkey_figure(results, row), out / name)
            figures.append(name)
    except ImportError as err:  # matplotlib is the optional "plots" extra
        log.warning("no figures: %s (pip install 'posenc[plots]')", err)
    write_text(out / "report.md", write_report(results, figures=figures))
    return figures
