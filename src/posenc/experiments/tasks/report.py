"""``report.md`` of ``posenc tasks``, written from the measured accuracies: a table per task with verdicts, whether
each task was learned at L at all, the seed document's claims judged on exact answers, and the papers' findings
beside this run's.

Verdicts judge each row against its own accuracy at ``L``: "holds" when every longer length keeps at least
:data:`KEEP` (90 %) of it, "to kL" when that holds up to ``kL`` only, "fails" when already ``2L`` falls below,
"not learned" when the accuracy at ``L`` is under :data:`LEARNED` (50 %): a failure past ``L`` then says nothing
about positions.
"""

from __future__ import annotations

from typing import Any

from ..pool import describe_workers
from ..specs import variants_note

#: Share of its own accuracy at L a row must keep at a longer length to "hold" there.
KEEP = 0.9
#: Accuracy at L below which a row counts as not having learned the task.
LEARNED = 0.5
#: The issue's bar: the best encoding should reach this at L, else the budget is too small.
TARGET = 0.95

#: The papers' findings, as (paper, finding, which rows of this run bear on it).
PAPERS: list[tuple[str, str, str]] = [
    (
        "Kazemnejad et al. 2023 (NeurIPS), decoder-only, copy/reverse/addition/SCAN/PCFG",
        "NoPE and T5's relative bias generalize best beyond the training length; ALiBi, RoPE and absolute "
        "(sinusoidal, learned) generalize worse.",
        "none,t5,alibi,rope,sinusoidal,learned",
    ),
    (
        "Ruoss et al. 2023 (ACL), encoder-only, algorithmic tasks (Chomsky hierarchy)",
        "Standard encodings (sinusoidal, relative, RoPE, ALiBi, learned) mostly fail on longer inputs; randomized "
        "positions (not in posenc) improve accuracy on longer inputs.",
        "sinusoidal,shaw,rope,alibi,learned",
    ),
    (
        "Mohtashami & Jaggi 2023 (NeurIPS), passkey retrieval",
        "A RoPE model cannot retrieve the passkey beyond its training context; with an extension of the context "
        "(landmark attention there; interpolation in Chen et al. 2023) retrieval works far beyond it.",
        "rope,rope+linear,rope+ntk,rope+dynamic,rope+yarn",
    ),
]

Row = dict[str, Any]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}"


def reach(row: Row, lengths: list[int]) -> int | None:
    """Longest length up to which every length keeps :data:`KEEP` of the accuracy at ``L`` (None when nothing
    beyond ``L`` was measurable or the task was not learned)."""
    base = row.get(str(lengths[0]))
    if base is None or base < LEARNED:
        return None
    held = lengths[0]
    for lv in lengths[1:]:
        value = row.get(str(lv))
        if value is None or value < KEEP * base:
            break
        held = lv
    return held


def verdict(row: Row, lengths: list[int]) -> str:
    """See the module docstring."""
    base = row.get(str(lengths[0]))
    if base is None or base < LEARNED:
        return "not learned"
    if all(row.get(str(lv)) is None for lv in lengths[1:]):
        return "n/a beyond L"
    held = reach(row, lengths) or lengths[0]
    if held == lengths[-1]:
        return "holds"
    if held == lengths[0]:
        return "fails"
    return f"to {held // lengths[0]}L"


def _cell(results: dict[str, Any], task: str, row: str, lv: int) -> str:
    mean = results["accuracy"][task][row].get(str(lv))
    per_seed = [s.get(str(lv)) for s in results["accuracy_by_seed"][task][row].values()]
    if mean is None or len(per_seed) < 2 or any(v is None for v in per_seed):
        return _pct(mean)
    return f"{_pct(mean)} ({_pct(min(per_seed))}-{_pct(max(per_seed))})"


