"""What every picture shares: a blank Agg figure and the :class:`Picture` (a figure plus its numbers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float = 7.0, height: float = 4.5) -> Figure:
    """An empty matplotlib figure on the Agg canvas (no display needed), constrained layout, 120 dpi."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


@dataclass
class Picture:
    """A figure and the numbers drawn in it (JSON-safe: dicts, lists, numbers, strings)."""

    figure: Figure
    data: dict[str, Any]

    def save(self, out: Path, name: str) -> list[Path]:
        """Write ``<name>.png`` and ``<name>.json`` under ``out``, each atomically; return both paths."""
        from ..experiments.checkpoints import save_figure, write_text

        png, numbers = Path(out) / f"{name}.png", Path(out) / f"{name}.json"
        save_figure(self.figure, png)
        write_text(numbers, json.dumps(self.data, indent=1, allow_nan=False) + "\n")
        return [png, numbers]


def rounded(values: Any, digits: int = 7) -> Any:
    """Nested lists of floats rounded to ``digits`` significant digits (compact JSON); NaN/inf become None."""
    if isinstance(values, (list, tuple)):
        return [rounded(v, digits) for v in values]
    if isinstance(values, float):
        if values != values or values in (float("inf"), float("-inf")):
            return None
        return float(f"{values:.{digits}g}")
    return values
