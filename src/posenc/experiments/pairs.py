"""One (encoding, seed) of ``posenc compare``: load its checkpoint or train it (with its learning curve), evaluate
the rows it lacks, save it. :mod:`posenc.experiments.compare` runs these for every pair and aggregates them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..models import TransformerLM
from .checkpoints import (
    checkpoint_refusal,
    cpu_state,
    damaged_checkpoint,
    flag_differences,
    load_checkpoint,
    reading_checkpoint,
    save_checkpoint,
)
from .data import Corpus
from .dist import World
from .evaluate import (
    eval_lengths,
    extension_perplexities,
    perplexities,
    perplexity,
    rope_extensions,
    spread_blocks,
    supports_rope_extension,
    window_nll,
)
from .presets import CompareConfig
from .records import checkpoint_problem
from .specs import file_stem
from .train import Probe, build_model, train_model

log = logging.getLogger(__name__)


def eval_token_count(val_tokens: int, longest: int, windows: int, eval_bytes: int | None = None) -> int:
    """Bytes scored at every length: ``eval_bytes`` rounded down to whole windows of ``longest`` (or ``windows``
    windows when None), at least one window, fewer when the text is shorter."""
    wanted = windows if eval_bytes is None else eval_bytes // longest
    return longest * max(1, min(wanted, (val_tokens - 1) // longest))


def curve_plan(train_len: int, longest: int, val_tokens: int, curve_bytes: int) -> tuple[list[int], int]:
    """The learning curve's lengths (L, and 4L when the evaluation reaches it) and the bytes it scores at each:
    ``curve_bytes`` in whole blocks of the longer length (:func:`eval_token_count`)."""
    lengths = [train_len] + ([4 * train_len] if 4 * train_len <= longest else [])
    return lengths, eval_token_count(val_tokens, lengths[-1], 1, curve_bytes)


def row_names(encoding: str, model_is_rope: bool) -> list[str]:
    """Table rows of an encoding: itself, plus ``rope+<method>`` per available extension for plain RoPE."""
    extra = [f"{encoding}+{m}" for m in rope_extensions()] if model_is_rope else []
    return [encoding, *extra]


@dataclass
class EncodingRun:
    """One (encoding, seed) outcome: losses, timings, learning curve, throughput, perplexity per row per length
    (str keys), resumed or not."""

    losses: list[float]
    train_seconds: float
    eval_seconds: float
    perplexity: dict[str, dict[str, float | None]]
    resumed: bool
    curve: dict[str, list[Any]] = field(default_factory=dict)
    tokens_per_second: float = 0.0
    first_step_seconds: float = 0.0
    threads: int | None = (
        None  # intra-op threads it trained with (None: a checkpoint from before they were kept)
    )

    def record(self) -> dict[str, Any]:
        """This run's entry of ``results["runs"][encoding][seed]``."""
        return {
            "perplexity": self.perplexity,
            "final_train_loss": _tail_mean(self.losses),
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "tokens_per_second": self.tokens_per_second,
            "first_step_seconds": self.first_step_seconds,
            "threads": self.threads,
            "curve": self.curve,
        }


