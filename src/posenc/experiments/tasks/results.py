"""``results.json`` of ``posenc tasks``: one record per (task, encoding, seed), merged across reruns, and the
accuracies averaged over seeds that the tables, the figures and the report show.

A record (``results["runs"][task][encoding][str(seed)]``) holds what one trained model measured: ``cells``
(row -> length -> depth group -> accuracy), ``final_train_loss`` (mean of the last 10 steps), ``train_seconds``
and ``eval_seconds``. Everything else in ``results.json`` is derived from the records by :func:`aggregate`, so a
rerun that trains only some tasks, encodings or seeds merges its records into the old ones (:func:`merge_task_runs`,
the merge of ``posenc compare``'s :func:`~posenc.experiments.results.merge_runs` per task) and the summary covers
all of them: results.json never shrinks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoints import check_same_kind, flag_differences, read_json_object, refusal
from ..records import depth_groups, task_record_problem
from ..results import merge_runs, num, ordered_encodings
from .generators import available_tasks, get_task
from .run import ModelRun, group_key

Record = dict[str, Any]
#: task -> encoding -> str(seed) -> record.
TaskRuns = dict[str, dict[str, dict[str, Record]]]


def record(run: ModelRun) -> Record:
    """The record of one trained model (see the module docstring)."""
    tail = run.losses[-10:]
    return {
        "final_train_loss": sum(tail) / len(tail) if tail else None,
        "train_seconds": run.train_seconds,
        "eval_seconds": run.eval_seconds,
        "cells": run.cells,
    }


def merge_task_runs(old: TaskRuns, new: TaskRuns) -> TaskRuns:
    """``old`` updated with ``new``: a (task, encoding, seed) in both takes the new record, nothing in ``old`` is
    dropped."""
    return {t: merge_runs(old.get(t, {}), new.get(t, {})) for t in ordered_tasks({**old, **new})}


def ordered_tasks(runs: TaskRuns) -> list[str]:
    """The tasks of ``runs`` in :func:`available_tasks` order (unknown names last, sorted)."""
    known = [t for t in available_tasks() if t in runs]
    return known + sorted(set(runs) - set(known))


def old_runs(out: Path, fp: dict[str, Any], lengths: list[int]) -> TaskRuns:
    """The records of ``out/results.json`` ({} when there is none, or it predates records), refused unless
    written by the configuration ``fp`` (the file's own ``config``: this holds also when ``config.json`` was
    deleted) and readable to the last cell (``lengths``: the evaluation lengths every row holds; every seed of a
    task with the same depth groups) and number (:mod:`posenc.experiments.records`).

    Raises:
        ValueError: the file is damaged, of another configuration or of the other command, or its ``runs`` is
            not task -> encoding -> seed -> record; the message names the file (and what differs).
    """
    path = Path(out) / "results.json"
    if not path.is_file():
        return {}
    results = read_json_object(path, "results file")
    if isinstance(results.get("config"), dict):
        check_same_kind(Path(out), results["config"], fp)
        diffs = flag_differences(results["config"], fp)
        if diffs:
            raise refusal(Path(out), diffs)
    runs = results.get("runs", {})
    well_formed = isinstance(runs, dict) and all(
        isinstance(encs, dict)
        and all(
            isinstance(seeds, dict)
            and all(isinstance(r, dict) and str(s).isdigit() and s == str(int(s)) for s, r in seeds.items())
            for seeds in encs.values()
        )
        for encs in runs.values()
    )
    if not well_formed:
        raise ValueError(
            f"{path} is not a posenc tasks results file (its 'runs' is not task -> encoding -> seed -> record); "
            "restore it or delete it"
        )
    for task, encs in runs.items():
        for enc, seeds in encs.items():
            groups = _groups(task, fp)  # every seed's the same: the summary averages them group by group
            for seed, rec in sorted(seeds.items(), key=lambda kv: int(kv[0])):
                bad = task_record_problem(rec, enc, lengths, groups)
                if bad is not None:
                    raise ValueError(
                        f"{path} is damaged (runs.{task}.{enc}.{seed}.{bad}); restore or delete it"
                    )
                groups = groups or depth_groups(rec["cells"]) or None
    return runs


def _groups(task: str, fp: dict[str, Any]) -> list[str] | None:
    """The depth groups of every record of ``task`` under the configuration ``fp`` (None: a task unknown here)."""
    if task not in available_tasks():
        return None
    depths = fp.get("depths", []) if task == "passkey" else [None]
    return [group_key(d) for d in depths]


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values; None if any is None (a length the model cannot take)."""
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None) / len(values)


