"""``results.json`` of ``posenc compare``: one record per (encoding, seed), merged across reruns, and the mean and
standard deviation over seeds that the table, the figure and the report show.

A record (``results["runs"][encoding][str(seed)]``) holds what one trained model measured: ``perplexity``
(row -> length -> value), ``final_train_loss``, ``train_seconds``, ``eval_seconds``, ``tokens_per_second`` and the
learning ``curve``. Everything else in ``results.json`` is derived from the records by :func:`aggregate`, so a
rerun that trains only some encodings or seeds merges its records into the old ones (:func:`merge_runs`) and the
summary covers all of them: results.json never shrinks.

Spread: the sample standard deviation over seeds (``ddof = 1``); None with one seed. A difference "exceeds the
spread" when it is larger than ``sqrt(std_a**2 + std_b**2)`` (:func:`separated`).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .specs import spec_order

#: Version of the ``results.json`` layout written by :func:`aggregate` (1: one seed, no ``runs``).
RESULTS_FORMAT = 2

Record = dict[str, Any]
Runs = dict[str, dict[str, Record]]


def num(value: Any) -> float | None:
    """A number from results (float, None for n/a, or "inf", "-inf", "nan" as written to JSON)."""
    if value is None:
        return None
    return float(value)


def diverged(record: Record, encoding: str, train_len: int) -> bool:
    """Whether a model's training diverged: its own perplexity at ``L`` or its final training loss is not finite
    (NaN or infinite), so it measured nothing about extrapolation. Such a seed is left out of every statistic."""
    at_l = num(record.get("perplexity", {}).get(encoding, {}).get(str(train_len)))
    loss = num(record.get("final_train_loss"))
    return any(v is not None and not math.isfinite(v) for v in (at_l, loss))


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the measured values (None entries are n/a and skipped).

    ``(None, None)`` when nothing was measured; std is None with one value; an infinite value gives ``(inf, None)``.
    """
    got = [v for v in values if v is not None]
    if not got:
        return None, None
    if not all(math.isfinite(v) for v in got):
        return math.inf, None
    mean = statistics.fmean(got)
    return mean, (statistics.stdev(got) if len(got) > 1 else None)


def separated(a: tuple[float | None, float | None], b: tuple[float | None, float | None]) -> bool | None:
    """Whether two ``(mean, std)`` differ by more than their combined spread; None when either has no spread."""
    (ma, sa), (mb, sb) = a, b
    if ma is None or mb is None or sa is None or sb is None:
        return None
    if not (math.isfinite(ma) and math.isfinite(mb)):
        return ma != mb
    return abs(ma - mb) > math.hypot(sa, sb)


def merge_runs(old: Runs, new: Runs) -> Runs:
    """``old`` updated with ``new``: a pair in both takes the new record, nothing in ``old`` is dropped."""
    merged = {enc: dict(seeds) for enc, seeds in old.items()}
    for enc, seeds in new.items():
        merged.setdefault(enc, {}).update(seeds)
    return merged


def ordered_encodings(runs: Runs) -> list[str]:
    """The encodings of ``runs`` in :func:`posenc.available` order, each before its variants
    (:func:`posenc.experiments.specs.spec_order`; unknown names last, sorted)."""
    return spec_order(set(runs))


def seed_values(runs: Runs, encoding: str, row: str, length: int) -> list[float | None]:
    """Perplexity of ``row`` at ``length`` in every seed of ``encoding`` (by seed)."""
    seeds = runs.get(encoding, {})
    return [num(seeds[s]["perplexity"].get(row, {}).get(str(length))) for s in sorted(seeds, key=int)]


def rows_of(runs: Runs) -> list[tuple[str, str]]:
    """``(encoding, row)`` for every table row: each encoding, then its extension rows, in order."""
    out: list[tuple[str, str]] = []
    for enc in ordered_encodings(runs):
        seen: list[str] = []
        for rec in runs[enc].values():
            seen += [r for r in rec["perplexity"] if r not in seen]
        out += [(enc, r) for r in sorted(seen, key=lambda r: (r != enc, r))]
    return out


