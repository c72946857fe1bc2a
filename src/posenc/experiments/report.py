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

from .alibi_note import alibi_note
from .paper import paper_comparison
from .pool import describe_workers
from .results import separated
from .specs import variants_note
from .verdicts import (
    BREAKS,
    HOLDS_UP,
    STILL_IMPROVING,
    fmt,
    pm,
    ratio_stat,
    seed_count,
    spread_verdict,
    stat,
    still_improving,
    verdict,
)

Row = dict[str, Any]


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
        cells = [pm(stat(results, name, lv)) for lv in lengths]
        base = name.split("+", 1)[0]
        mark = " †" if name in improving else ""
        n = len(seeds.get(base, [0]))
        bad = diverged_seeds(results, name)
        lines.append(
            f"| {name}{mark} | {n}{f' (+{len(bad)} diverged)' if bad else ''} | "
            + " | ".join(cells)
            + f" | {pm(ratio_stat(results, name, 'longest'), 'x')} | {row_verdict(results, name)} |"
        )
    return "\n".join(lines)


def row_verdict(results: dict[str, Any], name: str) -> str:
    """The verdict of a row, with "to kL" when its last length measured is short of the longest (a learned table
    of more than L rows, ``learned:max_len=...``): the verdict covers only the lengths it has."""
    if all_diverged(results, name):
        return "diverged"
    shown = spread_verdict(ratio_stat(results, name))
    reach = measured_reach(results, name)
    train_len, longest = results["train_len"], results["eval_lengths"][-1]
    if shown == "n/a" or reach is None or reach >= longest:
        return shown
    return f"{shown} to {reach // train_len}L"


def diverged_seeds(results: dict[str, Any], name: str) -> list[int]:
    """Seeds of row ``name``'s encoding whose training diverged (:func:`posenc.experiments.results.diverged`):
    left out of every number of the row."""
    return list(results.get("diverged", {}).get(name.split("+", 1)[0], []))


def all_diverged(results: dict[str, Any], name: str) -> bool:
    """Whether every seed of row ``name``'s encoding diverged: the row measured nothing."""
    kept = results.get("seeds_per_encoding", {}).get(name.split("+", 1)[0])
    return bool(diverged_seeds(results, name)) and not kept


def _diverged_text(results: dict[str, Any]) -> str:
    """One sentence naming the diverged seeds, or ""."""
    bad = results.get("diverged", {})
    if not bad:
        return ""
    named = "; ".join(
        f"{n} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))})" for n, s in bad.items()
    )
    return (
        f"Diverged (training loss or perplexity at L not finite, so nothing about extrapolation was measured): "
        f"{named}. Those seeds are left out of every number; a row none of whose seeds trained reads "
        '"diverged" (try a lower `--lr`).'
    )


def measured_reach(results: dict[str, Any], name: str) -> int | None:
    """The longest evaluation length at which row ``name`` has a perplexity, or None."""
    have = [lv for lv in results["eval_lengths"] if stat(results, name, lv)[0] is not None]
    return max(have) if have else None


def ranking(results: dict[str, Any], length: int, rows: list[str]) -> str:
    """Which row is best at ``length``, and whether it beats the others by more than the spread."""
    scored = [(r, stat(results, r, length)) for r in rows]
    finite = [(r, s) for r, s in scored if s[0] is not None and math.isfinite(s[0])]
    if not finite:
        return "none measured"
    finite.sort(key=lambda rs: rs[1][0] or 0.0)
    (best, best_s), rest = finite[0], finite[1:]
    head = f"**{best}** ({pm(best_s)})"
    if not rest:
        return head
    if best_s[1] is None:
        return f"{head}; one seed, so no spread to tell it from {rest[0][0]} ({pm(rest[0][1])})"
    tied = [f"{r} ({pm(s)})" for r, s in rest if separated(best_s, s) is False]
    unknown = [f"{r} ({pm(s)})" for r, s in rest if separated(best_s, s) is None]
    text = (
        f"{head}, but not by more than the spread over {', '.join(tied)}"
        if tied
        else f"{head}, ahead of every other row with seeds by more than the spread"
        if unknown
        else f"{head}, ahead of every other row by more than the spread"
    )
    return text + (f"; one seed, no spread to compare with: {', '.join(unknown)}" if unknown else "")


