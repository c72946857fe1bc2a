"""``posenc compare`` end to end (tiny), resuming, refusing a changed configuration, the report's reasoning."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import posenc
from posenc.cli import main
from posenc.experiments.compare import (
    CompareConfig,
    check_encodings,
    config_differences,
    default_encodings,
    eval_token_count,
    run_compare,
)
from posenc.experiments.report import claims, paper_comparison, write_report
from posenc.experiments.verdicts import verdict, worst_ratio

FAST = CompareConfig.quick(steps=8)
NAMES = ["none", "learned", "rope", "alibi"]  # one per behaviour: n/a past L, extension rows, bias


@pytest.fixture(scope="module")
def first_run(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cmp") / "run"
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus)})
    return out, run_compare(cfg, encodings=NAMES, out=out, progress=False)


def test_quick_run_writes_everything(first_run: tuple[Path, dict]) -> None:
    out, results = first_run
    for name in ("results.json", "report.md", "perplexity.png", "config.json"):
        assert (out / name).is_file(), name
    for name in NAMES:
        assert (out / "checkpoints" / name / "seed0.pt").is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["train_len"] == 16 and on_disk["eval_lengths"] == [16, 32, 64, 128, 256]
    assert on_disk["seeds"] == [0] and on_disk["versions"]["torch"] == torch.__version__
    assert set(on_disk["perplexity"]) >= set(NAMES)
    assert on_disk["perplexity"]["learned"]["32"] is None and on_disk["perplexity"]["learned"]["16"] > 1
    for method in on_disk["rope_extensions"]:
        assert f"rope+{method}" in on_disk["perplexity"]
    report = (out / "report.md").read_text()
    assert "| learned | " in report and "n/a" in report and "Press et al." in report


def test_rerun_resumes_without_retraining(first_run: tuple[Path, dict], tiny_corpus: Path) -> None:
    out, results = first_run
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus)})
    again = run_compare(cfg, encodings=NAMES, out=out, progress=False)
    assert again["this_run"]["resumed"] == [f"{n}/0" for n in NAMES]
    assert again["perplexity"] == results["perplexity"]
    assert again["train_seconds"] == results["train_seconds"]


def test_changed_config_is_refused(first_run: tuple[Path, dict], tiny_corpus: Path) -> None:
    out, _ = first_run
    cfg = CompareConfig(**{**FAST.with_train(steps=9).__dict__, "data": str(tiny_corpus)})
    with pytest.raises(
        ValueError,
        match=r"different configuration \(--steps or --preset/--quick \(train\.steps\): 8 -> 9\).*new --out",
    ):
        run_compare(cfg, encodings=NAMES, out=out, progress=False)


def test_checkpoint_of_another_config_is_refused(
    first_run: tuple[Path, dict], tmp_path: Path, tiny_corpus: Path
) -> None:
    src, _ = first_run
    out = tmp_path / "copy"
    (out / "checkpoints" / "none").mkdir(parents=True)
    ckpt = torch.load(src / "checkpoints" / "none" / "seed0.pt", weights_only=True)
    ckpt["config"]["train"]["lr"] = 1.0
    torch.save(ckpt, out / "checkpoints" / "none" / "seed0.pt")
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus)})
    with pytest.raises(ValueError, match=r"--lr or --preset/--quick \(train\.lr\): 1\.0 -> 0\.003") as info:
        run_compare(cfg, encodings=["none"], out=out, progress=False)
    # the checkpoint is named with what to do, not the folder; the refused run wrote no config.json
    assert f"{out / 'checkpoints' / 'none' / 'seed0.pt'} was not made by this run" in str(info.value)
    assert "delete it and rerun to retrain none seed 0" in str(info.value)
    assert not (out / "config.json").exists()


def _copy(first_run: tuple[Path, dict], tmp_path: Path) -> Path:
    """A copy of the module's first run folder, to damage or extend."""
    out = tmp_path / "copy"
    shutil.copytree(first_run[0], out)
    return out


def test_checkpoint_of_another_encoding_is_named(
    first_run: tuple[Path, dict], tmp_path: Path, tiny_corpus: Path
) -> None:
    out = _copy(first_run, tmp_path)
    shutil.copy(out / "checkpoints" / "alibi" / "seed0.pt", out / "checkpoints" / "rope" / "seed0.pt")
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus)})
    with pytest.raises(
        ValueError, match=r"rope/seed0\.pt was not made by this run \(a checkpoint of 'alibi'"
    ):
        run_compare(cfg, encodings=["rope"], out=out, progress=False)


