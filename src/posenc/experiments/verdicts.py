"""Reading ``results.json`` for the report: mean ± std of a perplexity or a ratio, verdicts (with the spread
over seeds), formatting. Works on the one-seed layout too (no ``perplexity_std``, no ``ratio``: one seed).

Verdicts compare each row's worst perplexity beyond ``L`` with its own perplexity at ``L``:
"holds up" within :data:`HOLDS_UP` (10 %), "degrades" up to :data:`BREAKS` (2x), "breaks" beyond.
"""

from __future__ import annotations

import math
from typing import Any

from .results import num

#: Worst ``ppl(Lv) / ppl(L)`` over ``Lv > L`` that still counts as holding up.
HOLDS_UP = 1.10
#: Beyond this ratio a row "breaks".
BREAKS = 2.0

#: An encoding whose validation perplexity at L fell by more than this over the last tenth of training is
#: marked "still improving".
STILL_IMPROVING = 0.03


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.2f}" if value < 1000 else f"{value:.3g}"


def worst_ratio(row: dict[str, Any], train_len: int) -> float | None:
    """Largest ``ppl(Lv) / ppl(L)`` over measured ``Lv > L``; None when no longer length was measurable."""
    base = num(row.get(str(train_len)))
    longer = [num(v) for k, v in row.items() if int(k) > train_len]
    measured = [v for v in longer if v is not None]
    if base is None or not measured:
        return None
    if not math.isfinite(base):
        return math.inf
    return max(measured) / base


def verdict(ratio: float | None) -> str:
    """ "holds up", "degrades", "breaks" or "n/a" (see the module docstring)."""
    if ratio is None:
        return "n/a"
    shown = round(ratio, 2)  # judged as printed, so a "1.10x" never reads "degrades"
    if shown <= HOLDS_UP:
        return "holds up"
    return "degrades" if shown <= BREAKS else "breaks"


def longest_ratio(row: dict[str, Any], train_len: int, lengths: list[int]) -> float | None:
    base, last = num(row.get(str(train_len))), num(row.get(str(lengths[-1])))
    if base is None or last is None or not math.isfinite(base):
        return None
    return last / base


Stat = tuple[float | None, float | None]


def stat(results: dict[str, Any], row: str, length: int) -> Stat:
    """``(mean, std)`` of ``row``'s perplexity at ``length`` (std None with one seed or old results)."""
    std = results.get("perplexity_std", {}).get(row, {}).get(str(length))
    return num(results["perplexity"][row].get(str(length))), num(std)


def ratio_stat(results: dict[str, Any], row: str, key: str = "worst") -> Stat:
    """``(mean, std)`` over seeds of ``row``'s ``"worst"`` (over ``Lv > L``) or ``"longest"`` ratio to ``ppl(L)``;
    from the mean row for results without per-seed ratios."""
    per_seed = results.get("ratio", {}).get(row)
    if per_seed is not None:
        mean, std = per_seed[f"{key}_mean_std"]
        return num(mean), num(std)
    train_len, lengths, values = results["train_len"], results["eval_lengths"], results["perplexity"][row]
    value = worst_ratio(values, train_len) if key == "worst" else longest_ratio(values, train_len, lengths)
    return value, None


def pm(value: Stat, suffix: str = "") -> str:
    mean, std = value
    if mean is None or not math.isfinite(mean) or std is None:
        return fmt(mean) + (suffix if mean is not None and math.isfinite(mean) else "")
    return f"{fmt(mean)}{suffix} ± {std:.2f}"


def spread_verdict(value: Stat) -> str:
    """:func:`verdict` of the mean, naming the other verdicts that mean +- std reaches."""
    mean, std = value
    v = verdict(mean)
    if mean is None or std is None or not math.isfinite(mean):
        return v
    others = [w for w in (verdict(mean - std), verdict(mean + std)) if w != v]
    return f"{v} (within the spread of {others[0]})" if others else v


def seed_count(results: dict[str, Any]) -> int:
    """Most seeds of any encoding (1 for old results)."""
    per = results.get("seeds_per_encoding", {})
    return max(max((len(v) for v in per.values()), default=1), 1)  # (every seed diverged: 0 kept)


def still_improving(results: dict[str, Any]) -> dict[str, float]:
    """Encodings whose validation perplexity at L fell more than :data:`STILL_IMPROVING` in the last tenth of
    training (mean over seeds), with that drop."""
    drops = results.get("last_tenth_improvement", {})
    return {n: d for n, d in drops.items() if d is not None and d > STILL_IMPROVING}


def ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    return "inf" if not math.isfinite(ratio) else f"{ratio:.2f}x"
