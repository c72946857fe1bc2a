"""``report.md`` of a comparison, written from the measured numbers: the table, which encodings hold up past the
training length, which of the seed document's claims the data supports, and the paper's numbers beside ours.

Verdicts compare each row's worst perplexity beyond ``L`` with its own perplexity at ``L``:
"holds up" within :data:`HOLDS_UP` (10 %), "degrades" up to :data:`BREAKS` (2x), "breaks" beyond.
"""

from __future__ import annotations

import math
from typing import Any

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
#: The issue's x-transformers measurement (4 layers, dim 128, 400 steps, L = 128, stdlib bytes): rotary at L, 8L.
XTRANSFORMERS_ROTARY = (6.25, 10.55)

Row = dict[str, Any]


def _num(value: Any) -> float | None:
    """A perplexity from results (float, None for n/a, or "inf" as written to JSON)."""
    if value is None:
        return None
    return math.inf if value == "inf" else float(value)


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.2f}" if value < 1000 else f"{value:.3g}"


def worst_ratio(row: dict[str, Any], train_len: int) -> float | None:
    """Largest ``ppl(Lv) / ppl(L)`` over measured ``Lv > L``; None when no longer length was measurable."""
    base = _num(row.get(str(train_len)))
    longer = [_num(v) for k, v in row.items() if int(k) > train_len]
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
    base, last = _num(row.get(str(train_len))), _num(row.get(str(lengths[-1])))
    if base is None or last is None or not math.isfinite(base):
        return None
    return last / base


def table(results: dict[str, Any]) -> str:
    """The markdown table: perplexity per row per length, ratio at the longest length, verdict."""
    train_len, lengths = results["train_len"], results["eval_lengths"]
    heads = [f"{lv // train_len}L = {lv}" if lv != train_len else f"L = {lv}" for lv in lengths]
    lines = [
        "| encoding | " + " | ".join(heads) + f" | {lengths[-1] // train_len}L / L | verdict |",
        "|---" * (len(lengths) + 3) + "|",
    ]
    for name, row in results["perplexity"].items():
        cells = [_fmt(_num(row.get(str(lv)))) for lv in lengths]
        ratio = _longest_ratio(row, train_len, lengths)
        ratio_s = "n/a" if ratio is None else ("inf" if not math.isfinite(ratio) else f"{ratio:.2f}x")
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {ratio_s} | {verdict(worst_ratio(row, train_len))} |"
        )
    return "\n".join(lines)


def _best(results: dict[str, Any], length: int, rows: list[str]) -> tuple[str, float] | None:
    scored = [(n, _num(results["perplexity"][n].get(str(length)))) for n in rows]
    finite = [(n, v) for n, v in scored if v is not None and math.isfinite(v)]
    return min(finite, key=lambda nv: nv[1]) if finite else None


def _claim(results: dict[str, Any], name: str, claim: str, extra: str = "") -> str:
    train_len, lengths = results["train_len"], results["eval_lengths"]
    row = results["perplexity"].get(name)
    if row is None:
        return f"- *{claim}*: not tested ({name} was not in this run)."
    ratio = worst_ratio(row, train_len)
    v = verdict(ratio)
    base, last = _num(row.get(str(train_len))), _num(row.get(str(lengths[-1])))
    change = f"{_fmt(base)} at L -> {_fmt(last)} at {lengths[-1] // train_len}L"
    if v == "holds up":
        answer = "**supported**"
    elif v == "degrades":
        answer = "**not supported** (it degrades, but does not break)"
    elif v == "breaks":
        answer = "**not supported**"
    else:
        answer = "**not testable here**"
    return f"- *{claim}*: {answer}: {name} went {change} (worst {_ratio_text(ratio)} of its L perplexity).{extra}"


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    return "inf" if not math.isfinite(ratio) else f"{ratio:.2f}x"


def _also(results: dict[str, Any], name: str, what: str) -> str:
    """A sentence on a related row: its verdict and its L -> longest change, or "" when it was not run."""
    row = results["perplexity"].get(name)
    if row is None:
        return ""
    train_len, last = results["train_len"], results["eval_lengths"][-1]
    ratio = worst_ratio(row, train_len)
    return (
        f" {what}, {verdict(ratio)} ({_fmt(_num(row.get(str(train_len))))} -> {_fmt(_num(row.get(str(last))))}, "
        f"worst {_ratio_text(ratio)})."
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
    best_ext = _best(results, lengths[-1], ext) if ext else None
    ext_note = (
        f" With inference-time extension the best at {lengths[-1] // train_len}L was {best_ext[0]} "
        f"({_fmt(best_ext[1])}), without retraining."
        if best_ext
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


def paper_comparison(results: dict[str, Any]) -> str:
    """Our ratios beside Press et al. 2022 Table 2, and whether the orderings agree."""
    train_len, lengths = results["train_len"], results["eval_lengths"]
    mult = lengths[-1] // train_len
    lines = [
        f"| encoding | paper L=512 | paper 16.6L | paper ratio | here L={train_len} | here {mult}L | here ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    ours: dict[str, float] = {}
    for key, (label, p_l, p_long) in PAPER.items():
        row = results["perplexity"].get(key)
        here_l = here_long = ratio = None
        if row is not None:
            here_l, here_long = _num(row.get(str(train_len))), _num(row.get(str(lengths[-1])))
            ratio = _longest_ratio(row, train_len, lengths)
        if ratio is not None:
            ours[key] = ratio
        lines.append(
            f"| {label} ({key}) | {p_l:.2f} | {p_long:.2f} | {p_long / p_l:.2f}x | {_fmt(here_l)} | "
            f"{_fmt(here_long)} | {_ratio_text(ratio)} |"
        )
    paper_order = sorted(PAPER, key=lambda k: PAPER[k][2] / PAPER[k][1])
    shared = [k for k in paper_order if k in ours]
    here_order = sorted(shared, key=lambda k: ours[k])
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
    xl, x8 = XTRANSFORMERS_ROTARY
    rope = results["perplexity"].get("rope")
    x_line = f"For reference, x-transformers' rotary model (4 layers, dim 128, 400 steps, L=128, stdlib bytes) went {xl} -> {x8} at 8L ({x8 / xl:.2f}x)"
    if rope is not None and str(8 * train_len) in rope:
        at_l, at_8l = _num(rope[str(train_len)]), _num(rope[str(8 * train_len)])
        ratio8 = None if at_l is None or at_8l is None else at_8l / at_l
        x_line += f"; posenc's rope here went {_fmt(at_l)} -> {_fmt(at_8l)} at 8L ({_ratio_text(ratio8)})"
    return "\n".join(lines) + "\n\n" + verdict_line + "\n\n" + x_line + "."


def _setup(results: dict[str, Any]) -> str:
    cfg = results["config"]
    t, d = cfg["train"], cfg["data"]
    v = results["versions"]
    scaled = " (embeddings scaled by sqrt(dim), as in fairseq)" if t.get("scale_embeddings") else ""
    return (
        f"Each model: decoder-only `TransformerLM`, {t['depth']} layers, dim {t['dim']}, {t['heads']} heads, "
        f"bytes as tokens{scaled}; {t['steps']} AdamW steps of {t['batch_size']} x {t['train_len']} bytes "
        f"(peak lr {t['lr']}, cosine), seed {t['seed']}. Data: {d['source']}, split {d['split']} "
        f"({d['train_bytes']:,} training / {d['val_bytes']:,} validation bytes). Evaluation: the same "
        f"{results['eval_tokens']:,} held-out bytes at every length, cut into non-overlapping windows "
        f"(Press et al. 2022); perplexity is per byte. torch {v['torch']}, {v['device']}, "
        f"{v['world_size']} process(es), {v['threads']} thread(s); wall time {results['wall_seconds']:.0f} s."
    )


def write_report(results: dict[str, Any], figure: str | None = "perplexity.png") -> str:
    """The whole ``report.md``."""
    train_len, lengths = results["train_len"], results["eval_lengths"]
    names = results["encodings"]
    mult = lengths[-1] // train_len
    held = [
        n for n, row in results["perplexity"].items() if verdict(worst_ratio(row, train_len)) == "holds up"
    ]
    best_l, best_long = (
        _best(results, train_len, names),
        _best(results, lengths[-1], list(results["perplexity"])),
    )
    summary = []
    if best_l:
        summary.append(f"Best at the training length L={train_len}: **{best_l[0]}** ({_fmt(best_l[1])}).")
    if best_long:
        summary.append(f"Best at {mult}L={lengths[-1]}: **{best_long[0]}** ({_fmt(best_long[1])}).")
    summary.append(
        f"Holding up to {mult}L (within {round((HOLDS_UP - 1) * 100)} % of their L perplexity): "
        + (", ".join(f"**{n}**" for n in held) if held else "none")
        + "."
    )
    learned = results["perplexity"].get("learned")
    notes = []
    if learned is not None:
        notes.append(
            f"`learned` has a table of exactly L={train_len} positions (all that training reaches), so it has no "
            "embedding for longer inputs: n/a, as for the paper's learned baselines."
        )
    if results["perplexity"].keys() - set(names):
        notes.append(
            "`rope+<method>` rows are the trained `rope` model evaluated with inference-time context extension, "
            "factor = evaluation length / L (dynamic NTK: its fixed factor 2, it adapts to the length itself)."
        )
    notes.append(
        "One seed, a tiny model and a short budget: differences of a few percent may not survive another "
        "`--seed`; the large ratios are the signal."
    )
    parts = [
        "# posenc compare: train short, test long",
        _setup(results),
        "## Perplexity (bytes) at evaluation length",
        table(results),
        " ".join(summary),
        "Verdicts: worst perplexity beyond L relative to L: holds up <= "
        f"{HOLDS_UP:.2f}x, degrades <= {BREAKS:.0f}x, breaks beyond.",
    ]
    if figure:
        parts.append(f"![perplexity against evaluation length]({figure})")
    parts += [
        "## The seed document's claims",
        claims(results),
        "## Against Press et al. 2022 (Table 2)",
        paper_comparison(results),
        "## Notes",
        "\n".join(f"- {n}" for n in notes),
    ]
    return "\n\n".join(parts) + "\n"
