"""The whole ``posenc tasks`` run: every (task, encoding, seed), the results averaged over seeds, the files."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ... import available
from ..checkpoints import json_safe, save_figure, write_text
from ..compare import check_encodings
from ..dist import rank_device, resolve_device, setup_world, versions
from ..evaluate import rope_extensions
from ..pool import map_jobs, resolve_workers, threads_per_model
from .generators import available_tasks, get_task
from .run import ModelRun, TaskContext, TasksConfig, check_config, run_one

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


def check_seeds(seeds: list[int]) -> list[int]:
    """Validate a user's list of seeds: not empty, non-negative, no repeats."""
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    return list(seeds)


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values; None if any is None (a length the model cannot take)."""
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None) / len(values)


def summarize(runs: dict[int, ModelRun], lengths: list[int]) -> dict[str, Any]:
    """Per row: accuracy per length (mean over depth groups and seeds), per seed, and per length and depth."""
    rows = list(next(iter(runs.values())).cells)
    out: dict[str, Any] = {"accuracy": {}, "by_seed": {}, "by_depth": {}}
    for row in rows:
        per_seed = {
            str(seed): {str(lv): _mean(list(run.cells[row][str(lv)].values())) for lv in lengths}
            for seed, run in runs.items()
        }
        out["by_seed"][row] = per_seed
        out["accuracy"][row] = {str(lv): _mean([s[str(lv)] for s in per_seed.values()]) for lv in lengths}
        groups = list(next(iter(runs.values())).cells[row][str(lengths[0])])
        out["by_depth"][row] = {
            str(lv): {g: _mean([run.cells[row][str(lv)][g] for run in runs.values()]) for g in groups}
            for lv in lengths
        }
    return out


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
        out: output folder.
        device: "auto", "cpu", "cuda", ...; under torchrun each rank uses ``cuda:<local_rank>``.
        progress: tqdm bars on stderr.
        jobs: models trained at once in worker processes, each with its share of the cores (see
            :mod:`posenc.experiments.pool`); None: one per CPU core, 1 on an accelerator or under torchrun (the
            CLI's default). Workers are fresh interpreters: an encoding registered at run time is known there
            only if registering it is part of importing a module (not under ``if __name__ == "__main__"``).

    Returns:
        The contents of ``results.json``.

    Raises:
        ValueError: unknown tasks or encodings, bad seeds, bad ``jobs``, a length a task cannot take, or ``out``
            holding a run with another configuration.
    """
    start = time.perf_counter()
    cfg = TasksConfig() if cfg is None else cfg
    task_names = check_tasks(available_tasks() if tasks is None else tasks)
    names = check_encodings(available() if encodings is None else encodings)
    seed_list = check_seeds([0] if seeds is None else seeds)
    for name in task_names:
        for length in cfg.lengths:
            get_task(name).check_length(length)
    base = resolve_device(device)
    world = setup_world(base)
    ctx = TaskContext(cfg, Path(out), rank_device(base, world), world, progress)
    keys = [(t, enc, seed) for t in task_names for enc in names for seed in seed_list]
    workers = resolve_workers(jobs, ctx.device, len(keys), distributed=world.distributed)
    check_config(ctx)
    if workers > 1:
        calls = [(t, enc, seed, cfg, str(ctx.out), str(ctx.device)) for t, enc, seed in keys]
        done = map_jobs(_pooled_run, calls, workers=workers, progress=progress, desc="tasks x encodings")
        model_runs = dict(zip(keys, done, strict=True))
    else:
        model_runs = {key: run_one(get_task(key[0]), key[1], key[2], ctx) for key in keys}
    results: dict[str, Any] = {
        "train_len": cfg.train.train_len,
        "eval_lengths": cfg.lengths,
        "tasks": task_names,
        "encodings": names,
        "seeds": seed_list,
        "depths": list(cfg.depths),
        "rope_extensions": sorted(rope_extensions()),
        "answer_length": {
            t: {str(lv): get_task(t).answer_length(lv) for lv in cfg.lengths} for t in task_names
        },
        "accuracy": {},
        "accuracy_by_seed": {},
        "passkey_depth": {},
        "final_train_loss": {},
        "train_seconds": {},
        "eval_seconds": {},
        "resumed": [],
    }
    for task_name in task_names:
        acc: dict[str, Any] = {}
        for enc in names:
            runs = {seed: model_runs[(task_name, enc, seed)] for seed in seed_list}
            summary = summarize(runs, cfg.lengths)
            acc.update(summary["accuracy"])
            results["accuracy_by_seed"].setdefault(task_name, {}).update(summary["by_seed"])
            if task_name == "passkey":
                results["passkey_depth"].update(summary["by_depth"])
            tail = [sum(r.losses[-10:]) / len(r.losses[-10:]) for r in runs.values()]
            results["final_train_loss"].setdefault(task_name, {})[enc] = sum(tail) / len(tail)
            results["train_seconds"].setdefault(task_name, {})[enc] = sum(
                r.train_seconds for r in runs.values()
            )
            results["eval_seconds"].setdefault(task_name, {})[enc] = sum(
                r.eval_seconds for r in runs.values()
            )
            results["resumed"] += [f"{task_name}/{enc}/s{s}" for s, r in runs.items() if r.resumed]
        results["accuracy"][task_name] = acc
    results |= {
        "config": cfg.fingerprint(),
        "versions": versions(ctx.device, world),
        "jobs": workers,
        "threads_per_model": threads_per_model(workers),
        "wall_seconds": time.perf_counter() - start,
    }
    if world.is_main:
        write_outputs(results, ctx.out)
    world.barrier()
    return results


def _pooled_run(task: str, encoding: str, seed: int, cfg: TasksConfig, out: str, device: str) -> ModelRun:
    """:func:`run_one` in a worker process (a context of its own; no progress bars, no process group)."""
    return run_one(get_task(task), encoding, seed, TaskContext(cfg, Path(out), torch.device(device)))


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
            name = f"passkey_{row.replace('+', '_')}.png"
            save_figure(passkey_figure(results, row), out / name)
            figures.append(name)
    except ImportError as err:  # matplotlib is the optional "plots" extra
        log.warning("no figures: %s (pip install 'posenc[plots]')", err)
    write_text(out / "report.md", write_report(results, figures=figures))
    return figures
