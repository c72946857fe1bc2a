"""Train short, test long: one small LM per encoding and seed, perplexity at ``L .. 16L`` (Press et al. 2022,
Table 2).

:func:`run_compare` writes under ``out``:

* ``config.json``: what defines the run (model, budget, evaluation, corpus hash; not the seeds). A second run with
  the same ``out`` must match it, else it is refused with the differences listed.
* ``checkpoints/<encoding>/seed<k>.pt`` (a variant's folder is its spec's file stem, ``alibi@max_bias=4``;
  :mod:`posenc.experiments.specs`): weights, training losses, learning curve, throughput and the perplexities
  measured so far, per (encoding, seed). A rerun loads them (``torch.load(..., weights_only=True)``) instead of
  retraining, so more seeds later train only the new ones.
* ``results.json`` (:mod:`posenc.experiments.results`: every (encoding, seed) record, merged with the records
  of earlier runs in the folder, plus mean and spread), ``report.md``, ``perplexity.png``, ``curves.png``.

Under ``torchrun`` every rank trains on its share of each batch and evaluates its share of the windows; only
rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import available
from .checkpoints import (
    check_out_dir,
    check_run_folder,
    check_same_kind,
    config_differences,
    flag_differences,
    json_roundtrip,
    json_safe,
    read_json_object,
    refusal,
    save_figure,
    write_text,
)
from .data import Corpus, load_corpus
from .dist import World, check_batch_split, rank_device, resolve_device, setup_world, versions
from .evaluate import EVAL_LAYOUT, eval_lengths, eval_passes, rope_extensions
from .pairs import EncodingRun, RunContext, check_checkpoints, eval_token_count, run_encoding
from .pool import map_jobs, model_threads, resolve_workers, using_threads
from .presets import CompareConfig
from .records import record_problem
from .results import aggregate, merge_runs
from .specs import check_buildable, check_specs
from .train import resolve_precision

__all__ = ["CompareConfig", "config_differences", "eval_token_count", "run_compare"]

log = logging.getLogger(__name__)


def default_encodings() -> list[str]:
    """Every registered encoding (:func:`posenc.available`: by family, then name)."""
    return available()


def check_encodings(names: list[str], flag: str = "encodings") -> list[str]:
    """Validate a user's list of encodings, each a name or a spec with options (``alibi:max_bias=4``,
    :mod:`posenc.experiments.specs`): known, not empty, none twice; returned canonical. ``flag`` names the list in
    errors (``--encodings`` on the command line)."""
    return check_specs(names, flag)


def fingerprint(cfg: CompareConfig, corpus: Corpus, n_tokens: int) -> dict[str, Any]:
    """The JSON-safe description that a resumed run must match exactly (the seed is per checkpoint, not here)."""
    train = {k: v for k, v in cfg.train.to_dict().items() if k != "seed"}
    return json_roundtrip(
        {
            "train": train,
            "multiples": list(cfg.multiples),
            "eval_tokens": n_tokens,
            "eval_layout": EVAL_LAYOUT,
            "curve": {"points": cfg.curve_points, "bytes": cfg.curve_bytes},
            "data": corpus.describe(),
            "max_train_bytes": cfg.max_train_bytes,
            "max_val_bytes": cfg.max_val_bytes,
        }
    )


def _one_seed(out: Path) -> ValueError:
    """The refusal of a folder of the one-seed layout (its fingerprint records the one ``train.seed``)."""
    return ValueError(
        f"{out} holds a one-seed run of an older posenc compare (checkpoints/<encoding>.pt); its "
        "results.json and report.md stay readable, but it cannot be resumed or extended with --seeds. "
        "Pass a new --out to start a run with seeds"
    )


def check_config(
    out: Path, fp: dict[str, Any], world: World, first: Callable[[], None] | None = None
) -> None:
    """Refuse a changed configuration, or a folder of the one-seed layout; on a fresh ``out`` (no ``config.json``)
    call ``first`` (the check of the checkpoints already there), then rank 0 writes ``config.json``."""
    old = out / "config.json"
    train = read_json_object(old, "run configuration").get("train", {}) if old.is_file() else {}
    if not isinstance(train, dict):
        raise ValueError(
            f"{old} is not a run configuration (its 'train' is not an object); restore it or delete it"
        )
    if "seed" in train:
        raise _one_seed(out)
    check_run_folder(out, fp, write=world.is_main, first=first)
    world.barrier()


def run_compare(
    cfg: CompareConfig | None = None,
    *,
    encodings: list[str] | None = None,
    out: str | Path = "runs/compare",
    device: str | torch.device = "auto",
    progress: bool = True,
    jobs: int | None = 1,
) -> dict[str, Any]:
    """Run (or resume, or extend) the comparison and write its files under ``out`` (rank 0).

    Args:
        cfg: configuration (with ``cfg.seeds``); default :class:`CompareConfig`.
        encodings: names to compare; default :func:`default_encodings`.
        out: output folder. Records of encodings and seeds already in its ``results.json`` are kept.
        device: "auto", "cpu", "cuda", ...; under torchrun each rank uses ``cuda:<local_rank>``.
        progress: tqdm bars on stderr.
        jobs: models trained at once in worker processes, each with its share of the cores (see
            :mod:`posenc.experiments.pool`); None: one per CPU core, 1 on an accelerator or under torchrun (the
            CLI's default). Workers are fresh interpreters: an encoding registered at run time is known there
            only if registering it is part of importing a module (not under ``if __name__ == "__main__"``).

    Returns:
        The contents of ``results.json`` (see :func:`posenc.experiments.results.aggregate`).

    Raises:
        ValueError: unknown encodings, bad data, bad ``jobs``, or ``out`` holding a run with another
            configuration.
    """
    start = time.perf_counter()
    check_out_dir(  # before any work
        Path(out), files=("config.json", "results.json", "report.md", "perplexity.png", "curves.png")
    )
    cfg = CompareConfig() if cfg is None else cfg
    check_batch_split(cfg.train.batch_size)
    names = check_encodings(default_encodings() if encodings is None else encodings)
    base_device = resolve_device(device)
    world = setup_world(base_device)
    dev = rank_device(base_device, world)
    train_len = cfg.train.train_len
    lengths = eval_lengths(train_len, cfg.multiples)
    is_default = cfg.data is None
    corpus = load_corpus(  # first: a length the text cannot hold is refused before a model of it is built
        cfg.data,
        min_train_tokens=train_len + 1,
        min_val_tokens=lengths[-1] + 1,
        max_train_bytes=cfg.max_train_bytes if is_default else None,
        max_val_bytes=cfg.max_val_bytes if is_default else None,
    )
    check_buildable(names, cfg.train, dev, passes=eval_passes(lengths))
    cfg = cfg.with_train(precision=resolve_precision(cfg.train.precision, dev))  # recorded as chosen
    keys = [(n, s) for s in cfg.seeds for n in names]  # seed by seed
    workers = resolve_workers(jobs, dev, len(keys), distributed=world.distributed)
    n_tokens = eval_token_count(corpus.val.numel(), lengths[-1], cfg.eval_windows, cfg.eval_bytes)
    if (
        cfg.eval_bytes is not None and n_tokens < cfg.eval_bytes - lengths[-1]
    ):  # (not just rounded to windows)
        log.warning(
            "scoring %d held-out bytes at every length: --eval-bytes %d is more than the held-out text holds",
            n_tokens,
            cfg.eval_bytes,
        )
    fp = fingerprint(cfg, corpus, n_tokens)
    # before any collective of the training; the data by their digest, not the path (nodes may mount it elsewhere)
    data = {k: v for k, v in fp["data"].items() if k != "source"}
    world.agree(configuration={**fp, "data": data}, encodings=names, seeds=list(cfg.seeds))
    out = Path(out)
    _old_runs(out, fp, lengths)  # a damaged or foreign results.json is refused now, not after the training
    ctx = RunContext(corpus, cfg, fp, n_tokens, out, dev, world, progress)
    check_config(out, fp, world, lambda: check_checkpoints(keys, ctx))  # a refused run writes nothing
    for name in names:  # a folder that cannot be made (a link to nothing) is refused now, not after training
        check_out_dir(ctx.checkpoint(name, 0).parent, f"the checkpoint folder of {name}")
    check_checkpoints(keys, ctx)  # so is a checkpoint of another run or with a damaged field, whichever pair
    threads = model_threads(jobs, dev, distributed=world.distributed)  # (not a function of len(keys))
    if workers > 1 and len(keys) > 1:
        calls = [(n, s, corpus, cfg, fp, n_tokens, str(out), str(dev)) for n, s in keys]
        done = map_jobs(
            _pooled_encoding, calls, workers=workers, threads=threads, progress=progress, desc="encodings"
        )
    else:
        with using_threads(threads):
            done = [run_encoding(n, s, ctx) for n, s in keys]
    runs: dict[int, dict[str, EncodingRun]] = {}
    for (n, s), run in zip(keys, done, strict=True):
        runs.setdefault(s, {})[n] = run
    new = {n: {str(s): runs[s][n].record() for s in cfg.seeds} for n in names}
    meta = {
        "train_len": train_len,
        "eval_lengths": lengths,
        "eval_tokens": n_tokens,
        "rope_extensions": sorted(rope_extensions()),
        "config": fp,
        "settings": settings(cfg, n_tokens, min(workers, len(keys)), threads),
        "this_run": {
            "encodings": names,
            "seeds": list(cfg.seeds),
            "resumed": [f"{n}/{s}" for s in cfg.seeds for n in names if runs[s][n].resumed],
        },
        "versions": versions(dev, world),
        "wall_seconds": time.perf_counter() - start,
    }
    results = aggregate(merge_runs(_old_runs(out, fp, lengths), new), meta)
    if world.is_main:
        write_outputs(results, out)
    world.barrier()
    return results


def _pooled_encoding(
    name: str,
    seed: int,
    corpus: Corpus,
    cfg: CompareConfig,
    fp: dict[str, Any],
    n_tokens: int,
    out: str,
    device: str,
) -> EncodingRun:
    """:func:`run_encoding` in a worker process (no progress bars, no process group)."""
    ctx = RunContext(corpus, cfg, fp, n_tokens, Path(out), torch.device(device), World(), False)
    return run_encoding(name, seed, ctx)


def settings(cfg: CompareConfig, n_tokens: int, jobs: int, threads: int) -> dict[str, Any]:
    """Every knob of the run, flat, as the report prints it (``jobs``: models at once; ``threads``: per model)."""
    t = cfg.train
    return {
        "preset": cfg.preset,
        "dim": t.dim,
        "depth": t.depth,
        "heads": t.heads,
        "train_len": t.train_len,
        "batch_size": t.batch_size,
        "steps": t.steps,
        "lr": t.lr,
        "warmup_fraction": t.warmup_fraction,
        "warmup_steps": t.warmup,
        "compile": t.compile,
        "precision": t.precision,
        "eval_bytes": n_tokens,
        "curve_points": cfg.curve_points,
        "curve_bytes": cfg.curve_bytes,
        "tokens_per_run": t.steps * t.batch_size * t.train_len,
        "jobs": jobs,
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _old_runs(out: Path, fp: dict[str, Any], lengths: list[int]) -> dict[str, dict[str, dict[str, Any]]]:
    """The records of ``out/results.json``, refused (naming the file) unless written by the configuration ``fp``
    (its own ``config``: this holds also when ``config.json`` was deleted) and readable to the last number: every
    record with its own row, each row with every one of ``lengths`` (:mod:`posenc.experiments.records`)."""
    path = out / "results.json"
    if not path.is_file():
        return {}
    results = read_json_object(path, "results file")
    if isinstance(results.get("config"), dict):
        if "seed" in (results["config"].get("train") or {}):
            raise _one_seed(out)
        check_same_kind(out, results["config"], fp)
        diffs = flag_differences(results["config"], fp)
        if diffs:
            raise refusal(out, diffs)
    runs = results.get("runs", {})
    if not isinstance(runs, dict) or not all(isinstance(r, dict) for r in runs.values()):
        raise ValueError(
            f"{path} is not a results file (its 'runs' is not an object of objects); restore or delete it"
        )
    for enc, seeds in runs.items():  # the merged summary reads every record: a bad one fails here, named
        for seed, rec in seeds.items():
            ppl = rec.get("perplexity") if isinstance(rec, dict) else None
            if (
                not seed.isdigit()
                or seed != str(int(seed))  # "00" beside "0": one seed twice
                or not isinstance(ppl, dict)
                or not all(isinstance(v, dict) for v in ppl.values())
            ):
                raise ValueError(
                    f"{path} is not a results file (runs.{enc}.{seed} is not a seed's record with its "
                    "perplexity); restore or delete it"
                )
            bad = record_problem(rec, enc, lengths)
            if bad is not None:
                raise ValueError(f"{path} is damaged (runs.{enc}.{seed}.{bad}); restore or delete it")
    return dict(runs)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """``results.json``, ``report.md`` and (with matplotlib) ``perplexity.png`` and ``curves.png`` under ``out``."""
    from .report import write_report

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(json_safe(results), indent=2) + "\n")
    figures: dict[str, str] = {}
    try:
        from ..plots.compare import curves_figure, perplexity_figure

        save_figure(perplexity_figure(results), out / "perplexity.png")
        figures["perplexity"] = "perplexity.png"
        curves = curves_figure(results)
        if curves is not None:
            save_figure(curves, out / "curves.png")
            figures["curves"] = "curves.png"
    except ImportError as err:  # matplotlib is the optional "plots" extra
        log.warning("no figures: %s (pip install 'posenc[plots]')", err)
    write_text(out / "report.md", write_report(results, figures=figures))
