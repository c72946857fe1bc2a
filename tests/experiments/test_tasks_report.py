"""``posenc tasks``: what the report, the summary and the figure say about the measured accuracies."""

from __future__ import annotations

from pathlib import Path

import torch

from posenc.experiments.tasks import TASKS, TasksConfig
from posenc.experiments.tasks.report import learned_note, write_report
from posenc.experiments.tasks.run import TaskContext


def test_report_states_how_many_examples_each_passkey_depth_had(tmp_path: Path) -> None:
    """4 examples over 5 depths are 1 per depth (5 in all); the report said "4 per length, split over the depths"."""
    cfg = TasksConfig(eval_examples=4)
    ctx = TaskContext(cfg, tmp_path, torch.device("cpu"))
    passkey = TASKS.get("passkey")
    drawn = {d: ctx.test_set(passkey, 16, d).shape[0] for d in ctx.groups(passkey)}
    versions = {"world_size": 1, "threads": 1, "torch": torch.__version__, "device": "cpu"}
    results = {"config": cfg.fingerprint(), "versions": versions, "seeds": [0], "train_len": 16, "tasks": []}
    results |= {
        "depths": list(cfg.depths),
        "wall_seconds": 1.0,
        "encodings": [],
        "accuracy": {},
        "eval_lengths": [16],
    }
    report = write_report(results)
    assert set(drawn.values()) == {1}
    assert "passkey: 1 at each of the depths 0, 0.25, 0.5, 0.75, 1" in report


def test_best_row_at_l_is_the_first_of_a_tie() -> None:
    """At L the rope+<method> rows are the rope model unscaled; a tie named the last name in sort order."""
    acc = {"none": {"16": 0.25}, "rope": {"16": 1.0}, "rope+linear": {"16": 1.0}, "rope+yarn": {"16": 1.0}}
    note = learned_note({"train_len": 16, "accuracy": {"copy": acc}}, "copy")
    assert note == "Learned at L: best **rope** (100 %)."


def test_accuracy_figure_legend_names_the_rows_of_every_task() -> None:
    """The legend came from the first panel only: a row that only a later task has (a rerun that added an encoding
    to one task) was drawn without a name."""
    from posenc.plots.tasks import accuracy_figure

    results = {
        "train_len": 16,
        "eval_lengths": [16, 32],
        "tasks": ["passkey", "copy"],
        "seeds": [0],
        "accuracy": {
            "passkey": {"none": {"16": 1.0, "32": 0.5}},
            "copy": {"none": {"16": 1.0, "32": 0.0}, "rope": {"16": 1.0, "32": 0.0}},
        },
    }
    legend = accuracy_figure(results).legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["none", "rope"]


def test_two_variants_of_one_encoding_are_drawn_apart() -> None:
    """``alibi:max_bias=4`` and ``alibi:max_bias=3`` got the same shade and marker (a hash of the options picked one
    of three shades; the figure's rows were not passed), unlike in compare's perplexity figure."""
    from posenc.plots.tasks import accuracy_figure

    rows = {n: {"16": 1.0, "32": 0.5} for n in ("alibi", "alibi:max_bias=4", "alibi:max_bias=3")}
    results = {
        "train_len": 16,
        "eval_lengths": [16, 32],
        "tasks": ["copy"],
        "seeds": [0],
        "accuracy": {"copy": rows},
    }
    lines = accuracy_figure(results).axes[0].get_lines()
    styles = {ln.get_label(): (ln.get_color(), ln.get_marker()) for ln in lines if ln.get_label() in rows}
    assert len(set(styles.values())) == 3, styles


def test_a_record_without_a_newer_row_is_summarised_not_a_crash() -> None:
    """Seed 0's record (from an earlier run) lacks rope+new, seed 1's has it: the summary took its rows from the
    first seed and then read rows of the others by them, a KeyError after every model had trained (results.json
    never written)."""
    from posenc.experiments.tasks.results import aggregate

    def cells(value: float) -> dict[str, dict[str, float]]:
        return {"16": {"all": value}, "32": {"all": value / 2}}

    old = {"cells": {"rope": cells(1.0)}, "final_train_loss": 0.1, "train_seconds": 1.0, "eval_seconds": 1.0}
    new = {**old, "cells": {"rope": cells(0.5), "rope+new": cells(0.8)}}
    runs = {"copy": {"rope": {"0": new, "1": old}}}  # the seed that lacks the row second: KeyError before
    results = aggregate(runs, {"eval_lengths": [16, 32]})
    assert results["accuracy"]["copy"]["rope"] == {"16": 0.75, "32": 0.375}
    assert results["accuracy"]["copy"]["rope+new"] == {"16": 0.8, "32": 0.4}  # the one seed evaluated with it
    assert list(results["accuracy_by_seed"]["copy"]["rope+new"]) == ["0"]
    runs = {"copy": {"rope": {"0": old, "1": new}}}  # the seed that lacks the row first: the row was lost
    assert aggregate(runs, {"eval_lengths": [16, 32]})["accuracy"]["copy"]["rope+new"] == {
        "16": 0.8,
        "32": 0.4,
    }


def test_a_record_s_final_train_loss_is_the_mean_of_the_last_10_steps() -> None:
    """results.py's docstring: ``final_train_loss`` is the mean of the last 10 steps (of all of them when fewer)."""
    from posenc.experiments.tasks.results import record
    from posenc.experiments.tasks.run import ModelRun

    def loss(losses: list[float]) -> object:
        run = ModelRun(losses=losses, train_seconds=1.0, eval_seconds=0.0, cells={}, resumed=False)
        return record(run)["final_train_loss"]

    assert loss([float(i) for i in range(20)]) == 14.5
    assert loss([1.0, 2.0, 6.0]) == 3.0
    assert loss([]) is None


def test_seeds_are_summarised_in_numeric_order() -> None:
    """Per-seed accuracies follow the seeds' numbers (as ``results["seeds"]``), not their strings: seed 10 after
    seed 2."""
    from posenc.experiments.tasks.results import aggregate

    def rec(value: float) -> dict[str, object]:
        cells = {"rope": {"16": {"all": value}}}
        return {"cells": cells, "final_train_loss": 0.1, "train_seconds": 1.0, "eval_seconds": 1.0}

    runs = {"copy": {"rope": {"10": rec(0.1), "2": rec(0.2), "1": rec(0.3)}}}
    results = aggregate(runs, {"eval_lengths": [16]})
    assert results["seeds"] == [1, 2, 10]
    assert list(results["accuracy_by_seed"]["copy"]["rope"]) == ["1", "2", "10"]
