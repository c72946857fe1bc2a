"""The figures of ``posenc tasks``: accuracy against evaluation length per task, and the passkey "needle in a
haystack" heatmap (evaluation length x depth of the key) per encoding (Mohtashami & Jaggi 2023; YaRN, Fig. 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def accuracy_figure(results: dict[str, Any]) -> Figure:
    """One panel per task: exact-match accuracy (mean over seeds) against evaluation length (log2 x), one line
    per row; RoPE extension rows dashed in RoPE's colour; n/a points left out; a dotted line marks ``L``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from .compare import extension_dashes, row_style

    train_len, lengths, tasks = results["train_len"], results["eval_lengths"], results["tasks"]
    fig = Figure(figsize=(4.2 * len(tasks) + 1.8, 4.2), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False, sharey=True)[0]
    for ax, task in zip(axes, tasks, strict=True):
        variants = extension_dashes()
        for row, values in results["accuracy"][task].items():
            points = [(lv, values.get(str(lv))) for lv in lengths]
            xs = [lv for lv, v in points if v is not None]
            ys = [100 * float(v) for _, v in points if v is not None]
            shown = list(results["accuracy"][task])  # (the figure's rows: variants get shades of their own)
            ax.plot(xs, ys, label=row, **row_style(row, variants, shown))
        ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{lv // train_len}L\n{lv}" for lv in lengths])
        ax.set_ylim(-3, 103)
        ax.set(title=task, xlabel=f"evaluation length (bytes; L = {train_len})")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("exact-match accuracy (%)")
    legend: dict[
        str, Any
    ] = {}  # every row of every panel once (a rerun may add an encoding to one task only)
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=7)
    seeds = len(results["seeds"])
    fig.suptitle(f"Length generalization on synthetic tasks (mean of {seeds} seed{'s' * (seeds > 1)})")
    return fig


def passkey_figure(results: dict[str, Any], row: str) -> Figure:
    """Passkey accuracy of ``row`` over (depth of the key, evaluation length); n/a cells grey."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    train_len, lengths = results["train_len"], results["eval_lengths"]
    cells = results["passkey_depth"][row]
    depths = list(cells[str(lengths[0])])
    grid = np.array(
        [[np.nan if cells[str(lv)][d] is None else 100 * cells[str(lv)][d] for lv in lengths] for d in depths]
    )
    fig = Figure(figsize=(1.1 * len(lengths) + 2.2, 0.5 * len(depths) + 1.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            text = "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(lengths)), [f"{lv // train_len}L\n{lv}" for lv in lengths])
    ax.set_yticks(range(len(depths)), [f"{float(d):.0%}" for d in depths])
    ax.set(xlabel="evaluation length (bytes)", ylabel="depth of the key", title=f"passkey: {row}")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    return fig
