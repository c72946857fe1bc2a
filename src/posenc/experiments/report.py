"""``report.md`` of a comparison, written from the measured numbers: the table, which encodings hold up past the
training length, which of the seed document's claims the data supports, and the paper's numbers beside ours.

Verdicts compare each row's worst perplexity beyond ``L`` with its own perplexity at ``L``:
"holds up" within :data:`HOLDS_UP` (10 %), "degrades" up to :data:`BREAKS` (2x), "breaks" beyond.

With several seeds every number is a mean over seeds with its standard deviation, a verdict whose mean +- std
crosses a threshold says so, and a ranking ("best", an ordering) is claimed only where the gap exceeds the
combined spread (:func:`posenc.experiments.results.separated`); the report says which gaps do not. Results of
the one-seed layout (no ``runs``) are read as one seed.
"""

from __future__ import annotations

import math
from typing import Any

from .results import num, separated

#: Worst ``ppl(Lv) / ppl(L)`` over ``Lv > L`` that still counts as holding up.
HOLDS_UP = 1.10
#: Beyond this ratio a row "breaks".
BREAKS = 2.0

#: Press et al. 2022, Table 2 (WikiText-103, L = 512): perplexity at L and at 8512 tokens (16.6 L).
PAPER: dict[str, tuple[str, float, float]] = {
    "sinusoidal": ("Sinusoidal", 20.05, 305.65),
    "rope": ("Rotary", 20.07, 54.98),
    "t5": ("T5 bias", 19.65, 43.08),
    "alibi": ("ALiBi", 19.73, 18.34),
}
#: An encoding whose validation perplexity at L fell by more than this over the last tenth of training is
#: marked "still improving".
STILL_IMPROVING = 0.03

#: The issue's x-transformers measurement (4 layers, dim 128, 400 steps, L = 128, stdlib bytes): rotary at L, 8L.
XTRANSFORMERS_ROTARY = (6.25, 10.55)

Row = dict[str, Any]


def _fmt(value: float | None) -> str:
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


def _longest_ratio(row: dict[str, Any], train_len: int, lengths: list[int]) -> float | None:
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
    value = worst_ratio(values, train_len) if key == "worst" else _longest_ratio(values, train_len, lengths)
    return value, None


def _pm(value: Stat, suffix: str = "") -> str:
    mean, std = value
    if mean is None or not math.isfinite(mean) or std is None:
        return _fmt(mean) + (suffix if mean is not None and math.isfinite(mean) else "")
    return f"{_fmt(mean)}{suffix} ± {std:.2f}"


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
    return max((len(v) for v in per.values()), default=1)


def still_improving(results: dict[str, Any]) -> dict[str, float]:
    """Encodings whose validation perplexity at L fell more than :data:`STILL_IMPROVING` in the last tenth of
    training (mean over seeds), with that drop."""
    drops = results.get("last_tenth_improvement", {})
    return {n: d for n, d in drops.items() if d is not None and d > STILL_IMPROVING}


def table(results: dict[str, Any]) -> str:
    """The markdown table: perplexity (mean ± std over seeds) per row per length, ratio at the longest length,
    verdict; a dagger marks encodings still improving at the end of training."""
    train_len, lengths = results["train_len"], results["eval_lengths"]
    heads = [f"{lv // train_len}L = {lv}" if lv != train_len else f"L = {lv}" for lv in lengths]
    improving = still_improving(results)
    seeds = results.get("seeds_per_encoding", {})
    lines = [
        "| encoding | seeds | " + " | ".join(heads) + f" | {lengths[-1] // train_len}L / L | verdict |",
        "|---" * (len(lengths) + 4) + "|",
    ]
    for name in results["perplexity"]:
        cells = [_pm(stat(results, name, lv)) for lv in lengths]
        base = name.split("+", 1)[0]
        mark = " †" if name in improving else ""
        n = len(seeds.get(base, [0]))
        lines.append(
            f"| {name}{mark} | {n} | "
            + " | ".join(cells)
            + f" | {_pm(ratio_stat(results, name, 'longest'), 'x')} | {spread_verdict(ratio_stat(results, name))} |"
        )
    return "\n".join(lines)


def ranking(results: dict[str, Any], length: int, rows: list[str]) -> str:
    """Which row is best at ``length``, and whether it beats the others by more than the spread."""
    scored = [(r, stat(results, r, length)) for r in rows]
    finite = [(r, s) for r, s in scored if s[0] is not None and math.isfinite(s[0])]
    if not finite:
        return "none measured"
    finite.sort(key=lambda rs: rs[1][0] or 0.0)
    (best, best_s), rest = finite[0], finite[1:]
    head = f"**{best}** ({_pm(best_s)})"
    if not rest:
        return head
    if best_s[1] is None:
        return f"{head}; one seed, so no spread to tell it from {rest[0][0]} ({_pm(rest[0][1])})"
    tied = [f"{r} ({_pm(s)})" for r, s in rest if not separated(best_s, s)]
    if tied:
        return f"{head}, but not by more than the spread over {', '.join(tied)}"
    return f"{head}, ahead of every other row by more than the spread"


