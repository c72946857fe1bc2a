"""Figures of the encodings themselves: the sinusoidal table, RoPE's long-term decay, the clipped index matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional.absolute import sinusoidal_table
from ..functional.relative import relative_positions
from ..functional.rotary import rope_inv_freq
from .common import Picture, new_figure, rounded
from .palette import encoding_color


def sinusoidal_figure(length: int = 256, dim: int = 128, base: float = 10000.0) -> Picture:
    """Heatmap of ``PE[p, i]`` for ``p < length``, ``i < dim`` (Vaswani et al. 2017)."""
    table = sinusoidal_table(torch.arange(length), dim, base)  # (length, dim)
    fig = new_figure()
    ax = fig.add_subplot()
    im = ax.imshow(table.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
    ax.set(xlabel="dimension i", ylabel="position p", title=f"Sinusoidal encoding (dim={dim}, base={base:g})")
    fig.colorbar(im, ax=ax, label="PE[p, i]")
    return Picture(fig, {"base": base, "table": rounded(table.tolist(), 5)})


def rope_decay_bound(max_distance: int = 256, head_dim: int = 128, base: float = 10000.0) -> Tensor:
    """RoFormer's long-term decay bound (Su et al. 2021, section 3.4.3): ``(1 / (D/2)) * sum_j |S_j|`` with
    ``S_j = sum_{k<j} exp(i * r * theta_k)``, for relative distances ``r = 0 .. max_distance``.

    Returns:
        ``(max_distance + 1,)`` float64.
    """
    theta = rope_inv_freq(head_dim, base, dtype=torch.float64)  # (P,)
    r = torch.arange(max_distance + 1, dtype=torch.float64).unsqueeze(-1)  # (N, 1)
    partial = torch.polar(torch.ones_like(r * theta), r * theta).cumsum(dim=-1)  # (N, P): S_1 .. S_P
    return partial.abs().mean(dim=-1)


def rope_decay_figure(
    max_distance: int = 256, head_dim: int = 128, bases: tuple[float, ...] = (10000.0,)
) -> Picture:
    """The decay bound against relative distance, one line per base (RoFormer, Figure 2), RoPE's colour."""
    fig = new_figure()
    ax = fig.add_subplot()
    bounds = {f"{base:g}": rope_decay_bound(max_distance, head_dim, base) for base in bases}
    for k, (base, bound) in enumerate(bounds.items()):
        style = ("-", "--", ":", "-.")[k % 4]
        ax.plot(bound.numpy(), style, color=encoding_color("rope"), label=f"base={base}")
    ax.set(
        xlabel="relative distance m - n",
        ylabel="relative upper bound  mean_j |S_j|",
        title=f"RoPE long-term decay (head_dim={head_dim})",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return Picture(fig, {"head_dim": head_dim, "bound": {b: rounded(v.tolist()) for b, v in bounds.items()}})


def relative_index_figure(length: int = 12, max_distance: int = 4) -> Picture:
    """The clipped relative-index matrix ``clip(j - i, k) + k`` of Shaw et al. 2018, annotated."""
    idx = relative_positions(length, length, max_distance) + max_distance  # (length, length)
    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.imshow(idx.numpy(), cmap="viridis", interpolation="nearest")
    for i in range(length):
        for j in range(length):
            ax.text(
                j,
                i,
                str(int(idx[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if idx[i, j] < 1.5 * max_distance else "black",
            )
    ax.set(
        xlabel="key j",
        ylabel="query i",
        title=f"clip(j - i, {max_distance}) + {max_distance}: rows of a^K, a^V",
    )
    return Picture(fig, {"max_distance": max_distance, "index": idx.tolist()})
