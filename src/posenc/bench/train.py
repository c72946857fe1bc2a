"""``posenc bench --suite train``: training throughput of ``posenc compare``'s model, before and after.

One optimiser step of the default model (:class:`posenc.experiments.train.TrainConfig`: 4 layers, dim 128,
batch 8 x 128 bytes) per call, timed round-robin in one process so the rows share the machine's load:

* ``eager (before)``: the step ``posenc compare`` took before issue #13: torch's default AdamW, default gradient
  clipping, and the loss read on the host after every step (one sync per step);
* ``fused``: fused AdamW, multi-tensor clipping, the loss left on the device (today's default step);
* ``compiled``: the same with ``torch.compile`` of the model (not with ``--quick``: compiling takes tens of
  seconds on a CPU, reported as ``compile_s``).
* ``..., bf16``: the same steps in mixed precision (``posenc compare --precision bf16``: bfloat16 products under
  autocast, float32 weights and optimizer; on a CPU attention runs in float32 through SDPA eager, and
  compiled through ``math``, float32 logits and a bfloat16 ``probs @ v``, see :func:`posenc.attention.backends.choose_backend`),
  where the device computes in bfloat16 natively (:func:`posenc.experiments.train.native_bf16`).
* ``fused, N at a time``: on a CPU with N > 1 cores (not with ``--quick``), N worker processes of one thread
  each run the fused step together (and, where bf16 is native, the fused and the compiled bf16 steps), as
  ``posenc compare --jobs N`` trains; from one common start each times
  its own steps, and the row's time per step is the one that gives their summed throughput (so ``ratio`` and
  ``tokens_per_s`` compare with the one-process rows).

``ratio`` is each row's time per step over the ``eager (before)`` row's; ``tokens_per_s`` counts the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from ..experiments.pool import available_cores, map_jobs
from ..experiments.train import (
    TrainConfig,
    autocast_loss,
    build_model,
    lm_loss,
    make_optimizer,
    make_step,
    native_bf16,
    sample_batch,
)
from .runner import error_note, synchronize, time_round_robin
from .suites import Row, register_suite

ENCODINGS = ("rope", "alibi")


def _before(model: nn.Module, cfg: TrainConfig) -> Callable[[Tensor], object]:
    opt = make_optimizer(model, cfg, torch.device("cpu"), fused=False)

    def step(batch: Tensor) -> object:
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        return float(loss.detach())  # the host waits for every step

    return step


def _steps(
    encoding: str, cfg: TrainConfig, device: str, quick: bool
) -> dict[str, Callable[[Tensor], object]]:
    dev = torch.device(device)
    steps: dict[str, Callable[[Tensor], object]] = {}
    if dev.type == "cpu":
        steps["eager (before)"] = _before(build_model(encoding, cfg).to(dev).train(), cfg)
    mixed = ("fp32", "bf16") if native_bf16(dev) else ("fp32",)
    for compiled in (False, True) if not quick else (False,):
        for precision in mixed:
            name = ("compiled" if compiled else "fused") + (", bf16" if precision == "bf16" else "")
            steps[name] = _step(encoding, cfg, dev, compiled, precision)
    return steps


def _step(
    encoding: str, cfg: TrainConfig, dev: torch.device, compiled: bool, precision: str
) -> Callable[[Tensor], object]:
    """Today's step (fused AdamW, multi-tensor clipping, loss left on the device), compiled or not, in float32
    or mixed precision (``posenc compare``'s ``--precision``)."""
    model = build_model(encoding, cfg).to(dev).train()
    net = cast(nn.Module, torch.compile(model)) if compiled else model
    loss = autocast_loss(lm_loss, precision, dev)
    return make_step(net, model, make_optimizer(model, cfg, dev), cfg.grad_clip, loss)


def _timed_steps(
    encoding: str, cfg: TrainConfig, start_at: float, steps: int, precision: str, compiled: bool
) -> float:
    """In a worker: the step's seconds per step over ``steps`` steps, begun at wall time ``start_at`` (after a
    warm-up, which compiles a compiled step), so that every worker's timing window is the same."""
    step = _step(encoding, cfg, torch.device("cpu"), compiled, precision)
    tokens = torch.randint(0, 256, (100_000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    batch = sample_batch(tokens, 0, cfg)
    for _ in range(3):
        step(batch)
    time.sleep(max(0.0, start_at - time.time()))
    begin = time.perf_counter()
    for _ in range(steps):
        step(batch)
    return (time.perf_counter() - begin) / steps


def _side_by_side(
    encoding: str,
    cfg: TrainConfig,
    workers: int,
    precision: str,
    compiled: bool = False,
    steps: int = 40,
    lead: float = 15.0,
) -> float:
    """Seconds per step of ``workers`` one-thread processes together: 1 / (sum of their steps per second).
    ``lead``: seconds from now to the common start, past every worker's start-up (spawn, imports) and warm-up
    (compilation included)."""
    start_at = time.time() + lead
    per_worker = map_jobs(
        _timed_steps,
        [(encoding, cfg, start_at, steps, precision, compiled)] * workers,
        workers=workers,
        threads=1,
    )
    return 1.0 / sum(1.0 / s for s in per_worker)


@register_suite("train")
def train_suite(quick: bool, device: str) -> list[Row]:
    """Seconds per training step of the compare model, eager before #13 vs fused vs compiled (each in float32
    and, where native, mixed precision), and on a CPU the fused step in one process per core.

    Args:
        quick: a 1-layer dim-32 model, 3 rounds, no compiled row (for tests).
        device: ``"cpu"`` or ``"cuda"`` (on CUDA the fused step is the baseline).

    Returns:
        One row per (encoding, step) with ``median_ms``, ``tokens_per_s``, ``ratio`` and, for the compiled row,
        ``compile_s`` (its first step).
    """
    cfg = TrainConfig(dim=32, depth=1, heads=2, train_len=32) if quick else TrainConfig()
    tokens = torch.randint(0, 256, (100_000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    batch = sample_batch(tokens, 0, cfg).to(device)
    rows: list[Row] = []
    for encoding in ENCODINGS:
        steps = _steps(encoding, cfg, device, quick)
        baseline = next(iter(steps))  # the step the others are measured against (the ratio's denominator)
        compile_s, errors = {}, {}
        for name in [n for n in steps if n.startswith("compiled")]:
            start = time.perf_counter()
            try:
                steps[name](batch)
                synchronize(device)
            except Exception as err:  # noqa: BLE001 - the row says why; the other steps are still timed
                errors[name] = error_note(err)
                continue
            compile_s[name] = time.perf_counter() - start
        fns = {name: (lambda fn=fn: fn(batch)) for name, fn in steps.items() if name not in errors}
        medians = time_round_robin(
            fns, device, repeats=3 if quick else 15, warmup=1 if quick else 3, errors=errors
        )
        workers = available_cores()
        if device == "cpu" and workers > 1 and not quick:
            mixed = native_bf16(torch.device(device))
            for precision, compiled in (
                ("fp32", False),
                *((("bf16", False), ("bf16", True)) if mixed else ()),
            ):
                name = ("compiled" if compiled else "fused") + (", bf16" if precision == "bf16" else "")
                medians[f"{name}, {workers} at a time (1 thread each)"] = _side_by_side(
                    encoding, cfg, workers, precision, compiled, lead=60.0 if compiled else 15.0
                )
        base = medians.get(
            baseline
        )  # (None when the baseline itself failed: no ratio then, not another base)
        for name in errors:
            rows.append({"encoding": encoding, "step": name, "status": errors[name], "ratio_to": baseline})
        for name, seconds in medians.items():
            row: Row = {
                "encoding": encoding,
                "step": name,
                "batch": f"{cfg.batch_size}x{cfg.train_len}",
                "median_ms": round(seconds * 1e3, 2),
                "tokens_per_s": round(cfg.batch_size * cfg.train_len / seconds),
                "ratio": None if base is None else round(seconds / base, 3),
                "ratio_to": baseline,
            }
            if name in compile_s:
                row["compile_s"] = round(compile_s[name], 1)
            rows.append(row)
    return rows
