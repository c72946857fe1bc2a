"""Perplexity at and beyond the training length, on non-overlapping windows (Press et al. 2022, "Train Short,
Test Long", section 2 and Table 2).

The held-out bytes are cut into consecutive windows of the evaluation length ``Lv``; each window is one forward
pass from position 0, and each of its targets is predicted from the bytes before it in the same window only
(the first target from one byte, the last from ``Lv``). At every ``Lv`` the same ``n_tokens`` bytes are scored,
bytes ``1..n_tokens``, each exactly once (byte 0 is context only), so the lengths differ only in how much
context the model gets (and in the positions it must handle), never in which text is scored. Perplexity is
``exp`` of the mean NLL per scored byte, not a mean of per-window perplexities; the forward runs in the model's
dtype (float32 in ``posenc compare``, whatever its training precision).

RoPE models can also be evaluated with inference-time context extension (linear interpolation, NTK, dynamic NTK,
YaRN) when ``posenc.rotary.scaling`` provides it: each layer's RoPE is swapped for one with the same ``head_dim``
and ``base`` and a scaling of factor ``Lv / L``, without retraining.
"""

from __future__ import annotations

import math
import sys
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..models import TransformerLM
from ..rotary.scaling import SCALINGS, RopeScaling, extension_scalings
from .dist import SINGLE, World

#: Multiples of the training length evaluated by default (Press et al. go to 16.6L).
MULTIPLES: tuple[int, ...] = (1, 2, 4, 8, 16)


def eval_lengths(train_len: int, multiples: tuple[int, ...] = MULTIPLES) -> list[int]:
    """``[m * train_len for m in multiples]``."""
    return [m * train_len for m in multiples]


@torch.no_grad()
def window_nll(
    model: nn.Module,
    tokens: Tensor,
    length: int,
    n_tokens: int,
    *,
    device: torch.device | str = "cpu",
    batch_tokens: int = 2048,
    world: World = SINGLE,
    progress: bool = False,
    desc: str = "",
) -> tuple[float, int]:
    """Summed next-byte negative log-likelihood over the first ``n_tokens`` targets of ``tokens``.

    Window ``i`` feeds ``tokens[i*Lv : (i+1)*Lv]`` and scores ``tokens[i*Lv + 1 : (i+1)*Lv + 1]``; under DDP each
    rank takes every ``world.size``-th window (none when there are more ranks than windows) and the sums are
    all-reduced.

    Args:
        model: maps ``(B, Lv)`` bytes to ``(B, Lv, V)`` logits; put in eval mode by the caller.
        tokens: ``(N,)`` uint8 held-out bytes, ``N >= n_tokens + 1``.
        length: ``Lv``; must divide ``n_tokens``.
        n_tokens: bytes scored.
        batch_tokens: windows per forward pass are ``max(1, batch_tokens // Lv)``.

    Returns:
        ``(total_nll_nats, n_scored)``.

    Raises:
        ValueError: ``length`` does not divide ``n_tokens`` or ``tokens`` is too short.
    """
    if length <= 0 or n_tokens % length:
        raise ValueError(f"evaluation length {length} must be positive and divide n_tokens ({n_tokens})")
    if tokens.numel() < n_tokens + 1:
        raise ValueError(
            f"{tokens.numel()} held-out bytes cannot score {n_tokens} targets (need n_tokens + 1)"
        )
    windows = torch.arange(n_tokens // length)[
        world.rank :: world.size
    ]  # empty on a rank past the last window
    per_batch = max(1, batch_tokens // length)
    total = torch.zeros((), dtype=torch.float64, device=device)
    offsets = torch.arange(length + 1)
    batches = list(windows.split(per_batch))
    for chunk in tqdm(
        batches, desc=desc, file=sys.stderr, disable=not progress, leave=False, dynamic_ncols=True
    ):
        x = tokens[chunk.unsqueeze(-1) * length + offsets].long().to(device)  # (b, Lv + 1)
        logits = model(x[:, :-1])  # (b, Lv, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum")
        total += nll.double()
    return float(world.sum(total)), n_tokens


def perplexity(nll: float, count: int) -> float:
    """``exp(nll / count)``; inf when that overflows or is not a number."""
    value = math.exp(min(nll / count, 700.0)) if math.isfinite(nll) else math.inf
    return value if math.isfinite(value) else math.inf


def perplexities(
    model: TransformerLM,
    tokens: Tensor,
    lengths: list[int],
    n_tokens: int,
    *,
    device: torch.device | str = "cpu",
    world: World = SINGLE,
    progress: bool = False,
    label: str = "",
) -> dict[int, float | None]:
    """Perplexity per evaluation length; None where the model cannot take that length (a learned table)."""
    model.eval()
    limit = model.max_length
    out: dict[int, float | None] = {}
    for length in lengths:
        if limit is not None and length > limit:
            out[length] = None
            continue
        nll, count = window_nll(
            model,
            tokens,
            length,
            n_tokens,
            device=device,
            world=world,
            progress=progress,
            desc=f"eval {label} {length}",
        )
        out[length] = perplexity(nll, count)
    return out


# -- RoPE context extension ----------------------------------------------------------------------------------
def rope_extensions() -> dict[str, type[RopeScaling]]:
    """The inference-time context-extension methods (``RopeScaling.extension``), by ``rope_type``."""
    return {name: SCALINGS.get(name) for name in extension_scalings()}


def supports_rope_extension(model: TransformerLM) -> bool:
    """Whether every attention layer of ``model`` takes a RoPE scaling (``with_scaling``)."""
    return all(p.scalable for p in model.layer_encodings())


def rope_scaled(
    model: TransformerLM, scaling: RopeScaling | dict[str, Any] | None
) -> AbstractContextManager[TransformerLM]:
    """Context manager: every layer's encoding temporarily replaced by ``encoding.with_scaling(scaling)``."""
    if not supports_rope_extension(model):
        kinds = sorted({type(p).__name__ for p in model.layer_encodings() if not p.scalable})
        raise TypeError(f"context extension needs RoPE layers, found {', '.join(kinds)}")
    return model.positions_replaced(lambda p: p.with_scaling(scaling))


def extension_perplexities(
    model: TransformerLM,
    method: str,
    tokens: Tensor,
    lengths: list[int],
    train_len: int,
    n_tokens: int,
    *,
    plain: dict[int, float | None],
    device: torch.device | str = "cpu",
    world: World = SINGLE,
    progress: bool = False,
) -> dict[int, float | None]:
    """Perplexity of a RoPE ``model`` with extension ``method`` at each length; at ``Lv <= L`` the scaling is the
    identity (factor 1), so the plain RoPE value from ``plain`` is reused."""
    method_cls = rope_extensions()[method]
    out: dict[int, float | None] = {}
    for length in lengths:
        if length <= train_len:
            out[length] = plain[length]
            continue
        with rope_scaled(model, method_cls.extension(train_len, length)) as scaled:
            nll, count = window_nll(
                scaled,
                tokens,
                length,
                n_tokens,
                device=device,
                world=world,
                progress=progress,
                desc=f"eval rope+{method} {length}",
            )
        out[length] = perplexity(nll, count)
    return out