@pytest.mark.parametrize("record", [5, {}, {"perplexity": [1]}])
def test_damaged_record_in_results_json_is_named(
    first_run: tuple[Path, dict], tmp_path: Path, tiny_corpus: Path, record: object
) -> None:
    """A record without its perplexities was merged into the summary: a KeyError traceback after training."""
    out = _copy(first_run, tmp_path)
    results = json.loads((out / "results.json").read_text())
    results["runs"]["learned"]["0"] = record
    (out / "results.json").write_text(json.dumps(results))
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus)})
    with pytest.raises(ValueError, match=r"results\.json is not a results file \(runs\.learned\.0 is not"):
        run_compare(cfg, encodings=["none"], out=out, progress=False)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        (("final_train_loss",), "bad", "final_train_loss is 'bad'"),
        (("perplexity", "learned", "16"), "abc", "perplexity.learned.16 is 'abc'"),
        (("curve",), 7, "curve is not lists of numbers"),
    ],
)
def test_unreadable_values_in_results_json_are_refused_before_training(
    first_run: tuple[Path, dict],
    tmp_path: Path,
    tiny_corpus: Path,
    field: tuple[str, ...],
    value: object,
    named: str,
) -> None:
    out = _copy(first_run, tmp_path)
    results = json.loads((out / "results.json").read_text())
    record = results["runs"]["learned"]["0"]
    for key in field[:-1]:
        record = record[key]
    record[field[-1]] = value
    (out / "results.json").write_text(json.dumps(results))
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus), "seeds": (5,)})
    with pytest.raises(ValueError, match=rf"results\.json is damaged \(runs\.learned\.0\.{named}[,)]"):
        run_compare(cfg, encodings=["alibi"], out=out, progress=False)
    assert not (out / "checkpoints" / "alibi" / "seed5.pt").exists()  # refused before any training


def test_results_of_another_configuration_are_refused_without_config_json(
    first_run: tuple[Path, dict], tmp_path: Path, tiny_corpus: Path
) -> None:
    """Deleting config.json no longer lets a run of other settings merge into the folder's results."""
    out = _copy(first_run, tmp_path)
    (out / "config.json").unlink()
    longer = dataclasses.replace(FAST.train, steps=FAST.train.steps + 1)
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus), "train": longer, "seeds": (5,)})
    with pytest.raises(
        ValueError, match=r"different configuration \(--steps or --preset/--quick \(train\.steps\): 8 -> 9\)"
    ):
        run_compare(cfg, encodings=["alibi"], out=out, progress=False)
    assert not (out / "config.json").exists()  # nothing written


def test_cli_on_the_default_stdlib_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(
        ["compare", "--quick", "--steps", "5", "--encodings", "none,rope", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert "standard library" in results["config"]["data"]["source"]
    assert results["config"]["train"]["steps"] == 5
    assert "| rope |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "/does/not/exist"], "does not exist"),
        (["--encodings", "rope,nonsense"], "unknown encoding"),
        (["--device", "warp-drive"], "not a device"),
        (["--jobs", "0"], "--jobs must be an integer >= 1, got 0"),
        (["--jobs", "2", "--threads", "1"], "--threads sets the threads of one process and --jobs 2"),
    ],
)
def test_cli_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", "--quick", "--out", str(tmp_path / "x"), "--no-progress", *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    code = main(
        ["compare", "--quick", "--steps", "1", "--encodings", "none", "--out", str(tmp_path / "file")]
    )
    assert code == 2 and "is a file" in capsys.readouterr().err


def test_cli_data_too_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "short.txt").write_text("print('hi')\n" * 30)
    code = main(["compare", "--quick", "--data", str(tmp_path / "short.txt"), "--out", str(tmp_path / "o")])
    assert code == 2 and "validation split" in capsys.readouterr().err


def test_default_encodings_follow_the_documented_order() -> None:
    names = default_encodings()
    assert names[:5] == ["none", "learned", "sinusoidal", "shaw", "rope"]
    assert set(names) <= set(posenc.available())
    with pytest.raises(ValueError, match="twice"):
        check_encodings(["rope", "rope"])


def test_eval_token_count_and_differences() -> None:
    assert eval_token_count(10_000, 256, 4) == 1024
    assert eval_token_count(600, 256, 4) == 512
    assert eval_token_count(10_000, 256, 4, eval_bytes=3000) == 2816  # whole windows of the longest length
    assert eval_token_count(10_000, 256, 4, eval_bytes=10) == 256  # at least one
    assert config_differences({"a": {"b": 1}, "c": 2}, {"a": {"b": 3}, "c": 2}) == ["a.b: 1 -> 3"]