def _claim(results: dict[str, Any], name: str, claim: str, extra: str = "") -> str:
    train_len, lengths = results["train_len"], results["eval_lengths"]
    if name not in results["perplexity"]:
        return f"- *{claim}*: not tested ({name} was not in this run)."
    ratio = ratio_stat(results, name)
    v = verdict(ratio[0])
    change = (
        f"{_pm(stat(results, name, train_len))} at L -> {_pm(stat(results, name, lengths[-1]))} at "
        f"{lengths[-1] // train_len}L"
    )
    if v == "holds up":
        answer = "**supported**"
    elif v == "degrades":
        answer = "**not supported** (it degrades, but does not break)"
    elif v == "breaks":
        answer = "**not supported**"
    else:
        answer = "**not testable here**"
    if spread_verdict(ratio) != v:
        answer += f" ({spread_verdict(ratio).split(' (', 1)[1]}"
    return (
        f"- *{claim}*: {answer}: {name} went {change} (worst {_pm(ratio, 'x')} of its L perplexity).{extra}"
    )


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    return "inf" if not math.isfinite(ratio) else f"{ratio:.2f}x"


def _also(results: dict[str, Any], name: str, what: str) -> str:
    """A sentence on a related row: its verdict and its L -> longest change, or "" when it was not run."""
    if name not in results["perplexity"]:
        return ""
    train_len, last = results["train_len"], results["eval_lengths"][-1]
    ratio = ratio_stat(results, name)
    return (
        f" {what}, {spread_verdict(ratio)} ({_pm(stat(results, name, train_len))} -> "
        f"{_pm(stat(results, name, last))}, worst {_pm(ratio, 'x')})."
    )


def claims(results: dict[str, Any]) -> str:
    """The seed document's claims, each judged by this run's numbers."""
    train_len, lengths = results["train_len"], results["eval_lengths"]
    out = [_claim(results, "sinusoidal", '"sinusoidal encodings handle any length"')]
    out.append(
        _claim(
            results,
            "shaw",
            '"clipping makes relative encodings generalise to longer inputs"',
            _also(results, "t5", "T5's bucketed bias, another clipped relative scheme"),
        )
    )
    ext = [r for r in results["perplexity"] if r.startswith("rope+")]
    ext_note = (
        f" With inference-time extension (no retraining) the best at {lengths[-1] // train_len}L was "
        f"{ranking(results, lengths[-1], ext)}."
        if ext
        else ""
    )
    ext_note += _also(results, "xpos", "xPos, RoPE with an exponential decay")
    out.append(_claim(results, "rope", '"RoPE extrapolates well"', ext_note))
    out.append(
        '- *"RoPE\'s attention decays with distance"*: not something perplexity measures; it is a property of '
        "the formula (RoFormer section 3.4.3, an upper bound on the attention logit for equal vectors), drawn by "
        "`posenc plot` as `rope_decay.png`. Not tested here."
    )
    del train_len
    return "\n".join(out)


def _order(keys: list[str], value: dict[str, float]) -> list[str]:
    return sorted(keys, key=lambda k: value[k])


