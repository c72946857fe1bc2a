"""Perplexity at and beyond the training length, on non-overlapping windows (Press et al. 2022, "Train Short,
Test Long", section 2 and Table 2).

The scored text is a set of blocks of the longest evaluation length spread evenly over the held-out bytes
(:func:`spread_blocks`, as ``posenc compare`` scores), or one block of the held-out bytes' first. Each block is cut into consecutive
windows of the evaluation length ``Lv``; each window is one forward pass from position 0, and each of its targets
is predicted from the bytes before it in the same window only (the first target from one byte, the last from
``Lv``). At every ``Lv`` the same ``n_tokens`` bytes are scored, each exactly once (a block's first byte is
context only), so the lengths differ only in how much context the model gets (and in the positions it must
handle), never in which text is scored. Perplexity is
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

#: How ``posenc compare`` lays out its scored text (recorded in ``config.json``): blocks of the longest length
#: spread evenly over the held-out bytes (:func:`spread_blocks`). Runs before this key scored the first bytes (95 %
#: one file of the standard library), so resuming one is refused as a changed configuration.
EVAL_LAYOUT = "spread"


#: Bytes a forward pass of :func:`window_nll` scores at most: ``max(1, EVAL_BATCH_TOKENS // Lv)`` windows of ``Lv``.
EVAL_BATCH_TOKENS = 2048


def eval_lengths(train_len: int, multiples: tuple[int, ...] = MULTIPLES) -> list[int]:
    """``[m * train_len for m in multiples]``."""
    return [m * train_len for m in multiples]


def eval_passes(lengths: list[int], batch_tokens: int = EVAL_BATCH_TOKENS) -> list[tuple[int, int]]:
    """The ``(windows, Lv)`` forward passes that evaluating at ``lengths`` makes, ``batch_tokens`` bytes a pass
    (for the memory check, :func:`posenc.experiments.memory.check_training_memory`)."""
    return [(max(1, batch_tokens // lv), lv) for lv in lengths]


def spread_blocks(tokens: Tensor, width: int, count: int) -> Tensor:
    """``count`` blocks of ``width + 1`` bytes at evenly spaced offsets of ``tokens``, ``(count, width + 1)``.

    The first starts at byte 0 and the last ends at the last byte, so the blocks sample the whole held-out text
    (in ``posenc compare``, many files) rather than its first few; a lone block (``count == 1``) is the first
    bytes. Their scored bytes (all but each block's first) never overlap: a block's last byte may be the next
    block's first, which is context only there.

    Raises:
        ValueError: ``width`` or ``count`` below 1, or ``tokens`` shorter than ``count * width + 1``.
    """
    if width < 1 or count < 1:
        raise ValueError(f"blocks need width >= 1 and count >= 1, got width={width}, count={count}")
    n = tokens.numel()
    if n < count * width + 1:
        raise ValueError(
            f"{n} held-out bytes cannot hold {count} blocks of {width} scored bytes (need {count * width + 1})"
        )
    room = n - 1 - width  # the last block's offset
    starts = [b * room // (count - 1) if count > 1 else 0 for b in range(count)]
    return torch.stack([tokens[s : s + width + 1] for s in starts])  # (count, width + 1)


@torch.no_grad()
def window_nll(
    model: nn.Module,
    tokens: Tensor,
    length: int,
    n_tokens: int,
    *,
    device: torch.device | str = "cpu",
    batch_tokens: int = EVAL_BATCH_TOKENS,
    world: World = SINGLE,
    progress: bool = False,
    desc: str = "",
) -> tuple[float, int]:
    """Summed next-byte negative log-likelihood over ``n_tokens`` held-out targets.

    ``tokens`` is either the held-out bytes ``(N,)``, of which the first ``n_tokens`` targets are scored (one
    block of ``n_tokens + 1`` bytes), or blocks ``(R, W + 1)`` from :func:`spread_blocks`, every target of which
    is scored (``n_tokens == R * W``). Each block is cut into windows of ``Lv``: window ``i`` of a block feeds
    its bytes ``i*Lv : (i+1)*Lv`` and scores ``i*Lv + 1 : (i+1)*Lv + 1``. Under DDP each rank takes every
    ``world.size``-th window (none when there are more ranks than windows) and the sums are all-reduced.

    Args:
        model: maps ``(B, Lv)`` bytes to ``(B, Lv, V)`` logits; put in eval mode by the caller.
        tokens: ``(N,)`` uint8 held-out bytes, ``N >= n_tokens + 1``, or ``(R, W + 1)`` blocks.
        length: ``Lv``; must divide ``n_tokens`` (and ``W``).
        n_tokens: bytes scored.
        batch_tokens: windows per forward pass are ``max(1, batch_tokens // Lv)``.

    Returns:
        ``(total_nll_nats, n_scored)``.

    Raises:
        ValueError: ``length`` does not divide ``n_tokens`` (or ``W``), ``tokens`` is too short, or blocks do
            not hold exactly ``n_tokens`` targets.
    """
    if length <= 0 or n_tokens % length:
        raise ValueError(f"evaluation length {length} must be positive and divide n_tokens ({n_tokens})")
    if tokens.dim() == 1:
        if tokens.numel() < n_tokens + 1:
            raise ValueError(
                f"{tokens.numel()} held-out bytes cannot score {n_tokens} targets (need n_tokens + 1)"
            )
        tokens = tokens[: n_tokens + 1].unsqueeze(0)  # one block
    elif tokens.dim() != 2 or tokens.shape[0] * (tokens.shape[1] - 1) != n_tokens:
        raise ValueError(
            f"evaluation blocks must be (R, W + 1) with R * W == n_tokens ({n_tokens}), got {tuple(tokens.shape)}"
        )
    if (tokens.shape[1] - 1) % length:
        raise ValueError(f"evaluation length {length} must divide the block width {tokens.shape[1] - 1}")
    inputs = tokens[:, :-1].reshape(-1, length)  # (windows, Lv)
    targets = tokens[:, 1:].reshape(-1, length)  # (windows, Lv): each input byte's next byte
    windows = torch.arange(inputs.shape[0])[world.rank :: world.size]  # empty on a rank past the last window
    per_batch = max(1, batch_tokens // length)
    total = torch.zeros((), dtype=torch.float64, device=device)
    batches = list(windows.split(per_batch))
    for chunk in tqdm(
        batches, desc=desc, file=sys.stderr, disable=not progress, leave=False, dynamic_ncols=True
    ):
        x, y = inputs[chunk].long().to(device), targets[chunk].long().to(device)  # (b, Lv) each
        logits = model(x)  # (b, Lv, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
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
        # an absolute model's layers are all NoPE: name the encoding on its embeddings instead
        found = model.input_position if model.input_position.is_absolute else None
        kinds = (
            [f"{type(found).__name__} (on the embeddings)"]
            if found is not None
            else sorted({type(p).__name__ for p in model.layer_encodings() if not p.scalable})
        )
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
