"""Train short, test long: one small LM per encoding, perplexity at ``L .. 16L`` (Press et al. 2022, Table 2).

:func:`run_compare` writes under ``out``:

* ``config.json``: what defines the run (model, budget, seed, evaluation, corpus hash). A second run with the
  same ``out`` must match it, else it is refused with the differences listed.
* ``checkpoints/<encoding>.pt``: weights, training losses and the perplexities measured so far. A rerun loads
  them (``torch.load(..., weights_only=True)``) instead of retraining.
* ``results.json``, ``report.md``, ``perplexity.png``: the numbers, the written conclusions, the figure.

Under ``torchrun`` every rank trains on its share of each batch and evaluates its share of the windows; only
rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import available
from ..models import TransformerLM
from .checkpoints import (
    check_out_dir,
    check_run_folder,
    config_differences,
    json_roundtrip,
    load_checkpoint,
    refusal,
    save_checkpoint,
    save_figure,
    write_text,
)
from .data import Corpus, load_corpus
from .dist import World, rank_device, resolve_device, setup_world, versions
from .evaluate import (
    MULTIPLES,
    eval_lengths,
    extension_perplexities,
    perplexities,
    rope_extensions,
    supports_rope_extension,
)
from .train import TrainConfig, build_model, train_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareConfig:
    """Everything that defines a comparison besides which encodings take part.

    Attributes:
        train: model sizes, budget and seed.
        multiples: evaluation lengths as multiples of ``train.train_len``.
        eval_windows: windows of the longest evaluation length scored; every length scores the same
            ``eval_windows * max(multiples) * train_len`` bytes (fewer if the validation text is shorter).
        data: a text file or folder, or None for the standard library.
        max_train_bytes, max_val_bytes: caps on the text read (whole files; see ``load_corpus``).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    multiples: tuple[int, ...] = MULTIPLES
    eval_windows: int = 4
    data: str | None = None
    max_train_bytes: int | None = 8_000_000
    max_val_bytes: int | None = 1_000_000

    def __post_init__(self) -> None:
        if (
            not self.multiples
            or min(self.multiples) < 1
            or list(self.multiples) != sorted(set(self.multiples))
        ):
            raise ValueError(f"multiples must be increasing positive integers, got {self.multiples}")
        if self.eval_windows < 1:
            raise ValueError(f"eval_windows must be >= 1, got {self.eval_windows}")

    @classmethod
    def quick(cls, **train_overrides: Any) -> CompareConfig:
        """A tiny configuration that runs in seconds (for tests and smoke checks)."""
        train = TrainConfig(dim=32, depth=2, heads=2, train_len=16, batch_size=8, steps=30, lr=3e-3)
        return cls(
            train=replace(train, **train_overrides),
            eval_windows=2,
            max_train_bytes=200_000,
            max_val_bytes=20_000,
        )

    def with_train(self, **overrides: Any) -> CompareConfig:
        """A copy with some :class:`TrainConfig` fields replaced (``None`` values are ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, train=replace(self.train, **given)) if given else self


def default_encodings() -> list[str]:
    """Every registered encoding (:func:`posenc.available`: by family, then name)."""
    return available()


def check_encodings(names: list[str]) -> list[str]:
    """Validate a user's list: known, no repeats, not empty."""
    if not names:
        raise ValueError(f"no encodings given; choose from {', '.join(available())}")
    unknown = [n for n in names if n not in available()]
    if unknown:
        raise ValueError(f"unknown encoding(s) {', '.join(unknown)}; choose from {', '.join(available())}")
    if len(set(names)) != len(names):
        raise ValueError(f"encodings listed twice: {names}")
    return list(names)


