"""results.json aggregation over seeds (against ``statistics``), merging, and the report's spread-aware claims."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from posenc.experiments.report import ranking, table, write_report
from posenc.experiments.results import aggregate, improvement, mean_std, merge_runs, separated
from posenc.experiments.verdicts import spread_verdict, still_improving

META = {"train_len": 8, "eval_lengths": [8, 16, 32]}


def _record(ppl: dict[str, dict[str, float | None]], curve_l: list[float] | None = None) -> dict:
    curve = {"steps": [5, 9, 10], "8": curve_l} if curve_l else {}
    return {
        "perplexity": ppl,
        "final_train_loss": 1.0,
        "train_seconds": 2.0,
        "tokens_per_second": 100.0,
        "curve": curve,
    }


def _runs() -> dict:
    def row(at_l: float, growth: float) -> dict[str, float]:
        return {"8": at_l, "16": at_l * growth, "32": at_l * growth**2}

    return {
        "alibi": {str(s): _record({"alibi": row(5.0 + 0.1 * s, 1.0)}) for s in range(3)},
        "rope": {
            str(s): _record(
                {"rope": row(5.05 + 0.1 * s, 1.2), "rope+ntk": row(5.05 + 0.1 * s, 1.1)}, [9, 8, 6]
            )
            for s in range(3)
        },
        "learned": {"0": _record({"learned": {"8": 4.0, "16": None, "32": None}})},
    }


@given(st.lists(st.floats(0.5, 100.0), min_size=1, max_size=6))
def test_mean_std_match_statistics(values: list[float]) -> None:
    mean, std = mean_std([*values, None])  # None (n/a) is skipped
    assert mean is not None and math.isclose(mean, statistics.fmean(values), rel_tol=1e-12)
    if len(values) == 1:
        assert std is None
    else:
        assert std is not None and math.isclose(std, statistics.stdev(values), rel_tol=1e-9, abs_tol=1e-12)


def test_mean_std_edge_cases_and_separation() -> None:
    assert mean_std([None, None]) == (None, None) and mean_std([1.0, math.inf]) == (math.inf, None)
    assert separated((5.0, 0.1), (5.5, 0.1)) is True and separated((5.0, 0.3), (5.3, 0.3)) is False
    assert separated((5.0, None), (9.0, 0.1)) is None


def test_merge_keeps_everything_and_prefers_the_new_record() -> None:
    old = {"a": {"0": {"x": 1}, "1": {"x": 2}}, "b": {"0": {"x": 3}}}
    merged = merge_runs(old, {"a": {"1": {"x": 9}, "2": {"x": 4}}, "c": {"0": {"x": 5}}})
    assert merged == {
        "a": {"0": {"x": 1}, "1": {"x": 9}, "2": {"x": 4}},
        "b": {"0": {"x": 3}},
        "c": {"0": {"x": 5}},
    }
    assert old["a"]["1"] == {"x": 2}  # inputs untouched


def test_improvement_over_the_last_tenth() -> None:
    assert improvement({"steps": [50, 90, 100], "8": [9.0, 8.0, 6.0]}, "8") == 1 - 6 / 8
    assert improvement({"steps": [100], "8": [6.0]}, "8") is None and improvement({}, "8") is None


def test_aggregate_orders_rows_and_computes_per_seed_ratios() -> None:
    res = aggregate(_runs(), META)
    assert res["encodings"] == ["learned", "rope", "alibi"]  # posenc.available() order
    assert list(res["perplexity"]) == ["learned", "rope", "rope+ntk", "alibi"]
    assert math.isclose(res["perplexity"]["alibi"]["8"], 5.1) and math.isclose(
        res["perplexity_std"]["alibi"]["8"], 0.1
    )
    assert res["perplexity"]["learned"] == {"8": 4.0, "16": None, "32": None}
    assert res["perplexity_std"]["learned"]["8"] is None
    worst, spread = res["ratio"]["rope"]["worst_mean_std"]
    assert math.isclose(worst, 1.44) and spread < 1e-12  # ratios are per seed, so the offset cancels
    assert res["seeds_per_encoding"] == {"learned": [0], "rope": [0, 1, 2], "alibi": [0, 1, 2]}
    assert math.isclose(res["last_tenth_improvement"]["rope"], 0.25)


def test_report_claims_only_beyond_the_spread() -> None:
    res = aggregate(_runs(), META)
    at_l = ranking(res, 8, ["rope", "alibi"])
    assert at_l.startswith("**alibi** (5.10 ± 0.10), but not by more than the spread over rope (5.15 ± 0.10)")
    res["perplexity_std"]["rope"]["8"] = res["perplexity_std"]["alibi"]["8"] = 0.01
    assert "ahead of every other row by more than the spread" in ranking(res, 8, ["rope", "alibi"])
    assert "one seed, so no spread" in ranking(res, 8, ["learned", "alibi"])
    res["perplexity"]["learned"]["8"] = 6.0
    assert ranking(res, 8, ["rope", "alibi", "learned"]) == (
        "**alibi** (5.10 ± 0.01), ahead of every other row with seeds by more than the spread; one seed, "
        "no spread to compare with: learned (6.00)"
    )
    res["perplexity"]["learned"]["8"] = 4.0
    assert spread_verdict((1.08, 0.05)) == "holds up (within the spread of degrades)"
    assert spread_verdict((1.5, 0.05)) == "degrades" and spread_verdict((1.5, None)) == "degrades"
    assert set(still_improving(res)) == {"rope"}
    assert "| rope † | 3 | 5.15 ± 0.01 |" in table(res) and "| learned | 1 | 4.00 |" in table(res)
    report = write_report({**res, **_meta()}, figures={"curves": "curves.png"})
    assert "Still improving" in report and "**rope** (-25.0 %)" in report and "curves.png" in report


def _meta() -> dict:
    train = {"depth": 1, "dim": 16, "heads": 2, "steps": 3, "batch_size": 4, "train_len": 8, "lr": 0.1}
    return {
        "eval_tokens": 64,
        "config": {
            "train": train,
            "data": {"source": "here", "split": "s", "train_bytes": 1, "val_bytes": 1},
        },
        "versions": {"torch": "x", "device": "cpu", "world_size": 1, "threads": 1},
        "wall_seconds": 1.0,
    }


def test_diverged_seeds_are_left_out_and_named() -> None:
    """A seed whose loss went NaN (perplexity at L inf) measured nothing: every number of its row comes from the
    other seeds, the table and summary name it, and a row none of whose seeds trained reads "diverged"."""
    runs = _runs()
    runs["rope"]["2"] = _record({"rope": {"8": math.inf, "16": math.inf, "32": math.inf}, "rope+ntk": {}})
    runs["rope"]["2"]["final_train_loss"] = math.nan
    runs["alibi"] = {"0": {**_record({"alibi": {"8": math.inf, "16": math.inf, "32": math.inf}})}}
    res = aggregate(runs, META)
    kept = aggregate({**_runs(), "rope": {s: r for s, r in _runs()["rope"].items() if s != "2"}}, META)
    assert res["diverged"] == {"alibi": [0], "rope": [2]} and res["seeds"] == [0, 1, 2]
    assert res["seeds_per_encoding"]["rope"] == [0, 1] and res["ratio"]["rope"]["seeds"] == [0, 1]
    for row in ("rope", "rope+ntk"):
        assert res["perplexity"][row] == kept["perplexity"][row] and res["ratio"][row] == kept["ratio"][row]
    assert res["runs"]["rope"]["2"] is runs["rope"]["2"]  # the record itself is kept (resume, merge)
    report = write_report({**res, **_meta()}, figures={})
    lines = report.splitlines()
    assert any(x.startswith("| rope † | 2 (+1 diverged) | 5.10 ± 0.07 |") for x in lines)
    assert any(
        x.startswith("| alibi | 0 (+1 diverged) | n/a |") and x.endswith("| diverged |") for x in lines
    )
    assert (
        "Diverged (training loss or perplexity at L not finite" in report
        and "alibi (seed 0)" in report
        and "rope (seed 2)" in report
    )


def test_non_finite_numbers_are_written_as_what_they_are() -> None:
    from posenc.experiments.checkpoints import json_safe
    from posenc.experiments.results import num

    written = json_safe({"a": [math.nan, math.inf, -math.inf, 1.5]})
    assert written == {"a": ["nan", "inf", "-inf", 1.5]}
    back = [num(v) for v in written["a"]]
    assert math.isnan(back[0]) and back[1:] == [math.inf, -math.inf, 1.5]


def test_the_curves_figure_leaves_diverged_seeds_out() -> None:
    pytest.importorskip("matplotlib")
    from posenc.plots.compare import curves_figure

    runs = _runs()
    runs["rope"]["2"] = _record(
        {"rope": {"8": math.inf, "16": math.inf, "32": math.inf}}, [9.0, math.nan, math.nan]
    )
    figure = curves_figure({**aggregate(runs, META), **_meta()})
    assert figure is not None
    rope = [ln for ln in figure.axes[0].get_lines() if ln.get_label() == "rope"][0]
    assert list(rope.get_xdata()) == [5, 9, 10] and all(math.isfinite(y) for y in rope.get_ydata())
