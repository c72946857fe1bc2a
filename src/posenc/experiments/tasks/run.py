"""``posenc tasks``: one small byte-level LM per (task, encoding, seed) trained at length L on generated examples,
then exact-match accuracy on held-out examples at ``L .. 16L`` (Kazemnejad et al. 2023; Ruoss et al. 2023;
Mohtashami & Jaggi 2023).

The model, the optimiser and the loop are those of ``posenc compare`` (:func:`posenc.experiments.train.train_model`);
only the batches (generated examples) and the loss (cross-entropy on the answer bytes only) differ.

:func:`run_tasks` writes under ``out``: ``config.json`` (a resumed run must match it), ``checkpoints/<task>/
<encoding>-s<seed>.pt`` (weights, losses, accuracies; a rerun loads them instead of retraining), ``results.json``,
``report.md``, ``accuracy.png`` and ``passkey_<encoding>.png``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models import TransformerLM
from ..checkpoints import (
    check_run_folder,
    checkpoint_refusal,
    cpu_state,
    damaged_checkpoint,
    flag_differences,
    json_roundtrip,
    load_checkpoint,
    reading_checkpoint,
    save_checkpoint,
)
from ..dist import SINGLE, World
from ..evaluate import eval_lengths, rope_extensions, rope_scaled, supports_rope_extension
from ..records import task_checkpoint_problem
from ..specs import file_stem
from ..train import BatchFn, LossFn, TrainConfig, build_model, train_model
from .generators import Task, get_task

log = logging.getLogger(__name__)

#: Version of the generators and scoring; part of the fingerprint so old runs are not mixed with new ones.
TASKS_FORMAT = 2
#: Passkey depths evaluated (fractions of the filler before the key; Mohtashami & Jaggi 2023 vary it too).
DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class TasksConfig:
    """Everything that defines a task run besides which tasks, encodings and seeds take part.

    Attributes:
        train: model sizes and budget (its ``seed`` is replaced by each run seed).
        multiples: evaluation lengths as multiples of ``train.train_len``.
        eval_examples: held-out examples per length (passkey: split evenly over the depths, at least one each).
        depths: passkey depths evaluated.
        batch_tokens: evaluation examples per forward pass are ``max(1, batch_tokens // length)``.
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            dim=64, depth=3, heads=4, train_len=16, batch_size=32, steps=2000, lr=3e-3
        )
    )
    multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    eval_examples: int = 40
    depths: tuple[float, ...] = DEPTHS
    batch_tokens: int = 8192

    def __post_init__(self) -> None:
        m = self.multiples
        if not m or min(m) < 1 or list(m) != sorted(set(m)):
            raise ValueError(f"multiples must be increasing positive integers, got {m}")
        if self.eval_examples < 1:
            raise ValueError(f"eval_examples must be >= 1, got {self.eval_examples}")
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must be fractions in [0, 1], got {self.depths}")
        keys = [f"{d:g}" for d in self.depths]  # (each depth's group in the records: group_key)
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"depths must be distinct as their records name them ({', '.join(keys)}), got {self.depths}"
            )

    @classmethod
    def quick(cls, **train_overrides: Any) -> TasksConfig:
        """A tiny configuration that runs in seconds (tests, smoke checks); nothing is learned well."""
        train = TrainConfig(dim=32, depth=2, heads=2, train_len=16, batch_size=8, steps=10, lr=3e-3)
        return cls(
            train=replace(train, **train_overrides), multiples=(1, 2, 4), eval_examples=4, depths=(0.0, 1.0)
        )

    def with_train(self, **overrides: Any) -> TasksConfig:
        """A copy with some :class:`TrainConfig` fields replaced (``None`` values are ignored)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, train=replace(self.train, **given)) if given else self

    @property
    def lengths(self) -> list[int]:
        return eval_lengths(self.train.train_len, self.multiples)

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must match (the seed is per checkpoint, not per run)."""
        train = {k: v for k, v in self.train.to_dict().items() if k != "seed"}
        return json_roundtrip(
            {
                "format": TASKS_FORMAT,
                "train": train,
                "multiples": list(self.multiples),
                "eval_examples": self.eval_examples,
                "depths": list(self.depths),
            }
        )


