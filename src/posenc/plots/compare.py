"""The figures of ``posenc compare``: perplexity against evaluation length (error bars: std over seeds), and
validation perplexity during training (learning curves)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .common import new_figure
from .palette import encoding_color, variant_rank

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def extension_dashes() -> Iterator[Any]:
    """Dash patterns for the RoPE extension rows of one panel, in turn."""
    return iter([(0, (5, 2)), (0, (1, 1)), (0, (5, 1, 1, 1)), (0, (3, 3)), (0, (8, 2, 1, 2))] * 4)


#: Markers of an encoding's variants (``alibi:max_bias=4``), by :func:`variant_rank`.
VARIANT_MARKERS = ("s", "D", "^", "v", "P", "X")


def row_style(name: str, dashes: Iterator[Any], shown: list[str] | None = None) -> dict[str, Any]:
    """``ax.plot`` style of a row: solid with dots in the encoding's colour (:func:`encoding_color`), dashed with
    crosses in that colour for ``<encoding>+<extension>``; a variant (``alibi:max_bias=4``) in a darker shade of it
    with its own marker, distinct from the other variants among ``shown`` (the figure's rows)."""
    base = name.split("+", 1)[0]
    extension = name != base
    rank = variant_rank(base, shown or [base])
    marker = "o" if ":" not in base else VARIANT_MARKERS[(rank or 0) % len(VARIANT_MARKERS)]
    return {
        "linestyle": next(dashes) if extension else "-",
        "marker": "x" if extension else marker,
        "markersize": 4 if extension else 3,
        "color": encoding_color(base, shown),
        "linewidth": 1.2 if extension else 1.8,
    }


def perplexity_figure(results: dict[str, Any]) -> Figure:
    """Perplexity (log y) against evaluation length (log2 x) for every row of ``results["perplexity"]``.

    Colours come from :func:`posenc.plots.palette.encoding_color` (the same in every figure); RoPE
    context-extension rows are dashed in RoPE's colour; n/a and infinite values are left out; a dotted line marks
    ``L``; error bars are the standard deviation over seeds where ``results["perplexity_std"]`` has one.
    """
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    train_len, lengths = results["train_len"], results["eval_lengths"]
    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    variants, shown = extension_dashes(), list(results["perplexity"])
    for name, row in results["perplexity"].items():
        spread = results.get("perplexity_std", {}).get(name, {})
        points = [(lv, row.get(str(lv)), spread.get(str(lv))) for lv in lengths]
        kept = [(lv, float(v), e) for lv, v, e in points if isinstance(v, (int, float)) and math.isfinite(v)]
        if not kept:
            continue
        xs, ys = [lv for lv, _, _ in kept], [v for _, v, _ in kept]
        errs = [e if isinstance(e, (int, float)) else 0.0 for _, _, e in kept]
        if any(errs):
            ax.errorbar(xs, ys, yerr=errs, capsize=2, label=name, **row_style(name, variants, shown))
        else:
            ax.plot(xs, ys, label=name, **row_style(name, variants, shown))
    ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(lengths, [f"{lv // train_len}L\n{lv}" for lv in lengths])
    ax.set(
        xlabel=f"evaluation length (bytes; trained at L = {train_len})",
        ylabel="perplexity per byte (log)",
        title="Train short, test long (non-overlapping windows)",
    )
    ax.grid(True, which="both", alpha=0.3)
    # (every run diverged: no line, and matplotlib warns on an empty legend)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    return fig


def curves_figure(results: dict[str, Any]) -> Figure | None:
    """Validation perplexity (log y) against training step, at L (solid) and 4L (dashed), in each encoding's
    colour (:func:`encoding_color`, as in every figure), the mean over seeds of
    ``results["runs"][encoding][seed]["curve"]`` (diverged seeds left out); None without curves."""
    from matplotlib.ticker import FormatStrFormatter

    bad = results.get("diverged", {})  # diverged seeds are left out here too, as from every number
    runs = {
        n: {s: r for s, r in seeds.items() if int(s) not in bad.get(n, [])}
        for n, seeds in results.get("runs", {}).items()
    }
    names = [n for n in results["encodings"] if any(r.get("curve") for r in runs.get(n, {}).values())]
    if not names:
        return None
    train_len = results["train_len"]
    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    for name in names:
        curves = [r["curve"] for r in runs[name].values() if r.get("curve")]
        for key, style in ((str(train_len), "-"), (str(4 * train_len), "--")):
            points = _mean_curve(curves, key)
            if not points:
                continue
            label = name if style == "-" else None
            xs, ys = zip(*points, strict=True)
            rank = variant_rank(name, names)  # a variant: its marker too, as in the perplexity figure
            marker = None if rank is None else VARIANT_MARKERS[rank % len(VARIANT_MARKERS)]
            ax.plot(
                xs, ys, style, color=encoding_color(name, names), label=label, marker=marker, markersize=3
            )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set(
        xlabel="training step",
        ylabel="validation perplexity per byte (log)",
        title=f"Learning curves: at L = {train_len} (solid) and 4L (dashed), mean over seeds",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    return fig


def _mean_curve(curves: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, mean over seeds)`` of the curves' ``key`` at every step where each seed has a value (a missing or
    non-finite point leaves its step out, never shifts the later points onto earlier steps); [] when the seeds'
    steps differ."""
    steps = curves[0].get("steps", [])
    rows = [c.get(key, []) for c in curves]
    if any(c.get("steps") != steps or len(r) != len(steps) for c, r in zip(curves, rows, strict=True)):
        return []
    out = []
    for i, step in enumerate(steps):
        values = [r[i] for r in rows]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            out.append((step, sum(float(v) for v in values) / len(values)))
    return out
