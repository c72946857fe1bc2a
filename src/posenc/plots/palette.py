"""One colour per encoding (and per RoPE scaling), the same in every figure of the project.

Colours are keyed by name through the registries (``posenc.available()``, ``posenc.rotary.available_scalings()``),
so a name keeps its colour in every picture drawn by the same posenc; a row such as ``rope+yarn`` takes the colour
of its base encoding, a variant such as ``alibi:max_bias=4`` (:mod:`posenc.experiments.specs`) a darker shade of
it, chosen by its options.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from ..registry import available
from ..rotary.scaling import available_scalings

# tab10, then the light half of tab20: distinct for the first 20 names, then reused.
_ENCODING_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
# Dark2, then Set1: scalings are drawn beside plain RoPE (black).
_SCALING_COLORS = (
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
    "#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00",
)  # fmt: skip
#: Colour of plain RoPE (no scaling) and of names no registry knows.
NEUTRAL = "#000000"


def encoding_color(name: str, shown: Iterable[str] | None = None) -> str:
    """The colour of encoding ``name`` (hex); ``"rope+yarn"`` gets the colour of ``"rope"``, a variant
    ``"alibi:max_bias=4"`` a darker shade of ALiBi's: the :func:`variant_rank`-th of the variants of ALiBi among
    ``shown`` (the names of one figure, so no two of them share a shade), else one of three picked by its options.

    Names that are not registered get :data:`NEUTRAL`.
    """
    base, _, options = name.split("+", 1)[0].partition(":")
    names = available()
    if base not in names:
        return NEUTRAL
    color = _ENCODING_COLORS[names.index(base) % len(_ENCODING_COLORS)]
    if not options:
        return color
    rank = None if shown is None else variant_rank(name, shown)
    if rank is None:
        return darken(color, 0.3 + 0.12 * (zlib.crc32(options.encode()) % 3))
    tones = len(_VARIANT_TONES)
    kind, fraction = _VARIANT_TONES[rank % tones]
    return darken(color, fraction) if kind == "dark" else shade(color, fraction)


#: The tones of an encoding's variants in one figure, by rank: seven distinct ones, then again.
_VARIANT_TONES = (
    ("dark", 0.3),
    ("dark", 0.5),
    ("light", 0.4),
    ("dark", 0.7),
    ("light", 0.6),
    ("dark", 0.15),
    ("light", 0.75),
)


def variant_rank(name: str, shown: Iterable[str]) -> int | None:
    """Index of variant ``name`` (``alibi:max_bias=4``, or a row of it such as ``rope:base=5+yarn``) among the
    distinct variants of the same encoding in ``shown``, sorted; None if ``name`` is no variant or not shown."""
    spec = name.split("+", 1)[0]
    base, _, options = spec.partition(":")
    mine = sorted(
        {n.split("+", 1)[0] for n in shown if n.split("+", 1)[0].partition(":")[0] == base} - {base}
    )
    return mine.index(spec) if options and spec in mine else None


def scaling_color(rope_type: str) -> str:
    """The colour of RoPE scaling ``rope_type`` (hex); ``"default"`` (no scaling) and unknown names are black."""
    names = available_scalings()
    if rope_type not in names:
        return NEUTRAL
    return _SCALING_COLORS[names.index(rope_type) % len(_SCALING_COLORS)]


def darken(color: str, fraction: float) -> str:
    """``color`` mixed with black: ``fraction`` 0 keeps it, 1 gives black (a variant of an encoding)."""
    return _mix(color, 0, fraction)


def shade(color: str, fraction: float) -> str:
    """``color`` mixed with white: ``fraction`` 0 keeps it, 1 gives white (lines of one encoding's heads)."""
    return _mix(color, 255, fraction)


def _mix(color: str, toward: int, fraction: float) -> str:
    """``color`` (``#rrggbb``) moved ``fraction`` (clipped to [0, 1]) of the way to grey level ``toward``."""
    f = min(max(fraction, 0.0), 1.0)
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (toward - c) * f):02x}" for c in rgb)
