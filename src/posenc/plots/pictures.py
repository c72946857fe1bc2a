"""Every picture ``posenc plot`` draws, by name: a function of the :class:`PlotContext` returning a
:class:`~posenc.plots.common.Picture` (the figure and its numbers).

Encodings are found through the registry (``posenc.available()``, filtered by what ``posenc.build`` returns),
never by a list of names.

Sizes are bounded before anything is drawn (:func:`check_sizes`): a picture's tensors plus about
:data:`BYTES_PER_NUMBER` per number drawn (the Python float, the figure's path, the JSON text) may need at most
:data:`MAX_BYTES` (4 GiB), and at most half this machine's memory; so ``--length`` times ``--factor`` is bounded
(bias: heads x bias encodings x factor x L numbers). ``--dim``, ``--heads`` and ``--max-distance`` have fixed
maxima (:data:`MAX_DIM`, :data:`MAX_HEADS`, :data:`MAX_CLIP`), far beyond what a picture can show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..base import PositionEncoding
from ..registry import available, build, encoding_class
from ..rotary import XPos, available_scalings
from .attention import Measured, attention_distance_figure, attention_entropy_figure, attention_stats
from .bias import bias_curves, bias_figure
from .common import Picture
from .encodings import relative_index_figure, rope_decay_figure, sinusoidal_figure
from .rope_scaling import rope_scaling_figure
from .run import TrainedRun
from .xpos import xpos_figure

#: The most memory one picture may need (see the module docstring): generous for pictures, whose defaults need
#: under 0.1 GiB each.
MAX_BYTES = 4 * 2**30
#: About what one number drawn costs between its tensor and the files (measured: 100 - 170 bytes).
BYTES_PER_NUMBER = 160
#: The largest ``--dim`` (head dimension), ``--heads`` and ``--max-distance`` the pictures take.
MAX_DIM, MAX_HEADS, MAX_CLIP = 4096, 256, 2**20
#: The smallest ``--dim`` and ``--length`` every picture can be drawn for: dynamic NTK needs a rotary dimension
#: above 2 (its base exponent is R / (R - 2)) and LongRoPE's temperature divides by ln(L).
MIN_DIM, MIN_LENGTH = 4, 2


class NotApplicable(ValueError):
    """A picture that has nothing to show here (a run without an attention-bias encoding has no trained bias):
    skipped when drawing every picture that applies, an error when asked for by name."""


@dataclass
class PlotContext:
    """What the pictures are drawn for.

    Attributes:
        dim: head dimension of the rotary and sinusoidal pictures (even, at least :data:`MIN_DIM`).
        heads: heads of the untrained bias encodings.
        train_len: ``L`` (at least :data:`MIN_LENGTH`); curves by distance go to ``factor * L``.
        factor: how far past ``L`` the pictures look (16 as in Press et al. 2022).
        max_distance: clipping distance of the relative-index picture.
        run: a loaded ``posenc compare`` run, for the trained pictures.
        windows: held-out windows per length for the attention pictures.
    """

    dim: int = 128
    heads: int = 8
    train_len: int = 256
    factor: int = 16
    max_distance: int = 4
    run: TrainedRun | None = None
    windows: int = 1
    _built: dict[str, PositionEncoding] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name, value, least in (
            ("dim", self.dim, MIN_DIM),
            ("heads", self.heads, 1),
            ("length", self.train_len, MIN_LENGTH),
            ("factor", self.factor, 1),
            ("max-distance", self.max_distance, 1),
            ("windows", self.windows, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"--{name} must be an integer >= {least}, got {value!r}")
        if self.dim % 2:
            raise ValueError(f"--dim must be an even number >= {MIN_DIM}, got {self.dim}")
        for name, value, most in (
            ("dim", self.dim, MAX_DIM),
            ("heads", self.heads, MAX_HEADS),
            ("max-distance", self.max_distance, MAX_CLIP),
        ):
            if value > most:
                raise ValueError(f"--{name} must be at most {most} for a picture, got {value}")

    @property
    def longest(self) -> int:
        return self.factor * self.train_len

    def untrained(self) -> dict[str, PositionEncoding]:
        """Every registered encoding the untrained pictures draw (the bias family and xPos) as ``posenc.build``
        makes it (seeded, so FIRE's weights are reproducible; the global torch generator is left untouched)."""
        if not self._built:
            heads = self.heads
            drawn = [n for n in available() if n in available("bias") or issubclass(encoding_class(n), XPos)]
            with torch.random.fork_rng(devices=[]):  # seeded here, the caller's generator left as it was
                torch.manual_seed(0)
                self._built.update(
                    {n: build(n, dim=self.dim * heads, heads=heads, head_dim=self.dim) for n in drawn}
                )
        return self._built

    def trained(self) -> TrainedRun:
        if self.run is None:
            raise ValueError("this picture shows a trained model; give --run DIR (a `posenc compare` output)")
        return self.run

    @cached_property
    def measured(self) -> Measured:
        """Attention statistics of every trained model at ``L`` and the run's longest length."""
        run = self.trained()
        text = run.held_out_text()
        lengths = sorted({run.train_len, run.lengths[-1]})
        return {
            name: {n: attention_stats(model, text, n, self.windows) for n in lengths}
            for name, model in run.models.items()
        }


def _bias(ctx: PlotContext) -> Picture:
    encs = {n: [e] for n, e in ctx.untrained().items() if e.family == "bias"}
    query = ctx.longest - 1  # the last position of a factor * L window, as the trained picture draws it
    title = f"Attention bias by distance at initialisation ({ctx.heads} heads; query at {query})"
    return bias_figure(bias_curves(encs, query), ctx.train_len, title)


def _bias_trained(ctx: PlotContext) -> Picture:
    run = ctx.trained()
    layers = {n: m.layer_encodings() for n, m in run.models.items()}
    encs = {n: ls for n, ls in layers.items() if ls and ls[0].family == "bias"}
    if not encs:
        raise NotApplicable(f"--run {run.folder} has no attention-bias encoding to draw")
    longest = run.lengths[-1]
    title = f"Trained attention bias by distance ({run.folder.name}; query at {longest - 1})"
    return bias_figure(bias_curves(encs, longest - 1), run.train_len, title)


def _xpos(ctx: PlotContext) -> Picture:
    found = [(n, e) for n, e in ctx.untrained().items() if isinstance(e, XPos)]
    if not found:
        raise NotApplicable("no registered encoding is an xPos")
    name, enc = found[0]
    return xpos_figure(enc, ctx.longest, ctx.train_len, name)


Drawer = Callable[[PlotContext], Picture]

#: name -> (needs a compare run, drawer, what it shows). Output files are ``<name>.png`` and ``<name>.json``.
PICTURES: dict[str, tuple[bool, Drawer, str]] = {
    "sinusoidal": (False, lambda c: sinusoidal_figure(c.train_len, c.dim), "the sinusoidal table"),
    "rope_decay": (
        False,
        lambda c: rope_decay_figure(c.train_len, c.dim, bases=(10000.0, 500000.0)),
        "RoFormer's long-term decay bound",
    ),
    "relative_index": (
        False,
        lambda c: relative_index_figure(12, c.max_distance),
        "Shaw's clipped relative indices",
    ),
    "bias": (False, _bias, "bias by distance and head of every bias encoding, untrained"),
    "rope_scaling": (
        False,
        lambda c: rope_scaling_figure(c.dim, 10000.0, c.train_len, float(c.factor)),
        "wavelength per dimension for every RoPE scaling",
    ),
    "xpos_decay": (False, _xpos, "xPos decay factor per dimension pair"),
    "bias_trained": (True, _bias_trained, "bias by distance and head, trained (per layer)"),
    "attention_distance": (
        True,
        lambda c: attention_distance_figure(c.measured, c.trained().train_len),
        "mean attention weight against distance",
    ),
    "attention_entropy": (
        True,
        lambda c: attention_entropy_figure(c.measured, c.trained().train_len),
        "attention entropy against position",
    ),
}


#: The trained pictures drawn on the run's held-out text (:attr:`PlotContext.measured`).
ON_TEXT = frozenset({"attention_distance", "attention_entropy"})


def picture_bytes(name: str, ctx: PlotContext) -> int:
    """About how many bytes untrained picture ``name`` needs for ``ctx`` (an upper estimate): its tensors, and
    :data:`BYTES_PER_NUMBER` per number drawn and written; 0 for the trained pictures (their sizes are the run's)."""
    longest, length, pairs = ctx.longest + 1, ctx.train_len + 1, ctx.dim // 2
    bias = ctx.heads * longest * max(1, len(available("bias")))
    drawn, computed = {  # (numbers drawn and written, bytes of the tensors computed on the way)
        "sinusoidal": (length * ctx.dim, 8 * length * ctx.dim),
        "rope_decay": (2 * length, 2 * 3 * 16 * length * pairs),  # (L + 1, D/2) complex128, three at a time
        "relative_index": (12 * 12, 0),
        "bias": (bias, 16 * bias),
        "rope_scaling": (4 * pairs * (len(available_scalings()) + 1), 8 * longest),
        "xpos_decay": (8 * longest, 2 * 8 * pairs * longest),  # (D/2, N) float64; 8 pairs drawn
    }.get(name, (0, 0))
    return BYTES_PER_NUMBER * drawn + computed


def picture_limit() -> int:
    """The most bytes a picture may need here: :data:`MAX_BYTES`, less where this machine's memory is smaller."""
    from ..models.generate import device_memory

    total = device_memory(torch.device("cpu"))
    return MAX_BYTES if total is None else min(MAX_BYTES, total // 2)


def check_sizes(names: list[str], ctx: PlotContext) -> None:
    """Refuse, before anything is drawn, a ``--length`` (with ``--factor``, ``--dim`` and ``--heads``) whose
    pictures would need more than :func:`picture_limit` bytes, naming the largest ``--length`` they take."""
    limit = picture_limit()
    over = [(picture_bytes(n, ctx), n) for n in names if picture_bytes(n, ctx) > limit]
    if not over:
        return
    need, name = max(over)

    def fits(length: int) -> bool:
        small = PlotContext(ctx.dim, ctx.heads, length, ctx.factor, ctx.max_distance)
        return all(picture_bytes(n, small) <= limit for n in names)

    least = MIN_LENGTH - 1
    lo, hi = least, ctx.train_len  # fits(lo) or lo == least; not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    gib = f"the {name} picture would need about {need / 2**30:,.1f} GiB, more than the {limit / 2**30:.1f} GiB a "
    if lo == least:
        raise ValueError(
            f"--factor {ctx.factor}, --dim {ctx.dim} and --heads {ctx.heads} are too large to plot: even at "
            f"--length {MIN_LENGTH} {gib}picture may use here; lower them (or leave {name} out with --only)"
        )
    raise ValueError(
        f"--length {ctx.train_len} is too large to plot: with --factor {ctx.factor}, --dim {ctx.dim} and "
        f"--heads {ctx.heads} {gib}picture may use here; --length takes at most {lo} (or leave {name} out with "
        "--only)"
    )


def picture_names(with_run: bool) -> list[str]:
    """The pictures drawn by default: the untrained ones, plus the trained ones with a run."""
    return [name for name, (needs_run, _, _) in PICTURES.items() if with_run or not needs_run]


def draw(name: str, ctx: PlotContext) -> Picture:
    """Draw picture ``name``.

    Raises:
        NotApplicable: the picture has nothing to show for ``ctx`` (see :class:`NotApplicable`).
        ValueError: unknown name, or a trained picture without a run.
    """
    if name not in PICTURES:
        raise ValueError(f"unknown picture {name!r}; choose from {', '.join(PICTURES)}")
    return PICTURES[name][1](ctx)