def paper_comparison(results: dict[str, Any]) -> str:
    """Our ratios beside Press et al. 2022 Table 2, whether the orderings agree, which of our gaps exceed the
    spread, and in how many seeds the paper's order holds."""
    train_len, lengths = results["train_len"], results["eval_lengths"]
    mult = lengths[-1] // train_len
    lines = [
        f"| encoding | paper L=512 | paper 16.6L | paper ratio | here L={train_len} | here {mult}L | here ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    ours: dict[str, Stat] = {}
    for key, (label, p_l, p_long) in PAPER.items():
        here_l: Stat = (None, None)
        here_long: Stat = (None, None)
        ratio: Stat = (None, None)
        if key in results["perplexity"]:
            here_l, here_long = stat(results, key, train_len), stat(results, key, lengths[-1])
            ratio = ratio_stat(results, key, "longest")
        if ratio[0] is not None:
            ours[key] = ratio
        lines.append(
            f"| {label} ({key}) | {p_l:.2f} | {p_long:.2f} | {p_long / p_l:.2f}x | {_pm(here_l)} | "
            f"{_pm(here_long)} | {_pm(ratio, 'x')} |"
        )
    paper_order = sorted(PAPER, key=lambda k: PAPER[k][2] / PAPER[k][1])
    shared = [k for k in paper_order if k in ours]
    means = {k: ours[k][0] or 0.0 for k in shared}
    here_order = _order(shared, means)
    if len(shared) < 2:
        verdict_line = "Too few of the paper's encodings were run to compare orderings."
    elif here_order == shared:
        verdict_line = (
            f"Ordered by how much perplexity grows from L to the longest length, this run agrees with the paper: "
            f"{' < '.join(here_order)}."
        )
    else:
        verdict_line = (
            f"Ordered by growth from L to the longest length, the paper has {' < '.join(shared)}; this run has "
            f"{' < '.join(here_order)}."
        )
    if len(shared) >= 2:
        verdict_line += " " + _order_spread(results, here_order, ours, shared)
    xl, x8 = XTRANSFORMERS_ROTARY
    x_line = f"For reference, x-transformers' rotary model (4 layers, dim 128, 400 steps, L=128, stdlib bytes) went {xl} -> {x8} at 8L ({x8 / xl:.2f}x)"
    if "rope" in results["perplexity"] and 8 * train_len in lengths:
        at_l, at_8l = stat(results, "rope", train_len), stat(results, "rope", 8 * train_len)
        ratio8 = None if at_l[0] is None or at_8l[0] is None else at_8l[0] / at_l[0]
        x_line += f"; posenc's rope here went {_pm(at_l)} -> {_pm(at_8l)} at 8L ({_ratio_text(ratio8)})"
    return "\n".join(lines) + "\n\n" + verdict_line + "\n\n" + x_line + "."


def _order_spread(results: dict[str, Any], here: list[str], ours: dict[str, Stat], paper: list[str]) -> str:
    """Which adjacent gaps of our order exceed the spread, and in how many seeds the paper's order holds."""
    if any(ours[k][1] is None for k in here):
        return "With one seed there is no spread to tell whether these gaps are real."
    pairs = list(zip(here, here[1:], strict=False))
    within = [f"{a} ~ {b}" for a, b in pairs if not separated(ours[a], ours[b])]
    text = (
        "Every adjacent gap exceeds the spread over seeds."
        if not within
        else f"Gaps within the spread over seeds (not a ranking): {', '.join(within)}."
    )
    per_seed = {
        k: dict(zip(results["ratio"][k]["seeds"], results["ratio"][k]["longest"], strict=True)) for k in here
    }
    common = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    holds = 0
    for seed in common:
        values = {k: per_seed[k][seed] for k in here}
        if all(v is not None for v in values.values()):
            holds += _order(paper, {k: float(v) for k, v in values.items() if v is not None}) == paper
    return text + f" The paper's order holds in {holds} of {len(common)} seeds."


def _setup(results: dict[str, Any]) -> str:
    cfg = results["config"]
    t, d = cfg["train"], cfg["data"]
    v = results["versions"]
    knobs = results.get("settings", {})
    seeds = results.get("seeds", [t.get("seed", 0)])
    scaled = " (embeddings scaled by sqrt(dim), as in fairseq)" if t.get("scale_embeddings") else ""
    rate = [r for r in results.get("tokens_per_second", {}).values() if r]
    speed = (
        f" Training ran at {statistics_median(rate):,.0f} tokens/s (median over encodings; "
        f"{'compiled' if t.get('compile') else 'eager'} step, fused AdamW, losses read once per run)."
        if rate
        else ""
    )
    return (
        f"Preset `{knobs.get('preset', 'demo')}`. Each model: decoder-only `TransformerLM`, {t['depth']} layers, "
        f"dim {t['dim']}, {t['heads']} heads, bytes as tokens{scaled}; {t['steps']} AdamW steps of "
        f"{t['batch_size']} x {t['train_len']} bytes (peak lr {t['lr']}, warmup "
        f"{t.get('warmup_fraction', 0.1):g} of the steps, cosine), seeds {', '.join(map(str, seeds))}. "
        f"Data: {d['source']}, split {d['split']} "
        f"({d['train_bytes']:,} training / {d['val_bytes']:,} validation bytes). Evaluation: the same "
        f"{results['eval_tokens']:,} held-out bytes at every length, cut into non-overlapping windows "
        f"(Press et al. 2022); perplexity is per byte. torch {v['torch']}, {v['device']}"
        f"{' (' + v['gpu'] + ')' if 'gpu' in v else ''}, {v['world_size']} process(es), {v['threads']} thread(s); "
        f"wall time of the last invocation {results['wall_seconds']:.0f} s.{speed}"
    )


def statistics_median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def curves_section(results: dict[str, Any], figure: str | None) -> str:
    """Which encodings were still learning when training stopped, and what that means for their verdicts."""
    improving = still_improving(results)
    lines = []
    if figure:
        lines.append(f"![validation perplexity during training]({figure})")
    pct = round(STILL_IMPROVING * 100)
    knobs = results.get("settings", {})
    if knobs.get("curve_points"):
        lines.append(
            f"Validation perplexity at L and 4L, measured {knobs['curve_points']} times per run on "
            f"{knobs['curve_bytes']:,} held-out bytes (whole windows of 4L)."
        )
    if improving:
        names = ", ".join(f"**{n}** (-{d * 100:.1f} %)" for n, d in improving.items())
        lines.append(
            f"Still improving (†: validation perplexity at L fell by more than {pct} % over the last tenth of "
            f"training, mean over seeds): {names}. These models are undertrained: their perplexity at L is not "
            "where it would settle, so their ratio to L mixes extrapolation with learning still under way, and "
            "their verdict may change with more `--steps` (or `--preset cpu-long`)."
        )
    elif results.get("last_tenth_improvement"):
        lines.append(
            f"No encoding's validation perplexity at L fell by more than {pct} % over the last tenth of "
            "training: the verdicts compare models near the end of their learning at this budget."
        )
    at_l = [
        (n, stat(results, n, results["train_len"])[0])
        for n in results["encodings"]
        if n in results["perplexity"]
    ]
    finite = [(n, v) for n, v in at_l if v is not None and math.isfinite(v)]
    if len(finite) >= 2:
        lo, hi = min(finite, key=lambda nv: nv[1]), max(finite, key=lambda nv: nv[1])
        lines.append(
            f"At L the encodings span {_fmt(lo[1])} ({lo[0]}) to {_fmt(hi[1])} ({hi[0]}), {hi[1] / lo[1]:.2f}x; "
            "in Press et al. 2022, trained to convergence, they sit within 2 % at L."
        )
    return "\n\n".join(lines)


def write_report(results: dict[str, Any], figures: dict[str, str] | None = None) -> str:
    """The whole ``report.md``; ``figures`` maps "perplexity" and "curves" to the image files written."""
    figures = {"perplexity": "perplexity.png"} if figures is None else figures
    train_len, lengths = results["train_len"], results["eval_lengths"]
    names = results["encodings"]
    mult = lengths[-1] // train_len
    held = [n for n in results["perplexity"] if verdict(ratio_stat(results, n)[0]) == "holds up"]
    summary = [
        f"Best at the training length L={train_len}: {ranking(results, train_len, names)}.",
        f"Best at {mult}L={lengths[-1]}: {ranking(results, lengths[-1], list(results['perplexity']))}.",
        f"Holding up to {mult}L (mean within {round((HOLDS_UP - 1) * 100)} % of their L perplexity): "
        + (", ".join(f"**{n}**" for n in held) if held else "none")
        + ".",
    ]
    notes = []
    if "learned" in results["perplexity"]:
        notes.append(
            f"`learned` has a table of exactly L={train_len} positions (all that training reaches), so it has no "
            "embedding for longer inputs: n/a, as for the paper's learned baselines."
        )
    if results["perplexity"].keys() - set(names):
        notes.append(
            "`rope+<method>` rows are the trained `rope` model evaluated with inference-time context extension, "
            "factor = evaluation length / L (dynamic NTK: its fixed factor 2, it adapts to the length itself)."
        )
    n_seeds = seed_count(results)
    notes.append(
        "One seed, a tiny model and a short budget: differences of a few percent may not survive another seed "
        "(`--seeds 3`); the large ratios are the signal."
        if n_seeds == 1
        else f"Numbers are mean ± sample standard deviation over up to {n_seeds} seeds (column `seeds`); a "
        "ranking is claimed only where the gap exceeds the combined spread, sqrt(std_a² + std_b²)."
    )
    parts = [
        "# posenc compare: train short, test long",
        _setup(results),
        "## Perplexity (bytes) at evaluation length",
        table(results),
        " ".join(summary),
        "Verdicts: worst perplexity beyond L relative to L: holds up <= "
        f"{HOLDS_UP:.2f}x, degrades <= {BREAKS:.0f}x, breaks beyond; † still improving (see below).",
    ]
    if figures.get("perplexity"):
        parts.append(f"![perplexity against evaluation length]({figures['perplexity']})")
    parts += ["## Learning curves", curves_section(results, figures.get("curves"))]
    parts += [
        "## The seed document's claims",
        claims(results),
        "## Against Press et al. 2022 (Table 2)",
        paper_comparison(results),
        "## Notes",
        "\n".join(f"- {n}" for n in notes),
    ]
    return "\n\n".join(parts) + "\n"