def task_table(results: dict[str, Any], task: str) -> str:
    """Accuracy (%) per row and length, mean of the seeds (with the seeds' range when there are several)."""
    train_len, lengths = results["train_len"], results["eval_lengths"]
    heads = [f"L = {lv}" if lv == train_len else f"{lv // train_len}L = {lv}" for lv in lengths]
    lines = ["| encoding | " + " | ".join(heads) + " | verdict |", "|---" * (len(lengths) + 2) + "|"]
    for row, values in results["accuracy"][task].items():
        cells = [_cell(results, task, row, lv) for lv in lengths]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {verdict(values, lengths)} |")
    return "\n".join(lines)


def learned_note(results: dict[str, Any], task: str) -> str:
    """Whether the best row reached :data:`TARGET` at L (else the budget was too small). Rows that tie are named by
    the first of them in table order: ``rope+<method>`` rows at L are the ``rope`` model unchanged."""
    train_len = str(results["train_len"])
    scored = [
        (v.get(train_len), r) for r, v in results["accuracy"][task].items() if v.get(train_len) is not None
    ]
    if not scored:
        return "Nothing was measured at L."
    best, row = max(
        scored, key=lambda vr: vr[0]
    )  # a tie goes to the first row of the table (rope, not rope+yarn)
    if best >= TARGET:
        return f"Learned at L: best **{row}** ({_pct(best)} %)."
    return (
        f"**Not learned at L**: the best, {row}, reached {_pct(best)} % (< {_pct(TARGET)} %). The budget is too small "
        "for this task, so accuracy beyond L says little about positions; raise `--steps`."
    )


def mean_beyond(results: dict[str, Any], row: str, tasks: list[str] | None = None) -> float | None:
    """Mean accuracy over ``tasks`` (default all) and every length beyond L for ``row`` (None if none
    measurable)."""
    values = [
        v
        for task in results["tasks"]
        if tasks is None or task in tasks
        for k, v in results["accuracy"][task].get(row, {}).items()
        if int(k) > results["train_len"] and v is not None
    ]
    return sum(values) / len(values) if values else None


def _verdicts(results: dict[str, Any], row: str) -> list[str]:
    lengths = results["eval_lengths"]
    return [
        f"{task}: {verdict(results['accuracy'][task][row], lengths)}"
        for task in results["tasks"]
        if row in results["accuracy"][task]
    ]


def _claim(results: dict[str, Any], row: str, claim: str) -> str:
    per_task = _verdicts(results, row)
    if not per_task:
        return f"- *{claim}*: not tested ({row} was not in this run)."
    learned = [v for v in per_task if "not learned" not in v]
    holds = [v for v in learned if v.endswith("holds")]
    if not learned:
        answer = "**not testable here** (no task learned)"
    elif len(holds) == len(learned):
        answer = "**supported**"
    elif holds or any(": to " in v for v in learned):
        answer = "**partly supported**"
    else:
        answer = "**not supported**"
    return f"- *{claim}*: {answer}: {row} — {'; '.join(per_task)}."


def claims(results: dict[str, Any]) -> str:
    """The seed document's claims, judged again on exact answers (``posenc compare`` judges them on perplexity)."""
    out = [
        _claim(results, "sinusoidal", '"sinusoidal encodings handle any length"'),
        _claim(results, "shaw", '"clipping makes relative encodings generalise to longer inputs"'),
        _claim(results, "rope", '"RoPE extrapolates well"'),
        '- *"RoPE\'s attention decays with distance"*: a property of the formula, not of task accuracy; '
        "see `posenc plot`. Not tested here.",
    ]
    return "\n".join(out)