def _claim(results: dict[str, Any], name: str, claim: str, extra: str = "") -> str:
    train_len, lengths = results["train_len"], results["eval_lengths"]
    if name not in results["perplexity"]:
        return f"- *{claim}*: not tested ({name} was not in this run)."
    if all_diverged(results, name):
        return (
            f"- *{claim}*: **not testable here**: {name} diverged in every seed (its loss went non-finite)."
        )
    ratio = ratio_stat(results, name)
    v = verdict(ratio[0])
    change = (
        f"{pm(stat(results, name, train_len))} at L -> {pm(stat(results, name, lengths[-1]))} at "
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
    return f"- *{claim}*: {answer}: {name} went {change} (worst {pm(ratio, 'x')} of its L perplexity).{extra}"


def _also(results: dict[str, Any], name: str, what: str) -> str:
    """A sentence on a related row: its verdict and its L -> longest change, or "" when it was not run."""
    if name not in results["perplexity"]:
        return ""
    train_len, last = results["train_len"], results["eval_lengths"][-1]
    ratio = ratio_stat(results, name)
    return (
        f" {what}, {spread_verdict(ratio)} ({pm(stat(results, name, train_len))} -> "
        f"{pm(stat(results, name, last))}, worst {pm(ratio, 'x')})."
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


def _precision(name: str) -> str:
    return "mixed precision (bfloat16 products, float32 weights)" if name == "bf16" else "float32"


def _setup(results: dict[str, Any]) -> str:
    cfg = results["config"]
    t, d = cfg["train"], cfg["data"]
    v = results["versions"]
    knobs = results.get("settings", {})
    seeds = results.get("seeds", [t.get("seed", 0)])
    scaled = " (embeddings scaled by sqrt(dim), as in fairseq)" if t.get("scale_embeddings") else ""
    rate = [r for r in results.get("tokens_per_second", {}).values() if r]
    speed = (
        f" Training ran at {statistics_median(rate):,.0f} tokens/s per model (median over encodings; "
        f"{'compiled' if t.get('compile') else 'eager'} step, {_precision(t.get('precision', 'fp32'))}, fused "
        "AdamW, losses read once per run)."
        if rate
        else ""
    )
    workers = describe_workers(knobs.get("jobs", 1), knobs.get("threads", 1), v["world_size"], v["threads"])
    return (
        f"Preset `{knobs.get('preset', 'demo')}`. Each model: decoder-only `TransformerLM`, {t['depth']} layers, "
        f"dim {t['dim']}, {t['heads']} heads, bytes as tokens{scaled}; {t['steps']} AdamW steps of "
        f"{t['batch_size']} x {t['train_len']} bytes (peak lr {t['lr']}, warmup "
        f"{t.get('warmup_fraction', 0.1):g} of the steps, cosine), seeds {', '.join(map(str, seeds))}. "
        f"Data: {d['source']}, split {d['split']} "
        f"({d['train_bytes']:,} training / {d['val_bytes']:,} validation bytes). Evaluation: the same "
        f"{results['eval_tokens']:,} held-out bytes at every length ({_layout(results)}), cut into "
        f"non-overlapping windows (Press et al. 2022); perplexity is per byte. torch {v['torch']}, {v['device']}"
        f"{' (' + v['gpu'] + ')' if 'gpu' in v else ''}, {workers}; "
        f"wall time of the last invocation {results['wall_seconds']:.0f} s.{speed}{_mixed_threads(results)}"
    )


def _mixed_threads(results: dict[str, Any]) -> str:
    """A note where the folder's models trained with different intra-op threads (runs that extended it with
    other ``--jobs``/``--threads``): CPU training then differs in the last digits from one setting's."""
    seen: set[int] = {
        rec["threads"]
        for by_seed in results.get("runs", {}).values()
        if isinstance(by_seed, dict)
        for rec in by_seed.values()
        if isinstance(rec, dict) and isinstance(rec.get("threads"), int)
    }
    if len(seen) < 2:
        return ""
    counts = ", ".join(map(str, sorted(seen)))
    return (
        f" The models were trained with {counts} threads each (runs with other `--jobs` or `--threads` added to "
        "this folder): a model's last digits depend on its threads (`threads` in each record of results.json); "
        "pass the same `--threads` to extend a run bitwise."
    )


def _layout(results: dict[str, Any]) -> str:
    """Where the evaluation's scored bytes come from (:func:`_blocks_text`)."""
    longest = (results.get("eval_lengths") or [1])[-1]
    return _blocks_text(results, results["eval_tokens"] // max(1, longest), longest)


def _blocks_text(results: dict[str, Any], blocks: int, width: int) -> str:
    """``blocks`` of ``width`` bytes: spread evenly over the validation text (``config.eval_layout``), except a
    lone block, which ``spread_blocks`` puts at byte 0, and runs from before that layout (the first bytes)."""
    if _spread(results) and blocks > 1:
        return f"{blocks} blocks of {width:,} spread evenly over the validation text"
    if blocks == 1:
        return f"one block of {width:,}: the first bytes of the validation text"
    return "the first bytes of the validation text"


def _spread(results: dict[str, Any]) -> bool:
    config = results.get("config", {})
    return isinstance(config, dict) and config.get("eval_layout") == "spread"


def _curve_text(results: dict[str, Any], points: int) -> str:
    """What the learning curve scored, as its probe did (:func:`~posenc.experiments.pairs.curve_plan`): lengths,
    bytes and their layout."""
    from .pairs import curve_plan

    train_len = results["train_len"]
    longest = (results.get("eval_lengths") or [train_len])[-1]
    val_bytes = results.get("config", {}).get("data", {}).get("val_bytes", 0)
    lengths, n = curve_plan(train_len, longest, val_bytes, results.get("settings", {}).get("curve_bytes", 0))
    layout = _blocks_text(results, n // lengths[-1], lengths[-1])
    at = " and ".join(("L", "4L")[: len(lengths)])
    return f"at {at}, measured {points} times per run on {n:,} held-out bytes ({layout})"


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
        lines.append(f"Validation perplexity {_curve_text(results, knobs['curve_points'])}.")
    if improving:
        names = ", ".join(f"**{n}** (-{d * 100:.1f} %)" for n, d in improving.items())
        lines.append(
            f"Still improving (†: validation perplexity at L fell by more than {pct} % over the last tenth of "
            f"training, mean over seeds): {names}. These models are undertrained: their perplexity at L is not "
            "where it would settle, so their ratio to L mixes extrapolation with learning still under way, and "
            "their verdict may change with more `--steps` (or `--preset cpu-long`)."
        )
    elif any(v is not None for v in results.get("last_tenth_improvement", {}).values()):
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
            f"At L the encodings span {fmt(lo[1])} ({lo[0]}) to {fmt(hi[1])} ({hi[0]}), {hi[1] / lo[1]:.2f}x; "
            "in Press et al. 2022, trained to convergence, they sit within 2 % at L."
        )
    return "\n\n".join(lines)


def write_report(results: dict[str, Any], figures: dict[str, str] | None = None) -> str:
    """The whole ``report.md``; ``figures`` maps "perplexity" and "curves" to the image files written."""
    figures = {"perplexity": "perplexity.png"} if figures is None else figures
    train_len, lengths = results["train_len"], results["eval_lengths"]
    names = results["encodings"]
    mult = lengths[-1] // train_len
    held = [
        n
        for n in results["perplexity"]
        if verdict(ratio_stat(results, n)[0]) == "holds up" and measured_reach(results, n) == lengths[-1]
    ]
    summary = [
        f"Best at the training length L={train_len}: {ranking(results, train_len, names)}.",
        f"Best at {mult}L={lengths[-1]}: {ranking(results, lengths[-1], list(results['perplexity']))}.",
        f"Holding up to {mult}L (mean within {round((HOLDS_UP - 1) * 100)} % of their L perplexity): "
        + (", ".join(f"**{n}**" for n in held) if held else "none")
        + ".",
    ]
    if results.get("diverged"):
        summary.append(_diverged_text(results))
    notes = []
    if "learned" in results["perplexity"]:
        notes.append(
            f"`learned` has a table of exactly L={train_len} positions (all that training reaches), so it has no "
            "embedding for longer inputs: n/a, as for the paper's learned baselines."
        )
    if results["perplexity"].keys() - set(names):
        notes.append(
            "`rope+<method>` rows are the trained `rope` model (or RoPE variant) evaluated with inference-time "
            "context extension, "
            "factor = evaluation length / L (dynamic NTK: its fixed factor 2, it adapts to the length itself)."
        )
    variants = variants_note(names)
    if variants:
        notes.append(variants)
    heads = results["config"]["train"].get("heads")
    if "alibi" in results["perplexity"] and isinstance(heads, int) and heads < 8:
        notes.append(alibi_note(results, heads))
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
