"""One colour per encoding, the same in every figure."""

from __future__ import annotations

import math

import posenc
from posenc.plots.compare import curves_figure, perplexity_figure
from posenc.plots.palette import NEUTRAL, encoding_color, scaling_color, shade
from posenc.rotary import available_scalings


def test_every_encoding_has_its_own_colour_and_extensions_share_their_base() -> None:
    colours = [encoding_color(n) for n in posenc.available()]
    assert len(set(colours)) == len(colours) and NEUTRAL not in colours
    for name in posenc.available():
        assert encoding_color(f"{name}+yarn") == encoding_color(name)
    assert encoding_color("not-an-encoding") == NEUTRAL


def test_every_scaling_has_its_own_colour() -> None:
    colours = [scaling_color(s) for s in available_scalings()]
    assert len(set(colours)) == len(colours) and NEUTRAL not in colours
    assert scaling_color("default") == NEUTRAL


def test_shade_mixes_with_white() -> None:
    assert shade("#000000", 0.0) == "#000000" and shade("#000000", 1.0) == "#ffffff"
    assert shade("#204060", 0.5) == "#90a0b0"


def test_compare_figure_uses_the_palette() -> None:
    import matplotlib.colors as mc

    names = posenc.available()[:3]
    results = {
        "train_len": 8,
        "eval_lengths": [8, 16],
        "perplexity": {n: {"8": 2.0 + i, "16": 3.0 + i} for i, n in enumerate(names)},
    }
    ax = perplexity_figure(results).axes[0]
    drawn = {line.get_label(): mc.to_hex(line.get_color()) for line in ax.get_lines()}
    for n in names:
        assert drawn[n] == encoding_color(n)


def test_learning_curves_use_the_palette() -> None:
    """The learning curves took tab10 by position in the run (rope blue there, red in the perplexity figure)."""
    import matplotlib.colors as mc

    names = posenc.available()[-3:]
    curve = {"steps": [1, 2], "8": [3.0, 2.0], "32": [4.0, 3.0]}
    results = {"train_len": 8, "encodings": names, "runs": {n: {"0": {"curve": curve}} for n in names}}
    fig = curves_figure(results)
    assert fig is not None
    drawn = {line.get_label(): mc.to_hex(line.get_color()) for line in fig.axes[0].get_lines()}
    for n in names:
        assert drawn[n] == encoding_color(n)


def test_learning_curve_points_stay_at_their_steps() -> None:
    """A missing point (a non-finite perplexity is stored as null) was dropped and the later points slid onto
    earlier steps: 2.0 measured at step 30 was drawn at step 20."""
    curve = {"steps": [10, 20, 30], "8": [3.0, None, 2.0]}
    results = {"train_len": 8, "encodings": ["rope"], "runs": {"rope": {"0": {"curve": curve}}}}
    fig = curves_figure(results)
    assert fig is not None
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "rope"]
    assert list(line.get_xdata()) == [10, 30] and list(line.get_ydata()) == [3.0, 2.0]


def test_a_non_finite_point_of_one_seed_leaves_its_step_out_of_the_mean() -> None:
    """``_mean_curve``: the mean over seeds at every step where each seed has a finite value; a NaN or an infinity
    of one seed leaves its step out (a NaN mean was drawn at that step)."""
    for bad in (math.nan, math.inf):
        curves = [
            {"steps": [10, 20, 30], "8": [3.0, bad, 2.0]},
            {"steps": [10, 20, 30], "8": [5.0, 4.0, 4.0]},
        ]
        results = {
            "train_len": 8,
            "encodings": ["rope"],
            "runs": {"rope": {str(i): {"curve": c} for i, c in enumerate(curves)}},
        }
        fig = curves_figure(results)
        assert fig is not None
        (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "rope"]
        assert list(line.get_xdata()) == [10, 30] and list(line.get_ydata()) == [4.0, 3.0]