def worst_ratios(
    runs: Runs, encoding: str, row: str, train_len: int, lengths: list[int]
) -> list[float | None]:
    """Per seed: the largest ``ppl(Lv) / ppl(L)`` over ``Lv > L`` (None when not measurable)."""
    out: list[float | None] = []
    for s in sorted(runs.get(encoding, {}), key=int):
        ppl = runs[encoding][s]["perplexity"].get(row, {})
        base = num(ppl.get(str(train_len)))
        longer = [v for v in (num(ppl.get(str(lv))) for lv in lengths if lv > train_len) if v is not None]
        if base is None or not longer:
            out.append(None)
        else:
            out.append(math.inf if not math.isfinite(base) else max(longer) / base)
    return out


def longest_ratios(
    runs: Runs, encoding: str, row: str, train_len: int, lengths: list[int]
) -> list[float | None]:
    """Per seed: ``ppl(longest) / ppl(L)`` (None when either is n/a or ``ppl(L)`` is infinite)."""
    at_l = seed_values(runs, encoding, row, train_len)
    last = seed_values(runs, encoding, row, lengths[-1])
    return [
        None if a is None or b is None or not math.isfinite(a) else b / a
        for a, b in zip(at_l, last, strict=True)
    ]


def improvement(curve: dict[str, Any] | None, key: str, tail: float = 0.1) -> float | None:
    """Relative drop of the curve ``key`` over the last ``tail`` of training: ``1 - ppl(end) / ppl(end - tail)``.

    The earlier point is the last one at or before ``(1 - tail) * steps``; None without two such points.
    """
    if not curve or key not in curve or len(curve["steps"]) < 2:
        return None
    steps, values = curve["steps"], [num(v) for v in curve[key]]
    cut = (1.0 - tail) * steps[-1]
    early = [i for i, s in enumerate(steps) if s <= cut]
    if not early or values[-1] is None or values[early[-1]] is None:
        return None
    a, b = values[early[-1]], values[-1]
    assert a is not None and b is not None
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    return 1.0 - b / a


def aggregate(runs: Runs, meta: dict[str, Any]) -> dict[str, Any]:
    """The whole ``results.json``: ``meta`` (lengths, config, settings, versions ...) plus the records and their
    per-row mean, std and seed count, and per-encoding means of the scalar measurements."""
    train_len, lengths = meta["train_len"], meta["eval_lengths"]
    names = ordered_encodings(runs)
    bad = {n: sorted((s for s, r in runs[n].items() if diverged(r, n, train_len)), key=int) for n in names}
    every = runs
    runs = {n: {s: r for s, r in runs[n].items() if s not in bad[n]} for n in names}  # the statistics' seeds
    ppl: dict[str, dict[str, float | None]] = {}
    std: dict[str, dict[str, float | None]] = {}
    ratio: dict[str, dict[str, Any]] = {}
    for enc, row in rows_of(every):
        stats = {lv: mean_std(seed_values(runs, enc, row, lv)) for lv in lengths}
        ppl[row] = {str(lv): m for lv, (m, _) in stats.items()}
        std[row] = {str(lv): s for lv, (_, s) in stats.items()}
        worst = worst_ratios(runs, enc, row, train_len, lengths)
        longest = longest_ratios(runs, enc, row, train_len, lengths)
        ratio[row] = {
            "seeds": sorted(int(s) for s in runs[enc]),
            "worst": worst,
            "worst_mean_std": list(mean_std(worst)),
            "longest": longest,
            "longest_mean_std": list(mean_std(longest)),
        }

    def per_encoding(key: str) -> dict[str, float | None]:
        return {n: mean_std([num(r.get(key)) for r in runs[n].values()])[0] for n in names}

    curves_key = str(train_len)
    improving = {
        n: mean_std([improvement(r.get("curve"), curves_key) for r in runs[n].values()])[0] for n in names
    }
    seeds = sorted({int(s) for n in names for s in every[n]})
    return {
        "format": RESULTS_FORMAT,
        **meta,
        "encodings": names,
        "seeds": seeds,
        "seeds_per_encoding": {n: sorted(int(s) for s in runs[n]) for n in names},
        "diverged": {n: [int(s) for s in bad[n]] for n in names if bad[n]},
        "perplexity": ppl,
        "perplexity_std": std,
        "ratio": ratio,
        "final_train_loss": per_encoding("final_train_loss"),
        "train_seconds": per_encoding("train_seconds"),
        "eval_seconds": per_encoding("eval_seconds"),
        "tokens_per_second": per_encoding("tokens_per_second"),
        "last_tenth_improvement": improving,
        "runs": every,
    }
