"""xPos's decay: the factor ``zeta_i^((n - m) / scale_base)`` that every dimension pair ``i`` of a query at ``n``
and a key at ``m`` carries into their dot product (Sun et al. 2022, section 3.2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..rotary import XPos
from .common import Picture, new_figure, rounded
from .palette import encoding_color, shade


def xpos_decay(enc: XPos, max_distance: int) -> Tensor:
    """``(D/2, max_distance + 1)`` float64: ``zeta_i^(d / scale_base)`` for pair ``i`` at distance ``d``."""
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    d = torch.arange(max_distance + 1, dtype=torch.float64)
    return enc.zeta.double().cpu().unsqueeze(-1) ** (d / enc.scale_base)


def xpos_figure(enc: XPos, max_distance: int, train_len: int, name: str = "xpos", lines: int = 8) -> Picture:
    """The decay factor against distance for ``lines`` dimension pairs spread over ``0 .. D/2 - 1`` (the
    lowest pairs decay fastest), ``L`` dotted. The numbers hold ``zeta`` and the drawn pairs' curves."""
    decay = xpos_decay(enc, max_distance)  # (P, N)
    pairs = decay.shape[0]
    shown = sorted({round(i * (pairs - 1) / max(lines - 1, 1)) for i in range(lines)})
    fig = new_figure()
    ax = fig.add_subplot()
    for k, i in enumerate(shown):
        ax.plot(
            decay[i].numpy(),
            color=shade(encoding_color(name), 0.7 * k / max(len(shown) - 1, 1)),
            label=f"pair {i} (ζ = {enc.zeta[i].item():.3f})",
        )
    ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set(
        xlabel=f"distance n - m (L = {train_len})",
        ylabel="decay factor ζᵢ^((n-m)/scale_base) (log)",
        title=f"xPos decay per dimension pair (head_dim {enc.head_dim}, scale_base {enc.scale_base:g})",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    data: dict[str, Any] = {
        "head_dim": enc.head_dim,
        "scale_base": enc.scale_base,
        "gamma": enc.gamma,
        "zeta": rounded(enc.zeta.tolist()),
        "pairs": shown,
        "decay": rounded(decay[shown].tolist(), 6),
    }
    return Picture(fig, data)
