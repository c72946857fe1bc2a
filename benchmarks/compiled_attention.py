"""Compiled bf16 training step on a CPU: attention through ``sdpa`` in float32 against ``auto`` (``math``).

Under ``torch.compile`` on a CPU in bf16 autocast, ``backend="auto"`` attends through ``math`` (inductor fuses
the bias, mask and softmax; float32 logits from bfloat16 operands, ``probs @ v`` in bfloat16), where before it took ``sdpa`` in float32 (see
``posenc.attention.backends.choose_backend``, rule 3). For each encoding, the compare model (4 layers, dim 128,
batch 8 x 128, fused AdamW) is built twice from one seed, ``backend="sdpa"`` and ``backend="auto"``, both
compiled, and their steps take turns in one process on one thread; the median of ``--rounds`` rounds of
``--steps`` steps gives ms per step.

Usage: ``python benchmarks/compiled_attention.py [--encodings rope,alibi] [--rounds 7] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from posenc.experiments.train import (
    TrainConfig,
    autocast_loss,
    encoding_options,
    lm_loss,
    make_optimizer,
    make_step,
)
from posenc.models import TransformerLM


def _step(encoding: str, backend: str, cfg: TrainConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    torch.manual_seed(cfg.seed)
    model = TransformerLM(
        encoding,
        dim=cfg.dim,
        depth=cfg.depth,
        heads=cfg.heads,
        position_options=encoding_options(encoding, cfg),
        embed_scale=cfg.dim**0.5,
        backend=backend,
    ).train()
    cpu = torch.device("cpu")
    loss = autocast_loss(lm_loss, "bf16", cpu)
    return make_step(torch.compile(model), model, make_optimizer(model, cfg, cpu), cfg.grad_clip, loss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encodings", default="rope,alibi,kerple,t5,fire")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig()
    batch = torch.randint(
        0, 256, (cfg.batch_size, cfg.train_len + 1), generator=torch.Generator().manual_seed(0)
    )
    print("| encoding | sdpa (float32) ms/step | auto (math, bf16) ms/step | auto ÷ sdpa |")
    print("|---|---|---|---|")
    for name in args.encodings.split(","):
        torch._dynamo.reset()  # two compiles per encoding: stay below dynamo's recompile limit
        steps = {b: _step(name, b, cfg) for b in ("sdpa", "auto")}
        for step in steps.values():  # compile, then warm up
            for _ in range(3):
                step(batch)
        times: dict[str, list[float]] = {b: [] for b in steps}
        for _ in range(args.rounds):
            for b, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(batch)
                times[b].append((time.perf_counter() - start) / args.steps * 1e3)
        sdpa, auto = (statistics.median(times[b]) for b in ("sdpa", "auto"))
        print(f"| {name} | {sdpa:.1f} | {auto:.1f} | {auto / sdpa:.2f} |", flush=True)


if __name__ == "__main__":
    main()