def summarize(runs: dict[str, Record], lengths: list[int]) -> dict[str, Any]:
    """Per row of one (task, encoding): accuracy per length (mean over depth groups and seeds), per seed, and per
    length and depth group; ``runs``: str(seed) -> record.

    A row counts the seeds whose records have it: a record kept from an earlier run may lack a row added since (a
    RoPE extension registered later), which then shows the seeds evaluated with it."""
    ordered = sorted(runs.items(), key=lambda kv: int(kv[0]))
    rows = list(dict.fromkeys(row for _, rec in ordered for row in rec["cells"]))
    out: dict[str, Any] = {"accuracy": {}, "by_seed": {}, "by_depth": {}}
    for row in rows:
        has = {seed: rec["cells"][row] for seed, rec in ordered if row in rec["cells"]}
        per_seed = {
            seed: {str(lv): _mean(list(cells[str(lv)].values())) for lv in lengths}
            for seed, cells in has.items()
        }
        out["by_seed"][row] = per_seed
        out["accuracy"][row] = {str(lv): _mean([s[str(lv)] for s in per_seed.values()]) for lv in lengths}
        groups = list(next(iter(has.values()))[str(lengths[0])])
        out["by_depth"][row] = {
            str(lv): {g: _mean([cells[str(lv)][g] for cells in has.values()]) for g in groups}
            for lv in lengths
        }
    return out


def aggregate(runs: TaskRuns, meta: dict[str, Any]) -> dict[str, Any]:
    """The whole ``results.json``: ``meta`` (``train_len``, ``eval_lengths``, config, versions ...) plus the
    records and what the report shows of them, over every record (of this run and the earlier ones)."""
    lengths = meta["eval_lengths"]
    tasks = ordered_tasks(runs)
    encodings = ordered_encodings({e: {} for t in tasks for e in runs[t]})
    results: dict[str, Any] = {
        **meta,
        "tasks": tasks,
        "encodings": encodings,
        "seeds": sorted({int(s) for t in tasks for seeds in runs[t].values() for s in seeds}),
        "answer_length": {
            t: {str(lv): get_task(t).answer_length(lv) for lv in lengths}
            for t in tasks
            if t in available_tasks()
        },
        "accuracy": {},
        "accuracy_by_seed": {},
        "passkey_depth": {},
        "final_train_loss": {},
        "train_seconds": {},
        "eval_seconds": {},
    }
    for task in tasks:
        acc: dict[str, Any] = {}
        for enc in ordered_encodings(runs[task]):
            recs = runs[task][enc]
            if not recs:
                continue
            summary = summarize(recs, lengths)
            acc.update(summary["accuracy"])
            results["accuracy_by_seed"].setdefault(task, {}).update(summary["by_seed"])
            if task == "passkey":
                results["passkey_depth"].update(summary["by_depth"])
            losses = [num(r.get("final_train_loss")) for r in recs.values()]
            results["final_train_loss"].setdefault(task, {})[enc] = _mean(losses)
            for key in ("train_seconds", "eval_seconds"):
                results[key].setdefault(task, {})[enc] = sum(float(r.get(key) or 0.0) for r in recs.values())
        results["accuracy"][task] = acc
    results["runs"] = runs
    return results