def paper_comparison(results: dict[str, Any]) -> str:
    """Each paper's finding beside this run's verdicts and mean accuracy beyond L for the rows it concerns."""
    lines = ["| paper | finding | here (verdicts; mean accuracy beyond L) |", "|---|---|---|"]
    for paper, finding, rows in PAPERS:
        here = []
        for row in rows.split(","):
            if not any(row in results["accuracy"][t] for t in results["tasks"]):
                continue
            tasks = ["passkey"] if paper.startswith("Mohtashami") else list(results["tasks"])
            verdicts = [
                f"{t} {verdict(results['accuracy'][t][row], results['eval_lengths'])}"
                for t in tasks
                if t in results["accuracy"] and row in results["accuracy"][t]
            ]
            mean = mean_beyond(results, row, tasks)
            shown = "n/a" if mean is None else f"{_pct(mean)} %"
            here.append(f"**{row}**: {', '.join(verdicts)}; {shown}")
        lines.append(f"| {paper} | {finding} | {'<br>'.join(here) or 'none of its rows ran'} |")
    ranked = sorted(
        ((mean_beyond(results, r), r) for r in results["encodings"] if mean_beyond(results, r) is not None),
        reverse=True,
    )
    order = " > ".join(f"{r} ({_pct(v)} %)" for v, r in ranked)
    return "\n".join(lines) + f"\n\nEncodings by mean accuracy beyond L over all tasks: {order or 'none'}."


def _setup(results: dict[str, Any]) -> str:
    cfg, v = results["config"], results["versions"]
    t = cfg["train"]
    seeds = ", ".join(str(s) for s in results["seeds"])
    per_depth = max(1, cfg["eval_examples"] // len(results["depths"]))  # as TaskContext.test_set draws them
    workers = describe_workers(
        results.get("jobs", 1), results.get("threads_per_model", 1), v["world_size"], v["threads"]
    )
    return (
        f"Each model: decoder-only `TransformerLM`, {t['depth']} layers, dim {t['dim']}, {t['heads']} heads, bytes "
        f"as tokens; {t['steps']} AdamW steps of {t['batch_size']} generated examples of a random length up to "
        f"L = {results['train_len']} (peak lr {t['lr']}, cosine), loss on the answer bytes only; seeds {seeds}. "
        f"Evaluation: {cfg['eval_examples']} held-out examples per length (passkey: {per_depth} at each of the "
        f"depths {', '.join(f'{d:g}' for d in results['depths'])}), never seen in training; exact match of the whole "
        f"answer under greedy decoding. torch {v['torch']}, {v['device']}, {workers}; wall time "
        f"{results['wall_seconds']:.0f} s."
    )


def write_report(results: dict[str, Any], figures: list[str] | None = None) -> str:
    """The whole ``report.md``."""
    figures = figures or []
    parts = ["# posenc tasks: length generalization with exact answers", _setup(results)]
    for task in results["tasks"]:
        parts += [
            f"## {task}: exact-match accuracy (%)",
            task_table(results, task),
            learned_note(results, task),
        ]
    parts.append(
        f"Verdicts: *holds*: keeps {KEEP:.0%} of its accuracy at L at every length; *to kL*: up to kL only; "
        f"*fails*: already below at 2L; *not learned*: under {LEARNED:.0%} at L."
    )
    if "accuracy.png" in figures:
        parts.append("![accuracy against evaluation length](accuracy.png)")
    heatmaps = [f for f in figures if f.startswith("passkey_")]
    if heatmaps:
        parts.append(
            "Passkey accuracy by length and depth: " + ", ".join(f"[{f}]({f})" for f in heatmaps) + "."
        )
    parts += [
        "## The seed document's claims, judged on exact answers",
        claims(results),
        "## The papers' findings beside this run",
        paper_comparison(results),
        "## Notes",
        "- `learned` has a table of exactly L positions, so it cannot take longer inputs: n/a.\n"
        "- `rope+<method>` rows are the trained `rope` model (or RoPE variant) evaluated with inference-time "
        "context extension, factor = evaluation length / L, as in `posenc compare`; dynamic NTK's frequencies are "
        "those of the whole example (one forward pass), not re-derived for each answer byte from a shorter prefix.\n"
        + "".join(f"- {n}\n" for n in [variants_note(results.get("encodings", []))] if n)
        + "- A tiny model and a short budget: treat single-digit differences as noise; run more `--seeds`.",
    ]
    return "\n\n".join(parts) + "\n"