def _synthetic() -> dict:
    rows = {
        "sinusoidal": {"8": 5.0, "16": 9.0, "32": 40.0},
        "rope": {"8": 5.0, "16": 5.5, "32": 7.0},
        "alibi": {"8": 5.1, "16": 5.0, "32": 5.0},
        "t5": {"8": 5.0, "16": 5.2, "32": 6.0},
        "learned": {"8": 4.9, "16": None, "32": None},
    }
    return {
        "train_len": 8,
        "eval_lengths": [8, 16, 32],
        "eval_tokens": 64,
        "encodings": list(rows),
        "perplexity": rows,
        "config": {
            "train": {
                "depth": 1,
                "dim": 16,
                "heads": 2,
                "steps": 3,
                "batch_size": 4,
                "train_len": 8,
                "lr": 0.1,
                "seed": 0,
            },
            "data": {"source": "here", "split": "by file", "train_bytes": 1, "val_bytes": 1},
        },
        "versions": {"torch": "x", "device": "cpu", "world_size": 1, "threads": 1},
        "wall_seconds": 1.0,
    }


def test_report_reasons_from_the_numbers() -> None:
    res = _synthetic()
    assert verdict(worst_ratio(res["perplexity"]["alibi"], 8)) == "holds up"
    assert verdict(worst_ratio(res["perplexity"]["rope"], 8)) == "degrades"
    assert verdict(worst_ratio(res["perplexity"]["sinusoidal"], 8)) == "breaks"
    assert verdict(worst_ratio(res["perplexity"]["learned"], 8)) == "n/a"
    text = claims(res)
    assert '"sinusoidal encodings handle any length"*: **not supported**' in text
    assert '"RoPE extrapolates well"*: **not supported** (it degrades' in text
    assert "shaw was not in this run" in text
    assert "agrees with the paper: alibi < t5 < rope < sinusoidal" in paper_comparison(res)
    res["perplexity"]["alibi"]["32"] = 100.0
    assert "this run has t5 < rope < sinusoidal < alibi" in paper_comparison(res)
    report = write_report(res)
    assert "Best at the training length L=8: **learned** (4.90)" in report


@pytest.mark.parametrize(
    ("heads", "note"), [(1, "0.00391 with 1 head,"), (4, "0.25 with 4 heads,"), (8, None)]
)
def test_report_explains_alibi_slopes_with_few_heads(heads: int, note: str | None) -> None:
    """With fewer than 8 heads the notes say that ALiBi's steepest slope is shallow and point at ``max_bias``."""
    res = _synthetic()
    res["config"]["train"]["heads"] = heads
    text = write_report(res)
    if note is None:
        assert "max_bias" not in text
    else:
        assert f"steepest is 2^(-8/H) for H a power of two: {note}" in text
        assert "`ALiBi(heads, max_bias=4)`" in text
    del res["perplexity"]["alibi"]
    res["encodings"].remove("alibi")
    assert "max_bias" not in write_report(res)


