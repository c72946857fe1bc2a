"""The bias each attention-bias encoding adds, by distance and head (ALiBi, T5, FIRE, Kerple, ...).

Every encoding of family ``"bias"`` is drawn: untrained (as :func:`posenc.build` initialises it) or trained (the
layers of a ``posenc compare`` model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..base import PositionEncoding
from .common import Picture, new_figure, rounded
from .palette import encoding_color, shade


@torch.no_grad()
def bias_by_distance(enc: PositionEncoding, max_distance: int) -> Tensor:
    """The logit bias that the last query of a ``max_distance + 1`` window adds to each earlier key, by distance.

    Entry ``[h, d]`` is ``enc.bias`` for head ``h``, query position ``N - 1`` and key position ``N - 1 - d``
    (``N = max_distance + 1``). Encodings whose bias depends on the query position too (FIRE normalises by it)
    are thus drawn as the query at the end of the window sees them.

    Returns:
        ``(heads, max_distance + 1)`` float64 on the CPU.
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    n = max_distance + 1
    row = enc.bias(1, n, offset=n - 1)[:, 0, :]  # (H, N): keys 0 .. N-1
    return row.flip(-1).double().cpu()


def bias_figure(
    curves: dict[str, list[Tensor]], train_len: int, title: str = "Attention bias by distance"
) -> Picture:
    """One panel per encoding (columns) and layer (rows), one line per head (lighter with the head index; a legend
    in the first panel up to 8 heads), distance on the x axis.

    Args:
        curves: encoding name -> per layer a ``(heads, D + 1)`` tensor from :func:`bias_by_distance`.
        train_len: ``L``, marked with a dotted line.
    """
    names = list(curves)
    if not names:
        raise ValueError("no bias encodings to draw")
    rows = max(len(layers) for layers in curves.values())
    fig = new_figure(3.2 * len(names), 2.6 * rows + 0.6)
    axes = fig.subplots(rows, len(names), squeeze=False, sharex=True)
    for col, name in enumerate(names):
        for row in range(rows):
            ax = axes[row][col]
            if row >= len(curves[name]):
                ax.set_axis_off()
                continue
            _draw_heads(ax, curves[name][row], encoding_color(name, names))
            ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
            ax.set_title(name if rows == 1 else f"{name}, layer {row}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == rows - 1:
                ax.set_xlabel(f"distance i - j (L = {train_len})")
            if col == 0:
                ax.set_ylabel("bias added to the logit")
                if row == 0 and curves[name][0].shape[0] <= 8:  # which shade is which head (darkest: head 0)
                    ax.legend(fontsize=6)
    fig.suptitle(title)
    data = {
        "train_len": train_len,
        "query": max(c.shape[-1] for layers in curves.values() for c in layers) - 1,
        "distance": "index d of each list: key at distance d from the query (at position 'query')",
        "bias": {n: [rounded(c.tolist()) for c in layers] for n, layers in curves.items()},
    }
    return Picture(fig, data)


def _draw_heads(ax: object, curve: Tensor, color: str) -> None:
    heads = curve.shape[0]
    for h in range(heads):
        ax.plot(  # type: ignore[attr-defined]
            curve[h].numpy(),
            color=shade(color, 0.6 * h / max(heads - 1, 1)),
            linewidth=1.2,
            label=f"head {h}" if heads <= 8 else None,
        )


def bias_curves(
    encodings: Mapping[str, Sequence[PositionEncoding]], max_distance: int
) -> dict[str, list[Tensor]]:
    """:func:`bias_by_distance` of every layer of every encoding."""
    return {
        name: [bias_by_distance(enc, max_distance) for enc in layers] for name, layers in encodings.items()
    }
