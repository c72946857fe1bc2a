"""``posenc bench --suite train``: training throughput of ``posenc compare``'s model, before and after.

One optimiser step of the default model (:class:`posenc.experiments.train.TrainConfig`: 4 layers, dim 128,
batch 8 x 128 bytes) per call, timed round-robin in one process so the rows share the machine's load:

* ``eager (before)``: the step ``posenc compare`` took before issue #13: torch's default AdamW, default gradient
  clipping, and the loss read on the host after every step (one sync per step);
* ``fused``: fused AdamW, multi-tensor clipping, the loss left on the device (today's default step);
* ``compiled``: the same with ``torch.compile`` of the model (not with ``--quick``: compiling takes tens of
  seconds on a CPU, reported as ``compile_s``).

``ratio`` is each row's time per step over the ``eager (before)`` row's; ``tokens_per_s`` counts the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..experiments.train import TrainConfig, build_model, lm_loss, make_optimizer, make_step, sample_batch
from .runner import synchronize, time_round_robin
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
    before = build_model(encoding, cfg).to(dev).train()
    if dev.type == "cpu":
        steps["eager (before)"] = _before(before, cfg)
    fused = build_model(encoding, cfg).to(dev).train()
    steps["fused"] = make_step(fused, fused, make_optimizer(fused, cfg, dev), cfg.grad_clip)
    if not quick:
        compiled = build_model(encoding, cfg).to(dev).train()
        net = torch.compile(compiled)
        steps["compiled"] = make_step(net, compiled, make_optimizer(compiled, cfg, dev), cfg.grad_clip)  # type: ignore[arg-type]
    return steps


@register_suite("train")
def train_suite(quick: bool, device: str) -> list[Row]:
    """Seconds per training step of the compare model, eager before #13 vs fused vs compiled.

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
        compile_s = None
        if "compiled" in steps:
            start = time.perf_counter()
            steps["compiled"](batch)
            synchronize(device)
            compile_s = time.perf_counter() - start
        fns = {name: (lambda fn=fn: fn(batch)) for name, fn in steps.items()}
        medians = time_round_robin(fns, device, repeats=3 if quick else 15, warmup=1 if quick else 3)
        base = next(iter(medians.values()))
        for name, seconds in medians.items():
            row: Row = {
                "encoding": encoding,
                "step": name,
                "batch": f"{cfg.batch_size}x{cfg.train_len}",
                "median_ms": round(seconds * 1e3, 2),
                "tokens_per_s": round(cfg.batch_size * cfg.train_len / seconds),
                "ratio": round(seconds / base, 3),
            }
            if name == "compiled" and compile_s is not None:
                row["compile_s"] = round(compile_s, 1)
            rows.append(row)
    return rows