def test_scored_text_is_spread_over_the_held_out_bytes(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every length, extension and curve point scores blocks spread evenly over the held-out text (the first
    block at its start, the last at its end), not its first bytes; the report says so."""
    import posenc.experiments.evaluate as evaluate
    from posenc.experiments.data import load_corpus

    seen: list[torch.Tensor] = []
    real = evaluate.window_nll

    def spy(
        model: torch.nn.Module, tokens: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[float, int]:
        seen.append(tokens)
        return real(model, tokens, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluate, "window_nll", spy)
    monkeypatch.setattr("posenc.experiments.pairs.window_nll", spy)
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus)})
    results = run_compare(cfg, encodings=["rope"], out=tmp_path / "run", progress=False)
    val = load_corpus(tiny_corpus, min_train_tokens=17, min_val_tokens=257).val
    evals = [t for t in seen if t.shape[-1] == 257]
    curves = [t for t in seen if t.shape[-1] == 65]
    assert evals and curves and len(evals) + len(curves) == len(seen)
    for blocks, width in [(evals[0], 256), (curves[0], 64)]:
        assert blocks.dim() == 2 and blocks.shape[0] >= 2
        assert torch.equal(blocks[0], val[: width + 1]) and torch.equal(blocks[-1], val[-(width + 1) :])
    assert all(torch.equal(t, evals[0]) for t in evals)
    assert results["config"]["eval_layout"] == "spread"
    assert "spread evenly over the validation text" in (tmp_path / "run" / "report.md").read_text()


def test_report_does_not_call_a_single_block_spread() -> None:
    """``spread_blocks`` puts a lone block at byte 0 (``--eval-bytes`` under 16L, a short validation text, or
    ``curve_bytes`` under 4L): the report then names the first bytes, not blocks spread over the text."""
    res = _synthetic()
    res["config"]["eval_layout"] = "spread"
    res["config"]["data"]["val_bytes"] = 1000
    res["settings"] = {"curve_points": 4, "curve_bytes": 64}
    text = write_report(res)
    assert "(2 blocks of 32 spread evenly over the validation text)" in text
    assert (
        "at L and 4L, measured 4 times per run on 64 held-out bytes (2 blocks of 32 spread evenly over"
        in text
    )
    res["eval_tokens"], res["settings"]["curve_bytes"] = 32, 20
    text = write_report(res)
    assert "spread evenly" not in text and "(one block of 32: the first bytes of the validation text)" in text
    assert "on 32 held-out bytes (one block of 32: the first bytes of the validation text)" in text
    res["settings"]["curve_bytes"], res["config"]["data"]["val_bytes"] = 64, 40  # room for one 4L block only
    text = write_report(res)
    assert "spread evenly" not in text and "on 32 held-out bytes (one block of 32: the first bytes" in text


def test_eval_bytes_past_the_held_out_text_says_what_is_scored(
    first_run: tuple[Path, dict], tmp_path: Path, tiny_corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus), "eval_bytes": 10**9})
    with caplog.at_level("WARNING", logger="posenc"):
        results = run_compare(cfg, encodings=["none"], out=tmp_path / "big", progress=False)
    assert (
        f"scoring {results['eval_tokens']} held-out bytes at every length: --eval-bytes 1000000000"
        in caplog.text
    )


def test_a_rerun_records_what_it_computed_over_a_stale_record(
    first_run: tuple[Path, dict], tmp_path: Path, tiny_corpus: Path
) -> None:
    """A record already in results.json (e.g. written by an older posenc) is replaced by the one this run computes
    (here resumed from the checkpoint); the other encodings' records are kept."""
    out = _copy(first_run, tmp_path)
    results = json.loads((out / "results.json").read_text())
    truth = results["runs"]["alibi"]["0"]["perplexity"]
    stale = {name: {length: 999.0 for length in row} for name, row in truth.items()}
    results["runs"]["alibi"]["0"]["perplexity"] = stale
    (out / "results.json").write_text(json.dumps(results))
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(tiny_corpus)})
    again = run_compare(cfg, encodings=["alibi"], out=out, progress=False)
    assert again["this_run"]["resumed"] == ["alibi/0"]
    assert again["runs"]["alibi"]["0"]["perplexity"] == truth
    assert again["perplexity"] == first_run[1]["perplexity"]
    assert json.loads((out / "results.json").read_text())["runs"]["alibi"]["0"]["perplexity"] == truth


@pytest.mark.parametrize(("bias", "steepest"), [(4, "0.5"), (2, "0.707"), (1, "0.841")])
def test_alibi_note_gives_a_max_bias_rows_own_steepest_slope(bias: int, steepest: str) -> None:
    """alibi_note: each ``alibi:max_bias=B`` row is given its steepest slope, 2^(-B/H) (4 heads here), beside the
    paper's 2^(-8/H) for ``alibi``."""
    from posenc.experiments.alibi_note import alibi_note
    from posenc.experiments.results import aggregate

    def record(ppl: dict[str, dict[str, float]]) -> dict:
        return {
            "perplexity": ppl,
            "final_train_loss": 1.0,
            "train_seconds": 2.0,
            "tokens_per_second": 1.0,
            "curve": {},
        }

    row = f"alibi:max_bias={bias}"
    runs = {
        "alibi": {"0": record({"alibi": {"8": 5.0, "16": 5.1}})},
        row: {"0": record({row: {"8": 4.8, "16": 4.9}})},
    }
    note = alibi_note(aggregate(runs, {"train_len": 8, "eval_lengths": [8, 16]}), 4)
    assert "2^(-8/H) for H a power of two: 0.25 with 4 heads" in note
    assert f"`{row}` (steepest slope {steepest}) reached 4.80" in note
