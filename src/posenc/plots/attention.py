"""What trained models attend to: mean attention weight against distance and the entropy of attention rows against
position, measured with the ``math`` backend (the explicit-softmax reference) on held-out text.

The weights are read by wrapping every layer's encoding in a :class:`_Probe` that delegates each hook and sees
the weights the ``math`` backend hands to ``value_term`` (exactly the ``(B, H, Q, K)`` probabilities it
multiplies the values with), so nothing of the attention computation is copied here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..base import PositionEncoding
from ..models import TransformerLM
from .common import Picture, new_figure, rounded
from .palette import encoding_color


@dataclass
class AttentionStats:
    """Sums over the causal attention rows of one layer at one window length ``N``.

    Attributes:
        weight_sum: ``(N,)`` float64, summed weight on keys at distance ``d = i - j``.
        pairs: ``(N,)`` float64, how many (row, key) pairs at distance ``d`` were summed.
        entropy_sum: ``(N,)`` float64, summed entropy (nats) of the rows of queries at position ``i``.
        rows: rows summed per position (batch x heads).
        windows: windows of held-out text summed (batch rows).
    """

    length: int
    weight_sum: Tensor = field(init=False)
    pairs: Tensor = field(init=False)
    entropy_sum: Tensor = field(init=False)
    rows: int = 0
    windows: int = 0

    def __post_init__(self) -> None:
        self.weight_sum = torch.zeros(self.length, dtype=torch.float64)
        self.pairs = torch.zeros(self.length, dtype=torch.float64)
        self.entropy_sum = torch.zeros(self.length, dtype=torch.float64)

    def add(self, probs: Tensor, q_pos: Tensor | None = None, k_pos: Tensor | None = None) -> None:
        """Add ``probs: (B, H, Q, K)`` causal attention weights of queries at ``q_pos`` and keys at ``k_pos``
        (``(1, Q)`` and ``(1, K)``, shared by the batch; default ``0 .. N-1`` each): a whole window, or one of the
        blocks of queries the ``math`` backend attends at a time without gradients (the window's later rows then
        come in the next calls; :attr:`windows` counts a window at its first query)."""
        b, h, q, k = probs.shape
        q_at = torch.arange(q) if q_pos is None else q_pos.reshape(-1).cpu()
        k_at = torch.arange(k) if k_pos is None else k_pos.reshape(-1).cpu()
        if q_at.numel() != q or k_at.numel() != k or (q_at.numel() and int(q_at.max()) >= self.length):
            raise ValueError(
                f"expected weights of positions below {self.length}, got ({q}, {k}) at {q_at} x {k_at}"
            )
        p = probs.float()
        dist = (q_at.unsqueeze(-1) - k_at).flatten()  # (Q*K,)
        seen = dist >= 0
        summed = p.sum(dim=(0, 1)).flatten().cpu()[seen].double()
        d = dist[seen]
        self.weight_sum += torch.bincount(d, weights=summed, minlength=self.length)
        self.pairs += torch.bincount(d, minlength=self.length).double() * (b * h)
        entropy = (-torch.xlogy(p, p).sum(-1)).sum(dim=(0, 1)).double().cpu()  # (Q,)
        self.entropy_sum.index_add_(0, q_at, entropy)
        if q_at.numel() and int(q_at[0]) == 0:  # (a window's first block)
            self.rows += b * h
            self.windows += b

    def mean_weight(self) -> Tensor:
        """``(N,)`` mean attention weight on a key at distance ``d``."""
        return self.weight_sum / self.pairs.clamp_min(1)

    def mean_entropy(self) -> Tensor:
        """``(N,)`` mean entropy (nats) of the attention row of the query at position ``i``."""
        return self.entropy_sum / max(self.rows, 1)


class _Probe(PositionEncoding):
    """A layer's encoding with every hook delegated; the attention weights go to ``stats`` on the way."""

    needs_probs: bool = True
    family: ClassVar[str] = "none"

    def __init__(self, inner: PositionEncoding, stats: AttentionStats) -> None:
        super().__init__()
        self.inner, self.stats = inner, stats

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.inner.rotate(q, k, positions)

    def score_bias(self, q: Tensor, q_pos: Tensor, k_pos: Tensor, runs: bool = False) -> Tensor | None:
        return self.inner.score_bias(q, q_pos, k_pos)  # (takes_runs is False: always three arguments)

    def value_term(self, probs: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        self.stats.add(probs.detach(), q_pos, k_pos)
        return self.inner.value_term(probs, q_pos, k_pos)


@contextmanager
def probing(model: TransformerLM, length: int) -> Iterator[list[AttentionStats]]:
    """Within the block, ``model`` attends with the ``math`` backend and every layer adds its weights to its
    :class:`AttentionStats` (one per layer, windows of ``length``)."""
    layers = model.attention_layers()  # the backend is switched too, so not positions_replaced
    saved = [(attn.position, attn.backend) for attn in layers]
    stats = [AttentionStats(length) for _ in layers]
    try:
        for attn, s in zip(layers, stats, strict=True):
            attn.position, attn.backend = _Probe(attn.position, s), "math"
        yield stats
    finally:
        for attn, (position, backend) in zip(layers, saved, strict=True):
            attn.position, attn.backend = position, backend


@torch.no_grad()
def attention_stats(
    model: TransformerLM, tokens: Tensor, length: int, windows: int = 2
) -> list[AttentionStats] | None:
    """Per layer, the statistics of ``model``'s attention over ``windows`` consecutive windows of ``length`` bytes
    of ``tokens`` (``(N,)`` uint8), each read from position 0; None when the model cannot take ``length``
    (a learned table shorter than it).

    Raises:
        ValueError: ``tokens`` holds fewer than ``length`` bytes.
    """
    limit = model.max_length
    if limit is not None and length > limit:
        return None
    count = min(windows, tokens.numel() // length)
    if count < 1:
        raise ValueError(f"the held-out text has {tokens.numel()} bytes, fewer than one window of {length}")
    device = next(model.parameters()).device
    x = tokens[: count * length].view(count, length).long().to(device)
    model.eval()
    with probing(model, length) as stats:
        for window in x.split(1):  # one window at a time: memory does not grow with the window count
            model(window)
    return stats


def combined(stats: list[AttentionStats]) -> AttentionStats:
    """The statistics of all layers together (sums added)."""
    out = AttentionStats(stats[0].length)
    for s in stats:
        out.weight_sum += s.weight_sum
        out.pairs += s.pairs
        out.entropy_sum += s.entropy_sum
        out.rows += s.rows
    out.windows = stats[0].windows  # (every layer sees the same windows)
    return out


Measured = dict[str, dict[int, list[AttentionStats] | None]]


def _windows(measured: Measured) -> dict[str, dict[str, int | None]]:
    """How many held-out windows each model's statistics summed, per length (None where it cannot take it)."""
    return {
        name: {str(n): None if s is None else s[0].windows for n, s in per.items()}
        for name, per in measured.items()
    }


def attention_distance_figure(measured: Measured, train_len: int) -> Picture:
    """Mean attention weight (log) against ``1 + distance`` (log), one colour per encoding, solid at ``L`` and
    dashed at the longest length, all layers and heads together; grey dotted: uniform causal attention."""
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot()
    longest = max(n for per in measured.values() for n in per)
    styles = {train_len: "-", longest: "--"}
    data: dict[str, Any] = {
        "train_len": train_len,
        "x": "distance d = i - j",
        "windows": _windows(measured),  # read per length (--windows, at most what the held-out text holds)
        "mean_weight": {},
    }
    for name, per_length in measured.items():
        data["mean_weight"][name] = {}
        for length, stats in per_length.items():
            if stats is None:
                data["mean_weight"][name][str(length)] = None
                continue
            curve = combined(stats).mean_weight()
            ax.plot(
                torch.arange(1, length + 1).numpy(),
                curve.numpy(),
                linestyle=styles.get(length, ":"),
                color=encoding_color(name, list(measured)),
                linewidth=1.3,
                label=f"{name} @ {length}",
            )
            data["mean_weight"][name][str(length)] = {
                "all_layers": rounded(curve.tolist(), 6),
                "per_layer": [rounded(s.mean_weight().tolist(), 6) for s in stats],
            }
    uniform = uniform_mean_weight(longest)
    ax.plot(torch.arange(1, longest + 1).numpy(), uniform.numpy(), ":", color="grey", label="uniform")
    ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(
        xlabel=f"1 + distance i - j (log; L = {train_len})",
        ylabel="mean attention weight (log)",
        title=f"Where trained models attend: windows of L = {train_len} (solid) and {longest} (dashed)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=3)
    return Picture(fig, data)


def uniform_mean_weight(length: int) -> Tensor:
    """``(length,)``: the mean weight at distance ``d`` if every query ``i`` spread ``1/(i+1)`` over its keys."""
    inv = 1.0 / torch.arange(1, length + 1, dtype=torch.float64)  # 1/(i+1) for i = 0..N-1
    tail = inv.flip(0).cumsum(0).flip(0)  # sum over i >= d
    return tail / torch.arange(length, 0, -1, dtype=torch.float64)


def attention_entropy_figure(measured: Measured, train_len: int) -> Picture:
    """Mean entropy of the attention row (nats) against query position at the longest length, one colour per
    encoding; grey dotted: ``ln(i + 1)``, the entropy of uniform attention."""
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot()
    longest = max(n for per in measured.values() for n in per)
    data: dict[str, Any] = {
        "train_len": train_len,
        "x": "query position i",
        "windows": _windows(measured),
        "mean_entropy": {},
    }
    for name, per_length in measured.items():
        data["mean_entropy"][name] = {}
        for length, stats in per_length.items():
            curve = None if stats is None else combined(stats).mean_entropy()
            data["mean_entropy"][name][str(length)] = None if curve is None else rounded(curve.tolist(), 6)
            if curve is not None and length == longest:
                ax.plot(curve.numpy(), color=encoding_color(name, list(measured)), linewidth=1.3, label=name)
    ax.plot(torch.arange(1, longest + 1).double().log().numpy(), ":", color="grey", label="uniform ln(i+1)")
    ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel=f"query position i (L = {train_len})",
        ylabel="entropy of the attention row (nats)",
        title=f"Attention entropy by position, windows of {longest}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return Picture(fig, data)