def eval_token_count(val_tokens: int, longest: int, windows: int) -> int:
    """Bytes scored at every length: ``windows`` windows of ``longest``, fewer when the text is shorter."""
    return longest * max(1, min(windows, (val_tokens - 1) // longest))


def fingerprint(cfg: CompareConfig, corpus: Corpus, n_tokens: int) -> dict[str, Any]:
    """The JSON-safe description that a resumed run must match exactly."""
    return json_roundtrip(
        {
            "train": cfg.train.to_dict(),
            "multiples": list(cfg.multiples),
            "eval_tokens": n_tokens,
            "data": corpus.describe(),
            "max_train_bytes": cfg.max_train_bytes,
            "max_val_bytes": cfg.max_val_bytes,
        }
    )


def check_config(out: Path, fp: dict[str, Any], world: World) -> None:
    """Refuse a changed configuration; on a fresh ``out`` rank 0 writes ``config.json``."""
    check_run_folder(out, fp, write=world.is_main)
    world.barrier()


def row_names(encoding: str, model_is_rope: bool) -> list[str]:
    """Table rows of an encoding: itself, plus ``rope+<method>`` per available extension for plain RoPE."""
    extra = [f"{encoding}+{m}" for m in rope_extensions()] if model_is_rope else []
    return [encoding, *extra]


@dataclass
class EncodingRun:
    """One encoding's outcome: losses, timings, perplexity per row per length (str keys), resumed or not."""

    losses: list[float]
    train_seconds: float
    eval_seconds: float
    perplexity: dict[str, dict[str, float | None]]
    resumed: bool


@dataclass
class RunContext:
    """What every encoding of one comparison shares: data, configuration, where and how it runs."""

    corpus: Corpus
    cfg: CompareConfig
    fp: dict[str, Any]
    n_tokens: int
    out: Path
    device: torch.device
    world: World
    progress: bool

    @property
    def lengths(self) -> list[int]:
        return eval_lengths(self.cfg.train.train_len, self.cfg.multiples)

    def checkpoint(self, name: str) -> Path:
        return self.out / "checkpoints" / f"{name}.pt"


def load_run(name: str, ctx: RunContext) -> tuple[TransformerLM, EncodingRun] | None:
    """The model and record of ``name`` from its checkpoint, or None when there is none yet.

    Raises:
        ValueError: the checkpoint was made with another configuration or is not a compare checkpoint.
    """
    path = ctx.checkpoint(name)
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    diffs = config_differences(ckpt.get("config", {}), ctx.fp)
    if ckpt.get("encoding") != name or diffs:
        raise refusal(
            ctx.out, diffs or [f"checkpoint {path.name}: not a posenc compare checkpoint of {name!r}"]
        )
    model = build_model(name, ctx.cfg.train)
    try:
        model.load_state_dict(ckpt["state_dict"])
        run = EncodingRun(
            list(ckpt["losses"]),
            float(ckpt["train_seconds"]),
            float(ckpt["eval_seconds"]),
            dict(ckpt["perplexity"]),
            resumed=True,
        )
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path} is damaged ({type(err).__name__}: {str(err)[:200]}); delete it and rerun to retrain "
            f"{name} (the other checkpoints are kept)"
        ) from None
    model.to(ctx.device).eval()
    log.info("%s: loaded %s (trained %.0f s)", name, path, run.train_seconds)
    return model, run


def train_run(name: str, ctx: RunContext) -> tuple[TransformerLM, EncodingRun]:
    """Train ``name``'s model from scratch (nothing evaluated yet)."""
    cfg = ctx.cfg.train
    result = train_model(
        name, ctx.corpus.train, cfg, device=ctx.device, world=ctx.world, progress=ctx.progress
    )
    log.info(
        "%s: trained %d steps in %.1f s, final loss %.3f", name, cfg.steps, result.seconds, result.losses[-1]
    )
    return result.model, EncodingRun(result.losses, result.seconds, 0.0, {}, resumed=False)


def evaluate_missing(name: str, model: TransformerLM, run: EncodingRun, ctx: RunContext) -> list[str]:
    """Measure every row of ``name`` that ``run`` lacks (in place); return the rows measured."""
    rows = row_names(name, supports_rope_extension(model))
    missing = [r for r in rows if r not in run.perplexity]
    start = time.perf_counter()
    kwargs: dict[str, Any] = {
        "device": ctx.device,
        "world": ctx.world,
        "progress": ctx.progress and ctx.world.is_main,
    }
    ppl, val, lengths = run.perplexity, ctx.corpus.val, ctx.lengths
    if name in missing:
        ppl[name] = _keyed(perplexities(model, val, lengths, ctx.n_tokens, label=name, **kwargs))
    plain = {int(k): v for k, v in ppl[name].items()}
    train_len = ctx.cfg.train.train_len
    for row in missing:
        if row != name:
            method = row.split("+", 1)[1]
            values = extension_perplexities(
                model, method, val, lengths, train_len, ctx.n_tokens, plain=plain, **kwargs
            )
            ppl[row] = _keyed(values)
    run.eval_seconds += time.perf_counter() - start
    run.perplexity = {r: ppl[r] for r in rows}
    return missing


