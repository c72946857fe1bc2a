"""Training one small byte-level language model per encoding, deterministically and data-parallel.

Every encoding sees the same batches: batch ``t`` is drawn from a generator seeded by ``(seed, t)``, so runs with
the same seed are identical on one machine whatever else ran before, and a resumed run trains the missing
encodings exactly as a fresh one would, given the same intra-op threads per model (CPU reductions split by
thread: a model trained on 2 threads differs from one trained on 1 in the last bits; ``posenc compare`` records
each model's ``threads``). Under ``torchrun`` each rank takes its own rows of that same global batch
(``batch_size / world`` each), and DDP averages the gradients, which is the single-process gradient of the
global batch.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..models import TransformerLM
from ..registry import encoding_class
from ..validation import check_bool, check_float, check_int, check_seed
from .dist import SINGLE, World
from .specs import parse_spec

log = logging.getLogger(__name__)
#: Seeds are below this (batch ``t`` seeds a generator with ``seed * 1_000_003 + t``, which must fit 64 bits).
MAX_SEED = 2**32

#: The progress bar shows the loss every this many steps (one host sync each).
LOG_EVERY = 50

#: Values of ``TrainConfig.precision``.
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (a CPU with AVX-512 BF16 or AMX, through oneDNN;
    a CUDA device of compute capability 8.0 or more); elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`native_bf16`, else ``"fp32"``; other values unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast_loss(loss_fn: LossFn, precision: str, device: torch.device) -> LossFn:
    """``loss_fn`` with its forward under ``torch.autocast(bfloat16)`` for ``precision == "bf16"`` (the backward
    runs outside, as autocast recommends); ``loss_fn`` itself for ``"fp32"``."""
    if precision == "fp32":
        return loss_fn
    if precision != "bf16":
        raise ValueError(f"precision must be fp32 or bf16 here (resolve 'auto' first), got {precision!r}")

    def mixed(net: nn.Module, batch: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return loss_fn(net, batch)

    return mixed


@dataclass(frozen=True)
class TrainConfig:
    """Model sizes and the optimisation budget (the same for every encoding).

    Attributes:
        dim, depth, heads: :class:`posenc.models.TransformerLM` sizes.
        train_len: ``L``, the training context in bytes.
        batch_size: global batch (sequences per step, over all ranks).
        steps: optimiser steps.
        lr: peak AdamW learning rate (> 0), reached after the first ``warmup_fraction`` (in ``[0, 1)``) of the
            steps, then cosine decay towards ``lr * min_lr_ratio`` (``min_lr_ratio`` in ``[0, 1]``); see
            :func:`lr_factor`.
        weight_decay: AdamW decay on matrices (not on biases and norms).
        grad_clip: the largest global gradient norm (> 0; larger gradients are scaled down to it).
        seed: seeds the initial weights and the batches (batch ``t`` from ``seed * 1_000_003 + t``: beyond
            1,000,003 steps a seed's batches would repeat the next seed's).
        scale_embeddings: multiply token embeddings by ``sqrt(dim)`` (Vaswani et al. 2017; fairseq, hence
            Press et al. 2022). Without it a fixed sinusoidal table swamps the small tied embeddings.
        compile: run the model's forward and backward through ``torch.compile`` (worth its compile time only
            for long runs; see ``posenc bench --suite train``).
        precision: ``"fp32"``; ``"bf16"``: mixed precision, the forward under ``torch.autocast`` in bfloat16
            (float32 weights, optimizer and loss; on a CPU, attention in float32, see
            :mod:`posenc.attention.backends`); ``"auto"``: ``bf16`` where the device computes in bfloat16
            natively, else ``fp32`` (:func:`resolve_precision`; ``posenc compare`` records the choice).
    """

    dim: int = 128
    depth: int = 4
    heads: int = 4
    train_len: int = 128
    batch_size: int = 8
    steps: int = 400
    lr: float = 2e-3
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    scale_embeddings: bool = True
    compile: bool = False
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "train_len", "batch_size", "steps"):
            check_int(name, getattr(self, name), at_least=1)
        check_float("lr", self.lr, above=0)
        check_float("warmup_fraction", self.warmup_fraction, at_least=0, below=1)
        check_float(
            "min_lr_ratio", self.min_lr_ratio, at_least=0, at_most=1
        )  # above 1 the "decay" would rise
        check_float("weight_decay", self.weight_decay, at_least=0)
        check_float("grad_clip", self.grad_clip, above=0)  # a clip of 0 scales every gradient to zero
        check_bool("scale_embeddings", self.scale_embeddings)
        check_bool("compile", self.compile)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_seed("seed", self.seed, low=0, high=MAX_SEED - 1)
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")

    @property
    def warmup(self) -> int:
        """Warmup steps: ``steps * warmup_fraction`` rounded down, as the decimal fraction reads (100 steps at
        0.29 warm up for 29, though ``100 * 0.29`` is 28.999999999999996 in binary floating point)."""
        return math.floor(round(self.steps * self.warmup_fraction, 6))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Measures a model during training (e.g. validation perplexity at L and 4L): ``model -> {key: value}``.
Probe = Callable[[TransformerLM], dict[str, float | None]]


@dataclass
class TrainResult:
    """A trained model and how it got there.

    Attributes:
        losses: ``losses[t]`` is the mean training loss of step ``t`` (nats per byte, over the global batch).
        seconds: wall time of the whole call (building, compiling, training, probing).
        curve: ``{"steps": [...], key: [...]}``: the probe's values after each of ``steps`` steps (empty without
            a probe).
        tokens_per_second: training tokens (all ranks) per second of steady stepping: the first step (where
            ``torch.compile`` compiles) and the probes are left out.
        first_step_seconds: the first step's wall time (with ``compile``, mostly compilation).
    """

    model: TransformerLM
    losses: list[float]
    seconds: float
    curve: dict[str, list[Any]] = field(default_factory=dict)
    tokens_per_second: float = 0.0
    first_step_seconds: float = 0.0


def probe_steps(steps: int, points: int) -> list[int]:
    """After how many steps a learning curve is measured: ``points`` evenly spaced marks (the last is ``steps``),
    plus the mark at 90 % so that the last tenth of training can be judged. Empty for ``points <= 0``."""
    if points <= 0:
        return []
    marks = {max(1, round(steps * i / points)) for i in range(1, points + 1)}
    return sorted(marks | {max(1, int(steps * 0.9))})


def encoding_options(encoding: str, cfg: TrainConfig) -> dict[str, Any]:
    """Build options of ``encoding`` (a name or a spec such as ``alibi:max_bias=4``,
    :mod:`posenc.experiments.specs`) for training at ``cfg.train_len``: its class's ``training_options`` (e.g. a
    learned table gets exactly ``train_len`` rows, as the paper's learned baselines, so longer lengths are n/a),
    then the spec's own options over them."""
    spec = parse_spec(encoding)
    return {**encoding_class(spec.name).training_options(cfg.train_len), **spec.build_options()}


