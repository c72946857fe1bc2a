"""Perplexity at and beyond the training length, on non-overlapping windows (Press et al. 2022, "Train Short,
Test Long", section 2 and Table 2).

The held-out bytes are cut into consecutive windows of the evaluation length ``Lv``; each window is one forward
pass from position 0, and every byte of it is predicted from the bytes before it in the same window only. At
every ``Lv`` the same ``n_tokens`` bytes are scored, so the lengths differ only in how much context the model
gets (and in the positions it must handle), never in which text is scored.

RoPE models can also be evaluated with inference-time context extension (linear interpolation, NTK, dynamic NTK,
YaRN) when ``posenc.rotary.scaling`` provides it: each layer's RoPE is swapped for one with the same ``head_dim``
and ``base`` and a scaling of factor ``Lv / L``, without retraining.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attention import Attention
from ..models import TransformerLM
from ..models.lm import Block
from ..rotary import RoPE
from ..rotary.scaling import available_scalings
from .dist import SINGLE, World

#: Multiples of the training length evaluated by default (Press et al. go to 16.6L).
MULTIPLES: tuple[int, ...] = (1, 2, 4, 8, 16)
#: Dynamic NTK adapts its frequencies to each window by itself; it gets one fixed setting for every length,
#: the factor 2 commonly used with transformers (``rope_scaling={"type": "dynamic", "factor": 2.0}``).
DYNAMIC_FACTOR = 2.0

Scaling = dict[str, Any]
ScalingRule = Callable[[int, int], Scaling]


def eval_lengths(train_len: int, multiples: tuple[int, ...] = MULTIPLES) -> list[int]:
    """``[m * train_len for m in multiples]``."""
    return [m * train_len for m in multiples]


def max_supported_length(model: TransformerLM) -> int | None:
    """The longest input ``model`` accepts: the smallest ``max_len`` of its encodings (a learned table), or None."""
    limits = [getattr(m, "max_len", None) for m in model.modules()]
    ints = [n for n in limits if isinstance(n, int)]
    return min(ints) if ints else None


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
    rank takes every ``world.size``-th window and the sums are all-reduced.

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
    windows = torch.arange(world.rank, n_tokens // length, world.size)
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
    limit = max_supported_length(model)
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
def _factor(eval_len: int, train_len: int) -> float:
    return max(1.0, eval_len / train_len)


#: How each method is configured at evaluation length ``Lv`` for a model trained at ``L``.
_RULES: dict[str, ScalingRule] = {
    "linear": lambda lv, l0: {"rope_type": "linear", "factor": _factor(lv, l0)},
    "ntk": lambda lv, l0: {"rope_type": "ntk", "factor": _factor(lv, l0)},
    "dynamic": lambda lv, l0: {
        "rope_type": "dynamic",
        "factor": DYNAMIC_FACTOR,
        "original_max_position_embeddings": l0,
    },
    "yarn": lambda lv, l0: {
        "rope_type": "yarn",
        "factor": _factor(lv, l0),
        "original_max_position_embeddings": l0,
    },
}


def rope_extensions() -> dict[str, ScalingRule]:
    """The context-extension methods available in this posenc (``posenc.rotary.scaling``), by name."""
    have = set(available_scalings())
    return {name: rule for name, rule in _RULES.items() if name in have}


def layer_attention(model: TransformerLM) -> list[Attention]:
    """The :class:`posenc.Attention` of every block, in order."""
    return [block.attn for block in model.blocks if isinstance(block, Block)]


def is_plain_rope(model: TransformerLM) -> bool:
    """Whether every layer of ``model`` uses exactly :class:`posenc.RoPE` (not a subclass such as xPos)."""
    return all(type(attn.position) is RoPE for attn in layer_attention(model))


@contextmanager
def rope_scaled(model: TransformerLM, scaling: Scaling | None) -> Iterator[TransformerLM]:
    """Temporarily give every layer a RoPE like its own plus ``scaling`` (a transformers-style dict)."""
    layers = layer_attention(model)
    originals = [attn.position for attn in layers]
    try:
        for attn, rope in zip(layers, originals, strict=True):
            if not isinstance(rope, RoPE):
                raise TypeError(f"context extension needs RoPE layers, found {type(rope).__name__}")
            scaled = RoPE(
                rope.head_dim,
                base=rope.base,
                rotary_dim=rope.rotary_dim,
                interleaved=rope.interleaved,
                cache_len=rope.cache_len,
                scaling=scaling,
                impl=rope.impl,
            )
            attn.position = scaled.to(rope.inv_freq.device)
        yield model
    finally:
        for attn, rope in zip(layers, originals, strict=True):
            attn.position = rope


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
    rule = rope_extensions()[method]
    out: dict[int, float | None] = {}
    for length in lengths:
        if length <= train_len:
            out[length] = plain[length]
            continue
        with rope_scaled(model, rule(length, train_len)) as scaled:
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