def save_run(name: str, model: TransformerLM, run: EncodingRun, ctx: RunContext) -> None:
    """Write ``name``'s checkpoint (weights, losses, timings, perplexities) atomically."""
    save_checkpoint(
        ctx.checkpoint(name),
        encoding=name,
        config=ctx.fp,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        losses=run.losses,
        train_seconds=run.train_seconds,
        eval_seconds=run.eval_seconds,
        perplexity=run.perplexity,
    )


def run_encoding(name: str, ctx: RunContext) -> EncodingRun:
    """Train (or load) one encoding's model and evaluate every row it still lacks; rank 0 saves the checkpoint."""
    loaded = load_run(name, ctx)
    model, run = loaded if loaded is not None else train_run(name, ctx)
    if evaluate_missing(name, model, run, ctx) and ctx.world.is_main:
        save_run(name, model, run, ctx)
    ctx.world.barrier()
    return run


def _keyed(values: dict[int, float | None]) -> dict[str, float | None]:
    return {str(k): v for k, v in values.items()}


def run_compare(
    cfg: CompareConfig | None = None,
    *,
    encodings: list[str] | None = None,
    out: str | Path = "runs/compare",
    device: str | torch.device = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the comparison and write its files under ``out`` (rank 0).

    Args:
        cfg: configuration; default :class:`CompareConfig`.
        encodings: names to compare; default :func:`default_encodings`.
        out: output folder.
        device: "auto", "cpu", "cuda", ...; under torchrun each rank uses ``cuda:<local_rank>``.
        progress: tqdm bars on stderr.

    Returns:
        The contents of ``results.json``.

    Raises:
        ValueError: unknown encodings, bad data, or ``out`` holding a run with another configuration.
    """
    start = time.perf_counter()
    check_out_dir(Path(out))  # before any work
    cfg = CompareConfig() if cfg is None else cfg
    names = check_encodings(default_encodings() if encodings is None else encodings)
    base_device = resolve_device(device)
    world = setup_world(base_device)
    dev = rank_device(base_device, world)
    train_len = cfg.train.train_len
    lengths = eval_lengths(train_len, cfg.multiples)
    is_default = cfg.data is None
    corpus = load_corpus(
        cfg.data,
        min_train_tokens=train_len + 1,
        min_val_tokens=lengths[-1] + 1,
        max_train_bytes=cfg.max_train_bytes if is_default else None,
        max_val_bytes=cfg.max_val_bytes if is_default else None,
    )
    n_tokens = eval_token_count(corpus.val.numel(), lengths[-1], cfg.eval_windows)
    fp = fingerprint(cfg, corpus, n_tokens)
    out = Path(out)
    check_config(out, fp, world)
    ctx = RunContext(corpus, cfg, fp, n_tokens, out, dev, world, progress)
    runs = {name: run_encoding(name, ctx) for name in names}
    results = {
        "train_len": train_len,
        "eval_lengths": lengths,
        "eval_tokens": n_tokens,
        "encodings": names,
        "rope_extensions": sorted(rope_extensions()),
        "perplexity": {row: v for run in runs.values() for row, v in run.perplexity.items()},
        "final_train_loss": {n: _tail_mean(r.losses) for n, r in runs.items()},
        "train_seconds": {n: r.train_seconds for n, r in runs.items()},
        "eval_seconds": {n: r.eval_seconds for n, r in runs.items()},
        "resumed": [n for n, r in runs.items() if r.resumed],
        "config": fp,
        "seed": cfg.train.seed,
        "versions": versions(dev, world),
        "wall_seconds": time.perf_counter() - start,
    }
    if world.is_main:
        write_outputs(results, out)
    world.barrier()
    return results


def _tail_mean(losses: list[float], n: int = 10) -> float:
    tail = losses[-n:]
    return sum(tail) / len(tail)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """``results.json``, ``report.md`` and (with matplotlib) ``perplexity.png`` under ``out``."""
    from .report import write_report

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(_json_safe(results), indent=2) + "\n")
    figure = None
    try:
        from ..plots.compare import perplexity_figure

        fig = perplexity_figure(results)
        save_figure(fig, out / "perplexity.png")
        figure = "perplexity.png"
    except ImportError as err:  # matplotlib is the optional "plots" extra
        log.warning("no perplexity.png: %s (pip install 'posenc[plots]')", err)
    write_text(out / "report.md", write_report(results, figure=figure))


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become the string "inf" (strict JSON has no infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf"
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj
