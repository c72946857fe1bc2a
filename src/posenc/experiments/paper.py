"""The report's comparison with Press et al. 2022 (Table 2): our growth ratios beside theirs, whether the orderings
agree, which of our gaps exceed the spread over seeds, and in how many seeds the paper's order holds."""

from __future__ import annotations

from typing import Any

from .results import separated
from .verdicts import Stat, pm, ratio_stat, ratio_text, stat

#: Press et al. 2022, Table 2 (WikiText-103, L = 512): perplexity at L and at 8512 tokens (16.6 L).
PAPER: dict[str, tuple[str, float, float]] = {
    "sinusoidal": ("Sinusoidal", 20.05, 305.65),
    "rope": ("Rotary", 20.07, 54.98),
    "t5": ("T5 bias", 19.65, 43.08),
    "alibi": ("ALiBi", 19.73, 18.34),
}
#: The issue's x-transformers measurement (4 layers, dim 128, 400 steps, L = 128, stdlib bytes): rotary at L, 8L.
XTRANSFORMERS_ROTARY = (6.25, 10.55)


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
            f"| {label} ({key}) | {p_l:.2f} | {p_long:.2f} | {p_long / p_l:.2f}x | {pm(here_l)} | "
            f"{pm(here_long)} | {pm(ratio, 'x')} |"
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
    x_line = (
        f"For reference, x-transformers' rotary model (4 layers, dim 128, 400 steps, L=128, stdlib bytes, scored on "
        f"the first 8,192 held-out bytes) went {xl} -> {x8} at 8L ({x8 / xl:.2f}x)"
    )
    if "rope" in results["perplexity"] and 8 * train_len in lengths:
        at_l, at_8l = stat(results, "rope", train_len), stat(results, "rope", 8 * train_len)
        ratio8 = None if at_l[0] is None or at_8l[0] is None else at_8l[0] / at_l[0]
        steps = results.get("settings", {}).get("steps")
        budget = f" ({steps} steps)" if steps is not None else ""
        x_line += f"; posenc's rope here{budget} went {pm(at_l)} -> {pm(at_8l)} at 8L ({ratio_text(ratio8)})"
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