@dataclass
class RunContext:
    """What every (encoding, seed) of one comparison shares: data, configuration, where and how it runs."""

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

    @cached_property
    def eval_text(self) -> torch.Tensor:
        """The scored text: ``n_tokens / longest`` blocks of the longest length spread evenly over the held-out
        bytes, ``(R, longest + 1)`` (:func:`~posenc.experiments.evaluate.spread_blocks`)."""
        longest = self.lengths[-1]
        return spread_blocks(self.corpus.val, longest, self.n_tokens // longest)

    def checkpoint(self, name: str, seed: int) -> Path:
        return self.out / "checkpoints" / file_stem(name) / f"seed{seed}.pt"

    def pair_fingerprint(self, seed: int) -> dict[str, Any]:
        """The run's fingerprint with this seed: what one checkpoint must match (and rebuilds its model)."""
        return {**self.fp, "train": {**self.fp["train"], "seed": seed}}

    def probe(self) -> Probe | None:
        """Validation perplexity at the :func:`curve_plan` lengths on its bytes (whole windows of the longer
        length, spread evenly over the held-out bytes, as the evaluation's)."""
        if self.cfg.curve_points <= 0:
            return None
        lengths, n = curve_plan(
            self.cfg.train.train_len, self.lengths[-1], self.corpus.val.numel(), self.cfg.curve_bytes
        )
        text = spread_blocks(self.corpus.val, lengths[-1], n // lengths[-1])  # (R, 4L + 1)

        def probe(model: TransformerLM) -> dict[str, float | None]:
            limit = model.max_length
            out: dict[str, float | None] = {}
            for lv in lengths:
                if limit is not None and lv > limit:
                    out[str(lv)] = None
                    continue
                nll, count = window_nll(model, text, lv, n, device=self.device, world=self.world)
                out[str(lv)] = perplexity(nll, count)
            return out

        return probe


def checked_checkpoint(name: str, seed: int, ctx: RunContext) -> dict[str, Any] | None:
    """The checkpoint of ``(name, seed)`` with every field a rerun reads checked, or None when there is none yet.
    :func:`~posenc.experiments.compare.run_compare` checks every pair's before training any.

    Raises:
        ValueError: the checkpoint was made with another configuration, is not a compare checkpoint, or holds a
            field that cannot be read back (:func:`~posenc.experiments.records.checkpoint_problem`); the message
            names the file.
    """
    path = ctx.checkpoint(name, seed)
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    diffs = flag_differences(ckpt.get("config", {}), ctx.pair_fingerprint(seed))
    if ckpt.get("encoding") != name or diffs:
        raise checkpoint_refusal(
            path,
            diffs or [f"a checkpoint of {ckpt.get('encoding')!r}, not of {name!r}"],
            f"retrain {name} seed {seed}",
        )
    bad = checkpoint_problem(ckpt, name, ctx.lengths)
    if bad is not None:
        raise damaged_checkpoint(path, bad, f"retrain {name} seed {seed}")
    return ckpt


def check_checkpoints(keys: list[tuple[str, int]], ctx: RunContext) -> None:
    """Refuse the run if a checkpoint it would load, of any ``(name, seed)`` of ``keys``, is not its own or is
    damaged (:func:`checked_checkpoint`): before ``config.json`` is written to a folder that has none, and before
    any training."""
    for name, seed in keys:
        checked_checkpoint(name, seed, ctx)


def load_run(name: str, seed: int, ctx: RunContext) -> tuple[TransformerLM, EncodingRun] | None:
    """The model and record of ``(name, seed)`` from its checkpoint, or None when there is none yet.

    Raises:
        ValueError: the checkpoint does not belong to this run or is damaged (:func:`checked_checkpoint`).
    """
    ckpt = checked_checkpoint(name, seed, ctx)
    if ckpt is None:
        return None
    path = ctx.checkpoint(name, seed)
    model = build_model(name, ctx.cfg.for_seed(seed))
    with reading_checkpoint(path, f"retrain {name} seed {seed}"):
        model.load_state_dict(ckpt["state_dict"])
        run = EncodingRun(
            [float(x) for x in ckpt["losses"]],
            float(ckpt["train_seconds"]),
            float(ckpt["eval_seconds"]),
            dict(ckpt["perplexity"]),
            resumed=True,
            curve=dict(ckpt.get("curve") or {}),
            tokens_per_second=float(ckpt.get("tokens_per_second", 0.0)),
            first_step_seconds=float(ckpt.get("first_step_seconds", 0.0)),
            threads=_threads(ckpt.get("threads")),
        )
    model.to(ctx.device).eval()
    log.info("%s seed %d: loaded %s (trained %.0f s)", name, seed, path, run.train_seconds)
    return model, run


def train_run(name: str, seed: int, ctx: RunContext) -> tuple[TransformerLM, EncodingRun]:
    """Train ``(name, seed)``'s model from scratch, with its learning curve (nothing else evaluated yet)."""
    cfg = ctx.cfg.for_seed(seed)
    result = train_model(
        name,
        ctx.corpus.train,
        cfg,
        device=ctx.device,
        world=ctx.world,
        progress=ctx.progress,
        probe=ctx.probe(),
        probe_points=ctx.cfg.curve_points,
    )
    rate = result.tokens_per_second
    log.info(
        "%s seed %d: trained %d steps in %.1f s (%s), final loss %.3f",
        name,
        seed,
        cfg.steps,
        result.seconds,
        f"{rate:.0f} tokens/s" if rate > 0 else "tokens/s n/a: one step, the first, is not timed",
        result.losses[-1],
    )
    run = EncodingRun(
        result.losses,
        result.seconds,
        0.0,
        {},
        resumed=False,
        curve=result.curve,
        tokens_per_second=result.tokens_per_second,
        first_step_seconds=result.first_step_seconds,
        threads=torch.get_num_threads(),  # (in a worker: its own; the last bits of CPU training depend on it)
    )
    return result.model, run


def evaluate_missing(name: str, model: TransformerLM, run: EncodingRun, ctx: RunContext) -> list[str]:
    """Measure every row of ``name`` that ``run`` lacks (in place); return the rows measured."""
    rows = row_names(name, supports_rope_extension(model))
    missing = [r for r in rows if r not in run.perplexity]
    if not missing:
        return []
    start = time.perf_counter()
    kwargs: dict[str, Any] = {
        "device": ctx.device,
        "world": ctx.world,
        "progress": ctx.progress and ctx.world.is_main,
    }
    ppl, val, lengths = run.perplexity, ctx.eval_text, ctx.lengths
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


def save_run(name: str, seed: int, model: TransformerLM, run: EncodingRun, ctx: RunContext) -> None:
    """Write ``(name, seed)``'s checkpoint (weights, losses, curve, timings, perplexities) atomically."""
    save_checkpoint(
        ctx.checkpoint(name, seed),
        encoding=name,
        config=ctx.pair_fingerprint(seed),
        state_dict=cpu_state(model),
        losses=run.losses,
        train_seconds=run.train_seconds,
        eval_seconds=run.eval_seconds,
        perplexity=run.perplexity,
        curve=run.curve,
        tokens_per_second=run.tokens_per_second,
        first_step_seconds=run.first_step_seconds,
        threads=run.threads,
    )


def run_encoding(name: str, seed: int, ctx: RunContext) -> EncodingRun:
    """Train (or load) one (encoding, seed) model and evaluate every row it still lacks; rank 0 saves it."""
    loaded = load_run(name, seed, ctx)
    model, run = loaded if loaded is not None else train_run(name, seed, ctx)
    if evaluate_missing(name, model, run, ctx) and ctx.world.is_main:
        save_run(name, seed, model, run, ctx)
    ctx.world.barrier()
    return run


def _threads(value: object) -> int | None:
    """A checkpoint's ``threads``: a positive int, else None (older checkpoints have none)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if ok else None  # type: ignore[return-value]


def _keyed(values: dict[int, float | None]) -> dict[str, float | None]:
    return {str(k): v for k, v in values.items()}


def _tail_mean(losses: list[float], n: int = 10) -> float:
    tail = losses[-n:]
    return sum(tail) / len(tail)
