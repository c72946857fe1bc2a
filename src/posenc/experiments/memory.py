"""Memory estimates of training on a CPU: :func:`check_training_memory` refuses, before anything is built or
written, a run that would not fit in the machine's memory (the process would be killed without a message).
The per-encoding part comes from :mod:`posenc.attention.memory` (what each encoding's attention keeps for
backward), shared with ``generate``'s check."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..attention import Attention
    from .train import TrainConfig


#: Memory a training process takes whatever the sizes, in bytes: AdamW's first step, kernels loaded on first use,
#: and the compilation of RoPE's fused CPU kernel on its first call (q and k of 2^20 elements up: 64 MiB at L = 4096).
TRAINING_FIXED_BYTES = 96 << 20


def training_bytes(train: TrainConfig, encoding: str | None = None) -> int:
    """An estimate, erring high, of the memory one model's training on a CPU takes: fp32 weights, gradients,
    AdamW's two moments and its temporaries (byte vocabulary of 256, tied head, four-wide MLP), the activations a
    step keeps for backward (28 ``dim``-wide values per token and layer, and the head's 256-wide logits and
    their gradients; 16 were too few at batch 8: rope at L = 1024, depth 4 took 1.33x that estimate), and with ``encoding`` (a spec) the ``(L, L)`` tensors of its attention on the backend it
    trains with (:func:`posenc.attention.memory.training_bytes`: a materialized bias and its masked copy, Shaw's
    attention weights and indices, FIRE's ``(L, L, width)`` hidden layer, kept per layer for backward).

    Peak resident memory of one AdamW step over this estimate (the first step, in a fresh process with
    ``MALLOC_MMAP_THRESHOLD_=65536``; dim 128, depth 2, 4 heads, batch 1; one thread, 2-core AMD EPYC, torch 2.13
    CPU, 2026-11-30; the estimate before review s6 counted one ``(heads, L, L)`` float32 tensor per layer and was
    2.3x to 14x below the peak for T5, Kerple, Shaw and FIRE):

    ======  ======  ======  ======  ======  ======  ======  ======
    L       none    rope    alibi   t5      kerple  shaw    fire
    ======  ======  ======  ======  ======  ======  ======  ======
    1024    0.26    0.25    0.36    0.52    0.56    0.44    0.80
    2048    0.37    0.37    0.52    0.74    0.71    0.56    0.88
    4096    0.50    0.85    0.60    0.85    0.76    0.61    --
    8192    0.65    0.91    --      --      --      --      --
    ======  ======  ======  ======  ======  ======  ======  ======

    The ``(L, L)`` part alone (peak less the none run's) measured at most 0.87 of its estimate (FIRE; T5 0.82,
    Kerple 0.73), so the ratios approach those as L grows."""
    dim, depth, length, batch = train.dim, train.depth, train.train_len, train.batch_size
    params = 256 * dim + depth * 12 * dim * dim
    need = (
        4 * (6 * params + batch * length * (depth * 28 * dim + 4 * 256) + train.steps) + TRAINING_FIXED_BYTES
    )
    attn = None if encoding is None else _attention_of(encoding, train)
    if attn is not None:
        from ..attention.memory import training_bytes as attention_bytes

        need += attention_bytes(attn, batch, length, depth, device=torch.device("cpu"))
    return need


def _attention_of(encoding: str, train: TrainConfig) -> Attention | None:
    """One attention layer of ``encoding``'s model at ``train``'s sizes, built on the meta device (nothing
    allocated); None where it cannot be built (bad options: :func:`check_buildable` names them)."""
    from dataclasses import replace

    from .train import build_model

    try:
        with torch.device("meta"):
            model = build_model(encoding, replace(train, depth=1))
    except (ValueError, TypeError, KeyError):
        return None
    layers = model.attention_layers()
    return layers[0] if layers else None


def check_training_memory(train: TrainConfig, names: list[str]) -> None:
    """Refuse, before anything is built or written, a configuration whose training on this machine's CPU cannot
    fit in its memory by the :func:`training_bytes` estimate of the most demanding of ``names`` (``--depth
    100000000`` built layers until the machine ran out; ``--steps 1e20`` overflowed int64 in torch with a C++ stack
    dump; ``posenc tasks --train-len 1e20`` drew one example for minutes; FIRE at L = 8192 was killed by the
    system). Only for training on the CPU: a GPU's memory is its allocator's to refuse."""
    from ..validation import host_memory

    total = host_memory()
    if total is None:
        return
    sizes = (
        f"dim {train.dim}, depth {train.depth}, heads {train.heads}, batch {train.batch_size} x L = "
        f"{train.train_len}, {train.steps} steps"
    )
    need = training_bytes(train)  # (first without attention: sizes too large to build even on meta)
    which = "this model"
    if need <= total:
        need, name = max((training_bytes(train, n), n) for n in names) if names else (need, None)
        which = "this model" if name is None else f"{name}'s model"
    if need > total:
        raise ValueError(
            f"training {which} needs about {need / 2**30:.3g} GiB ({sizes}), more than this machine's "
            f"{total / 2**30:.3g} GiB; choose a smaller train_len (L), batch, depth or dim"
        )


__all__ = ["TRAINING_FIXED_BYTES", "check_training_memory", "training_bytes"]
