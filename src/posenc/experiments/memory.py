"""Memory estimates of training and evaluating on a CPU: :func:`check_training_memory` refuses, before anything is
built or written, a run whose training or evaluation would not fit in the machine's memory (the process would be
killed without a message, after hours of training where only the evaluation at 16L does not fit).
The per-encoding part comes from :mod:`posenc.attention.memory` (what each encoding's attention keeps for
backward), shared with ``generate``'s check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..attention import Attention
    from .train import TrainConfig


#: Memory a training process takes whatever the sizes, in bytes: AdamW's first step, kernels loaded on first use,
#: and the compilation of RoPE's fused CPU kernel on its first call (q and k of 2^20 elements up: 64 MiB at L = 4096).
TRAINING_FIXED_BYTES = 96 << 20
#: Memory an evaluation pass takes whatever the sizes: FlexAttention's kernels, compiled on first use by a bias
#: encoding (a fresh process evaluating ALiBi, T5, Kerple or FIRE at 4,096 bytes grew 270-285 MiB, ``none`` 34 MiB).
EVALUATION_FIXED_BYTES = 320 << 20


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
    params = _parameters(train)
    need = (
        4 * (6 * params + batch * length * (depth * 28 * dim + 4 * 256) + train.steps) + TRAINING_FIXED_BYTES
    )
    attn = None if encoding is None else _attention_of(encoding, train)
    if attn is not None:
        from ..attention.memory import training_bytes as attention_bytes

        need += attention_bytes(attn, batch, length, depth, device=torch.device("cpu"))
    return need


def evaluation_bytes(train: TrainConfig, encoding: str | None, batch: int, length: int) -> int:
    """An estimate, erring high, of the memory one evaluation pass of ``encoding``'s model (a spec; None: without
    attention's ``(Q, K)`` tensors) takes on a CPU: ``batch`` windows of ``length`` bytes, float32, no gradients.
    The weights, eight ``dim``-wide values and the logits' three 256-wide ones per byte (``none`` at 32,768 bytes
    grew 6 KB a byte over the weights, dim 128: the estimate's 7 KB), one layer's ``(Q, K)`` tensors on the
    backend it runs (:func:`posenc.attention.memory.call_bytes`; ``shaw``, the ``math`` backend, grew 0.85 of it at
    4,096 and 8,192 bytes) and :data:`EVALUATION_FIXED_BYTES`. (One thread, 2-core AMD EPYC, torch 2.13 CPU,
    2026-11-30, peak resident memory of fresh processes with ``MALLOC_MMAP_THRESHOLD_=65536``.)"""
    need = 4 * (_parameters(train) + batch * length * (8 * train.dim + 3 * 256)) + EVALUATION_FIXED_BYTES
    attn = None if encoding is None else _attention_of(encoding, train)
    if attn is not None:
        from ..attention.memory import call_bytes

        cpu = torch.device("cpu")
        need += call_bytes(
            attn, batch, length, length, dtype=torch.float32, device=cpu, grad=False, masked=False
        )
    return need


def _parameters(train: TrainConfig) -> int:
    """The model's parameters: byte embeddings (tied head) and per layer the attention's four and the MLP's two
    ``(dim, 4 dim)`` matrices."""
    return 256 * train.dim + train.depth * 12 * train.dim * train.dim


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


def check_training_memory(
    train: TrainConfig, names: list[str], passes: Sequence[tuple[int, int]] = ()
) -> None:
    """Refuse, before anything is built or written, a configuration whose training, or evaluation in ``passes``
    (``(batch, length)`` forward passes, see :func:`evaluation_bytes`), cannot fit in this machine's memory by the
    estimates of the most demanding of ``names`` (``--depth 100000000`` built layers until the machine ran out;
    ``--steps 1e20`` overflowed int64 in torch with a C++ stack dump; ``posenc tasks --train-len 1e20`` drew one
    example for minutes; FIRE at L = 8192 was killed by the system, and Shaw's evaluation at 16L = 32,768 took
    70 GB after a training that fit, until ``math`` attended in blocks of queries). Only for the CPU: a GPU's
    memory is its allocator's to refuse."""
    from ..validation import host_memory

    total = host_memory()
    if total is None:
        return
    sizes = (
        f"dim {train.dim}, depth {train.depth}, heads {train.heads}, batch {train.batch_size} x L = "
        f"{train.train_len}, {train.steps} steps"
    )
    need = training_bytes(train)  # (first without attention: sizes too large to build even on meta)
    what = "training this model"
    if need <= total:
        need, what = (
            max((training_bytes(train, n), f"training {n}'s model") for n in names) if names else (need, what)
        )
    if need > total:
        raise ValueError(
            f"{what} needs about {need / 2**30:.3g} GiB ({sizes}), more than this machine's "
            f"{total / 2**30:.3g} GiB; choose a smaller train_len (L), batch, depth or dim"
        )
    if not passes:
        return
    batch, length = max(passes, key=lambda p: (p[0] * p[1] * p[1], p[0] * p[1]))  # (the most of either part)
    candidates: list[str | None] = list(names) if names else [None]
    need_eval = [(evaluation_bytes(train, n, batch, length), n) for n in candidates]
    need, name = max(need_eval, key=lambda e: e[0])
    if need > total:
        model = "the model" if name is None else f"{name}'s model"
        raise ValueError(
            f"evaluating {model} at {length} bytes ({batch} window{'s' * (batch > 1)} a pass, L = "
            f"{train.train_len}) needs about {need / 2**30:.3g} GiB, more than this machine's "
            f"{total / 2**30:.3g} GiB; choose a smaller train_len (L)"
            + ("" if name is None else f" or leave {name} out")
        )


__all__ = [
    "EVALUATION_FIXED_BYTES",
    "TRAINING_FIXED_BYTES",
    "check_training_memory",
    "evaluation_bytes",
    "training_bytes",
]