def build_model(encoding: str, cfg: TrainConfig) -> TransformerLM:
    """A fresh :class:`TransformerLM` for ``encoding`` (a name or a spec with options), initialised from
    ``cfg.seed`` (global RNG untouched)."""
    options = encoding_options(encoding, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return TransformerLM(
            parse_spec(encoding).name,
            dim=cfg.dim,
            depth=cfg.depth,
            heads=cfg.heads,
            position_options=options,
            embed_scale=cfg.dim**0.5 if cfg.scale_embeddings else 1.0,
        )


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier of the 0-based ``step`` (of ``cfg.steps``), with ``W = cfg.warmup``:

    - warmup, ``step < W``: ``(step + 1) / W`` (never 0, so the first step moves; 1 at ``step = W - 1``);
    - then a half cosine from 1 at ``step = W`` down to ``min_lr_ratio`` at ``step = cfg.steps``, the step after
      the last (the usual convention, e.g. ``transformers``' cosine schedule): the last step runs a hair above the
      floor (at 1,200 steps, 2e-6 of the peak above it; at 10 steps with no warmup, 0.02).
    """
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_starts(n_tokens: int, step: int, cfg: TrainConfig) -> Tensor:
    """``(batch_size,)`` start offsets of the global batch of ``step`` (windows of ``train_len + 1`` tokens)."""
    limit = n_tokens - cfg.train_len  # last valid start + 1
    if limit <= 0:
        raise ValueError(
            f"{n_tokens} training tokens cannot hold a window of train_len + 1 = {cfg.train_len + 1}"
        )
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return torch.randint(0, limit, (cfg.batch_size,), generator=gen)


def sample_batch(tokens: Tensor, step: int, cfg: TrainConfig, world: World = SINGLE) -> Tensor:
    """This rank's rows of the global batch of ``step``: ``(batch_size / world.size, train_len + 1)`` long."""
    if cfg.batch_size % world.size:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the number of ranks ({world.size})"
        )
    per_rank = cfg.batch_size // world.size
    starts = batch_starts(tokens.numel(), step, cfg)[world.rank * per_rank : (world.rank + 1) * per_rank]
    idx = starts.unsqueeze(-1) + torch.arange(cfg.train_len + 1)  # (b, L + 1)
    return tokens[idx].long()


def lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    """Mean next-byte cross-entropy (nats) of ``batch: (B, S + 1)``: predict ``batch[:, 1:]`` from ``batch[:, :-1]``."""
    logits = model(batch[:, :-1])  # (B, S, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device, fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW with decay on matrices only; ``fused`` (one kernel for all parameters; default: where torch has it
    for ``device``), else multi-tensor; ``fused=False`` is torch's default implementation (the reference)."""
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if fused is False:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    fused = device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in params)
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused, foreach=None if fused else True
    )