# -- loss and accuracy on the answer bytes ----------------------------------------------------------------------
def answer_loss(model: nn.Module, batch: Tensor, answer_len: int) -> Tensor:
    """Mean cross-entropy of the last ``answer_len`` bytes of ``batch: (B, S)`` given everything before them."""
    logits = model(batch[:, :-1])[:, -answer_len:]  # (B, a, V): predictions of batch[:, -a:]
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, -answer_len:].flatten())


@torch.no_grad()
def answers_correct(model: nn.Module, batch: Tensor, answer_len: int) -> Tensor:
    """``(B,)`` bool: every answer byte is the model's top prediction given the true bytes before it, which is
    exactly "greedy decoding reproduces the answer" when the model's frequencies do not depend on the call's
    length; with dynamic NTK (``rope+dynamic``) they are those of the whole example, one forward pass, where a
    decoder re-deriving them per byte from a shorter prefix would use slightly different ones."""
    logits = model(batch[:, :-1])[:, -answer_len:]  # (B, a, V)
    return (logits.argmax(-1) == batch[:, -answer_len:]).all(-1)


def accuracy(
    model: nn.Module,
    examples: Tensor,
    answer_len: int,
    *,
    device: torch.device | str = "cpu",
    batch_tokens: int = 8192,
    world: World = SINGLE,
) -> float:
    """Exact-match accuracy of ``model`` on ``examples: (N, S)`` (under DDP each rank takes every
    ``world.size``-th example and the counts are summed)."""
    rows = examples[world.rank :: world.size]
    per_batch = max(1, batch_tokens // examples.shape[1])
    right = torch.zeros((), dtype=torch.float64, device=device)
    for chunk in rows.split(per_batch):
        right += answers_correct(model, chunk.to(device), answer_len).sum()
    return float(world.sum(right)) / examples.shape[0]


def train_length(task: Task, cfg: TrainConfig, step: int) -> int:
    """Length of the examples of training step ``step``: uniform in ``[task.min_length, L]``, drawn from
    ``(seed, step)``. Training on every length up to ``L`` (as Kazemnejad et al. 2023 do) lets the short, easy
    instances teach the task early; no example is longer than ``L``."""
    gen = random.Random(f"{task.name}/length/{cfg.seed}/{step}")
    return gen.randint(min(task.min_length, cfg.train_len), cfg.train_len)


def task_batches(task: Task, cfg: TrainConfig) -> BatchFn:
    """Training batches of ``task``: step ``t`` holds examples ``t*B .. (t+1)*B - 1`` of the train split of
    ``cfg.seed``, all of :func:`train_length` bytes; each rank takes its own contiguous rows of them."""

    def draw(step: int, world: World) -> Tensor:
        if cfg.batch_size % world.size:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the ranks ({world.size})")
        per = cfg.batch_size // world.size
        start = step * cfg.batch_size + world.rank * per
        return task.batch(train_length(task, cfg, step), per, split="train", seed=cfg.seed, start=start)

    return draw


def task_loss(task: Task) -> LossFn:
    """:func:`answer_loss` with the answer length of ``task`` at the batch's length."""
    return lambda model, batch: answer_loss(model, batch, task.answer_length(batch.shape[1]))


# -- one (task, encoding, seed) ---------------------------------------------------------------------------------
@dataclass
class TaskContext:
    """What every model of one run shares: configuration, held-out examples (built once), where it runs."""

    cfg: TasksConfig
    out: Path
    device: torch.device
    world: World = SINGLE
    progress: bool = False
    _tests: dict[tuple[str, int, float | None], Tensor] = field(default_factory=dict)

    def checkpoint(self, task: str, encoding: str, seed: int) -> Path:
        return self.out / "checkpoints" / task / f"{file_stem(encoding)}-s{seed}.pt"

    def groups(self, task: Task) -> list[float | None]:
        """The depth groups evaluated: passkey's depths, one group (None) for the other tasks."""
        return list(self.cfg.depths) if task.name == "passkey" else [None]

    def test_set(self, task: Task, length: int, depth: float | None) -> Tensor:
        """``(n, length)`` held-out examples (the same for every seed and encoding): ``eval_examples`` per length,
        split evenly over the depth groups."""
        key = (task.name, length, depth)
        if key not in self._tests:
            n = max(1, self.cfg.eval_examples // len(self.groups(task)))
            self._tests[key] = task.batch(length, n, split="test", seed=0, depth=depth)
        return self._tests[key]


@dataclass
class ModelRun:
    """One trained model's record. ``cells[row][length][group]``: accuracy per length and depth group (group
    ``"all"`` when the task has no depths); ``None`` where the model cannot take the length."""

    losses: list[float]
    train_seconds: float
    eval_seconds: float
    cells: dict[str, dict[str, dict[str, float | None]]]
    resumed: bool


def group_key(depth: float | None) -> str:
    """The key of a depth group in a record's cells: the passkey depth (``0.25``), ``all`` for other tasks."""
    return "all" if depth is None else f"{depth:g}"


def evaluate_model(
    model: TransformerLM, task: Task, ctx: TaskContext, row: str
) -> dict[str, dict[str, float | None]]:
    """Accuracy per length and depth group of ``model``; ``row`` "<enc>+<method>" applies that RoPE extension
    (factor from the length, as in ``posenc compare``) beyond the training length."""
    train_len, limit = ctx.cfg.train.train_len, model.max_length
    method = row.split("+", 1)[1] if "+" in row else None
    out: dict[str, dict[str, float | None]] = {}
    for length in ctx.cfg.lengths:
        cells: dict[str, float | None] = {}
        scaling = (
            rope_extensions()[method].extension(train_len, length) if method and length > train_len else None
        )
        for depth in ctx.groups(task):
            if limit is not None and length > limit:
                cells[group_key(depth)] = None
                continue
            examples = ctx.test_set(task, length, depth)
            answer_len = task.answer_length(length)
            kwargs: dict[str, Any] = {
                "device": ctx.device,
                "batch_tokens": ctx.cfg.batch_tokens,
                "world": ctx.world,
            }
            if scaling is None:
                cells[group_key(depth)] = accuracy(model, examples, answer_len, **kwargs)
            else:
                with rope_scaled(model, scaling) as scaled:
                    cells[group_key(depth)] = accuracy(scaled, examples, answer_len, **kwargs)
        out[str(length)] = cells
    return out


def row_names(encoding: str, model: TransformerLM) -> list[str]:
    """The encoding, plus ``<encoding>+<method>`` per available RoPE extension when the model is plain RoPE."""
    extra = [f"{encoding}+{m}" for m in rope_extensions()] if supports_rope_extension(model) else []
    return [encoding, *extra]


def checked_checkpoint(task: Task, encoding: str, seed: int, ctx: TaskContext) -> dict[str, Any] | None:
    """The checkpoint of ``(task, encoding, seed)`` with every field a rerun reads checked, or None when there is
    none; :func:`~posenc.experiments.tasks.experiment.run_tasks` checks every model's before training any.

    Raises:
        ValueError: the checkpoint was made with another configuration or for something else, or holds a field
            that cannot be read back (:func:`~posenc.experiments.records.task_checkpoint_problem`); the message
            names the file.
    """
    path = ctx.checkpoint(task.name, encoding, seed)
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    fp = ctx.cfg.fingerprint()
    diffs = flag_differences(ckpt.get("config", {}), fp)
    owner = (ckpt.get("task"), ckpt.get("encoding"), ckpt.get("seed"))
    what = f"retrain {task.name}/{encoding} seed {seed}"
    if diffs or owner != (task.name, encoding, seed):
        theirs = f"a checkpoint of {owner[0]}/{owner[1]}/seed {owner[2]}, not of {task.name}/{encoding}/seed {seed}"
        raise checkpoint_refusal(path, diffs or [theirs], what)
    groups = [group_key(d) for d in ctx.groups(task)]
    bad = task_checkpoint_problem(ckpt, encoding, ctx.cfg.lengths, groups)
    if bad is not None:
        raise damaged_checkpoint(path, bad, what)
    return ckpt


def load_model_run(
    task: Task, encoding: str, seed: int, ctx: TaskContext
) -> tuple[TransformerLM, ModelRun] | None:
    """The model and record from the checkpoint of ``(task, encoding, seed)``, or None when there is none.

    Raises:
        ValueError: the checkpoint does not belong to this run or is damaged (:func:`checked_checkpoint`).
    """
    ckpt = checked_checkpoint(task, encoding, seed, ctx)
    if ckpt is None:
        return None
    model = build_model(encoding, replace(ctx.cfg.train, seed=seed))
    with reading_checkpoint(
        ctx.checkpoint(task.name, encoding, seed), f"retrain {task.name}/{encoding} seed {seed}"
    ):
        model.load_state_dict(ckpt["state_dict"])
        run = ModelRun(
            [float(x) for x in ckpt["losses"]],
            float(ckpt["train_seconds"]),
            float(ckpt["eval_seconds"]),
            dict(ckpt["cells"]),
            resumed=True,
        )
    model.to(ctx.device).eval()
    return model, run


def train_model_run(task: Task, encoding: str, seed: int, ctx: TaskContext) -> tuple[TransformerLM, ModelRun]:
    """Train ``encoding`` on ``task`` from scratch with ``seed`` (nothing evaluated yet)."""
    cfg = replace(ctx.cfg.train, seed=seed)
    result = train_model(
        encoding,
        None,
        cfg,
        device=ctx.device,
        world=ctx.world,
        progress=ctx.progress,
        batches=task_batches(task, cfg),
        loss_fn=task_loss(task),
        desc=f"{task.name} {encoding} s{seed}",
    )
    log.info(
        "%s/%s/s%d: trained in %.1f s, final loss %.3f",
        task.name,
        encoding,
        seed,
        result.seconds,
        result.losses[-1],
    )
    return result.model, ModelRun(result.losses, result.seconds, 0.0, {}, resumed=False)


def run_one(task: Task, encoding: str, seed: int, ctx: TaskContext) -> ModelRun:
    """Train (or load) one model, evaluate every row it lacks, save its checkpoint (rank 0)."""
    loaded = load_model_run(task, encoding, seed, ctx)
    model, run = loaded if loaded is not None else train_model_run(task, encoding, seed, ctx)
    missing = [r for r in row_names(encoding, model) if r not in run.cells]
    start = time.perf_counter()
    for row in missing:
        run.cells[row] = evaluate_model(model, task, ctx, row)
    run.eval_seconds += time.perf_counter() - start
    if missing and ctx.world.is_main:
        save_checkpoint(
            ctx.checkpoint(task.name, encoding, seed),
            encoding=encoding,
            task=task.name,
            seed=seed,
            config=ctx.cfg.fingerprint(),
            state_dict=cpu_state(model),
            losses=run.losses,
            train_seconds=run.train_seconds,
            eval_seconds=run.eval_seconds,
            cells=run.cells,
        )
    ctx.world.barrier()
    return run


def check_config(ctx: TaskContext, keys: list[tuple[str, str, int]]) -> None:
    """Refuse ``out`` holding a run of another configuration; on a fresh folder (no ``config.json``) refuse a
    checkpoint of ``keys`` (task, encoding, seed) already there that is not this run's, then rank 0 writes
    ``config.json``: a refused run leaves the folder as it was."""

    def first() -> None:
        for task, encoding, seed in keys:
            checked_checkpoint(get_task(task), encoding, seed, ctx)

    check_run_folder(ctx.out, ctx.cfg.fingerprint(), write=ctx.world.is_main, first=first)
    ctx.world.barrier()