def make_step(
    net: nn.Module,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    grad_clip: float,
    loss_fn: Callable[[nn.Module, Tensor], Tensor] = lm_loss,
) -> Callable[[Tensor], Tensor]:
    """One optimiser step on a batch ``(B, L + 1)``: loss, backward, clip, update; returns the detached loss
    (never read here, so the host does not wait for the step). ``net`` may be ``model`` compiled or under DDP."""

    def step(batch: Tensor) -> Tensor:
        loss = loss_fn(net, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
        opt.step()
        return loss.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: ``batches(step, world)``: this rank's rows of the global batch of ``step``, ``(B / W, S)`` long.
BatchFn = Callable[[int, World], Tensor]
#: ``loss(model, batch)``: the scalar training loss of a batch.
LossFn = Callable[[nn.Module, Tensor], Tensor]


def train_model(
    encoding: str,
    tokens: Tensor | None,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    world: World = SINGLE,
    progress: bool = True,
    batches: BatchFn | None = None,
    loss_fn: LossFn = lm_loss,
    desc: str | None = None,
    probe: Probe | None = None,
    probe_points: int = 20,
) -> TrainResult:
    """Train a :class:`TransformerLM` with ``encoding`` on ``tokens`` for ``cfg.steps`` steps.

    Args:
        encoding: a name from :func:`posenc.available`.
        tokens: ``(N,)`` uint8 training bytes (windows drawn by :func:`sample_batch`); None with ``batches``.
        cfg: sizes and budget.
        device: where to train (this rank's device under DDP).
        world: the data-parallel ranks (see :func:`posenc.experiments.dist.setup_world`).
        progress: show a tqdm bar on stderr (rank 0 only).
        batches: draws the batches instead of ``tokens`` (``posenc tasks``: generated examples).
        loss_fn: the loss of a batch; default next-byte cross-entropy on every byte (:func:`lm_loss`).
        desc: the progress bar's label (default ``train <encoding>``).
        probe: measured ``probe_points`` times during training (:func:`probe_steps`) -> ``TrainResult.curve``.

    Losses stay on the device during training and are read once at the end (the progress bar reads one every
    :data:`LOG_EVERY` steps), so the host never waits for a step to finish.

    Returns:
        The model (unwrapped, in eval mode), the per-step global mean losses, the wall time, the curve and the
        steady throughput.
    """
    if batches is None:
        if tokens is None:
            raise ValueError("train_model needs tokens or batches")
        data = tokens
        batches = lambda step, w: sample_batch(data, step, cfg, w)  # noqa: E731
    device = torch.device(device)
    start = time.perf_counter()
    model = build_model(encoding, cfg).to(device)
    model.train()
    net: nn.Module = model
    if world.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = cast(nn.Module, torch.compile(net))  # an OptimizedModule
    opt = make_optimizer(model, cfg, device)
    loss_fn = autocast_loss(loss_fn, resolve_precision(cfg.precision, device), device)
    train_step = make_step(net, model, opt, cfg.grad_clip, loss_fn)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    step_losses = torch.zeros(cfg.steps, device=device)  # on device: no host sync per step
    marks = set(probe_steps(cfg.steps, 0 if probe is None else probe_points))
    curve: dict[str, list[Any]] = {"steps": []} if marks else {}
    bar = tqdm(
        range(cfg.steps),
        desc=desc or f"train {encoding}",
        file=sys.stderr,
        disable=not (progress and world.is_main),
        leave=False,
        dynamic_ncols=True,
    )
    first = aside = 0.0
    loop_start = time.perf_counter()
    for step in bar:
        t0 = time.perf_counter()
        batch = batches(step, world).to(device)  # (B / W, S)
        step_losses[step] = train_step(batch)
        sched.step()
        if step == 0:
            _sync(device)
            first = time.perf_counter() - t0
        if step + 1 in marks and probe is not None:
            t1 = time.perf_counter()
            _probe(model, probe, step + 1, curve)
            aside += time.perf_counter() - t1
        if (step % LOG_EVERY == 0 or step == cfg.steps - 1) and not bar.disable:
            bar.set_postfix(loss=f"{float(step_losses[step]):.3f}")
    bar.close()
    _sync(device)
    losses = (world.sum(step_losses) / world.size).tolist()  # the one read of the losses
    seconds = time.perf_counter() - start
    steady = time.perf_counter() - loop_start - first - aside
    if not all(math.isfinite(x) for x in losses):
        log.warning("training %s produced a non-finite loss; its perplexities will be inf", encoding)
    model.eval()
    tokens_done = (cfg.steps - 1) * cfg.batch_size * cfg.train_len
    rate = tokens_done / steady if cfg.steps > 1 and steady > 0 else 0.0
    return TrainResult(model, losses, seconds, curve, rate, first)


def _probe(model: TransformerLM, probe: Probe, step: int, curve: dict[str, list[Any]]) -> None:
    """Append ``probe(model)`` (in eval mode, no gradients) at ``step`` to ``curve``."""
    model.eval()
    with torch.no_grad():
        values = probe(model)
    model.train()
    curve["steps"].append(step)
    for key, value in values.items():
        curve.setdefault(key, []).append(value)
