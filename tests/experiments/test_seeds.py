"""``posenc compare`` with seeds: one checkpoint per (encoding, seed), more seeds later train only the new ones, a
rerun with fewer encodings merges into results.json, old one-seed folders are refused clearly, every knob is
recorded, learning curves are measured."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from posenc.cli import main
from posenc.experiments.compare import CompareConfig, run_compare
from posenc.experiments.presets import PRESETS, parse_seeds, preset
from posenc.experiments.train import probe_steps, resolve_precision

FAST = CompareConfig.quick(steps=8)


def _cfg(corpus: Path, seeds: tuple[int, ...]) -> CompareConfig:
    return replace(FAST, data=str(corpus), seeds=seeds)


@pytest.fixture(scope="module")
def seeded(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("seeds") / "run"
    return out, run_compare(_cfg(tiny_corpus, (0, 1)), encodings=["none", "alibi"], out=out, progress=False)


def test_one_model_per_encoding_and_seed(seeded: tuple[Path, dict]) -> None:
    out, res = seeded
    for name in ("none", "alibi"):
        for seed in (0, 1):
            ckpt = torch.load(out / "checkpoints" / name / f"seed{seed}.pt", weights_only=True)
            assert ckpt["config"]["train"]["seed"] == seed
    assert res["seeds"] == [0, 1] and res["seeds_per_encoding"] == {"none": [0, 1], "alibi": [0, 1]}
    runs = res["runs"]["alibi"]
    assert runs["0"]["perplexity"] != runs["1"]["perplexity"]  # other weights, other batches
    a, b = runs["0"]["perplexity"]["alibi"]["16"], runs["1"]["perplexity"]["alibi"]["16"]
    assert res["perplexity"]["alibi"]["16"] == pytest.approx((a + b) / 2)
    assert res["perplexity_std"]["alibi"]["16"] == pytest.approx(abs(a - b) / 2**0.5)
    assert "seed" not in json.loads((out / "config.json").read_text())["train"]
    assert " ± " in (out / "report.md").read_text()


def test_curves_are_measured_and_drawn(seeded: tuple[Path, dict]) -> None:
    out, res = seeded
    curve = res["runs"]["none"]["0"]["curve"]
    assert curve["steps"] == probe_steps(8, FAST.curve_points) and curve["steps"][-1] == 8
    assert set(curve) == {"steps", "16", "64"} and all(v > 1 for v in curve["16"])
    assert (out / "curves.png").is_file() and "curves.png" in (out / "report.md").read_text()
    assert res["tokens_per_second"]["none"] > 0 and res["settings"]["tokens_per_run"] == 8 * 8 * 16


def test_more_seeds_train_only_the_new_ones_and_fewer_encodings_merge(
    seeded: tuple[Path, dict], tiny_corpus: Path
) -> None:
    out, first = seeded
    more = run_compare(_cfg(tiny_corpus, (0, 1, 2)), encodings=["none", "alibi"], out=out, progress=False)
    assert sorted(more["this_run"]["resumed"]) == ["alibi/0", "alibi/1", "none/0", "none/1"]
    assert more["runs"]["none"]["0"] == first["runs"]["none"]["0"]
    assert more["seeds_per_encoding"]["alibi"] == [0, 1, 2]
    fewer = run_compare(_cfg(tiny_corpus, (0,)), encodings=["none"], out=out, progress=False)
    on_disk = json.loads((out / "results.json").read_text())
    for res in (fewer, on_disk):
        assert res["encodings"] == ["none", "alibi"] and res["seeds_per_encoding"]["alibi"] == [0, 1, 2]
        assert res["perplexity"]["alibi"] == pytest.approx(more["perplexity"]["alibi"])
    assert "| alibi | 3 |" in (out / "report.md").read_text()


def test_changed_checkpoint_of_one_seed_is_refused(
    seeded: tuple[Path, dict], tmp_path: Path, tiny_corpus: Path
) -> None:
    src, _ = seeded
    out = tmp_path / "copy"
    (out / "checkpoints" / "none").mkdir(parents=True)
    ckpt = torch.load(src / "checkpoints" / "none" / "seed1.pt", weights_only=True)
    ckpt["config"]["train"]["seed"] = 5
    torch.save(ckpt, out / "checkpoints" / "none" / "seed1.pt")
    with pytest.raises(ValueError, match=r"train\.seed: 5 -> 1"):
        run_compare(_cfg(tiny_corpus, (1,)), encodings=["none"], out=out, progress=False)


def test_one_seed_folder_of_the_old_layout_is_refused(tmp_path: Path, tiny_corpus: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"train": {"seed": 0, "steps": 8}}))
    with pytest.raises(ValueError, match="one-seed run of an older posenc compare.*new --out"):
        run_compare(_cfg(tiny_corpus, (0,)), encodings=["none"], out=out, progress=False)


def test_cli_records_every_knob(
    tmp_path: Path, tiny_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "knobs"
    argv = [
        "compare", "--quick", "--steps", "4", "--encodings", "none", "--data", str(tiny_corpus),
        "--out", str(out), "--no-progress", "--dim", "24", "--depth", "1", "--heads", "3",
        "--batch-size", "4", "--lr", "0.01", "--warmup", "0.25", "--eval-bytes", "600", "--seeds", "0,3",
        "--precision", "auto",
    ]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    knobs = res["settings"]
    assert (knobs["dim"], knobs["depth"], knobs["heads"], knobs["batch_size"]) == (24, 1, 3, 4)
    assert (knobs["lr"], knobs["warmup_fraction"], knobs["warmup_steps"]) == (0.01, 0.25, 1)
    assert knobs["eval_bytes"] == 512 == res["eval_tokens"]  # whole windows of 16L = 256
    assert res["seeds"] == [0, 3] and knobs["preset"] == "quick"
    chosen = resolve_precision("auto", torch.device("cpu"))  # recorded as chosen, never "auto"
    assert knobs["precision"] == chosen == res["config"]["train"]["precision"]
    report = (out / "report.md").read_text()
    assert "1 layers, dim 24, 3 heads" in report and "seeds 0, 3" in report and "peak lr 0.01" in report
    assert re.search(r"\| none( †)? \| 2 \|", capsys.readouterr().out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "count N >= 1"),
        (["--seeds", "99999999999999999999999"], "count N >= 1 and <= 1000"),
        (["--seeds", "5000000000"], "count N >= 1 and <= 1000"),
        (["--seeds", f"0,{2**32}"], "--seeds must be an integer in [0, 2**32 - 1], got 4294967296"),
        (["--seeds", "0,99999999999999999999999"], "--seeds must be an integer in [0, 2**32 - 1]"),
        (["--seed", "99999999999999999999999"], "--seed must be an integer in [0, 2**32 - 1]"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**32 - 1], got -1"),
        (["--seeds", "1,1"], "distinct"),
        (["--seeds", "x"], "count (3) or a comma list"),
        (["--seeds", "2", "--seed", "1"], "not both"),
        (["--preset", "huge"], "unknown --preset 'huge'"),
        (["--warmup", "1.5"], "warmup"),
        (["--heads", "5"], "--heads must divide --dim"),
        (["--eval-bytes", "0"], "--eval-bytes"),
        (["--threads", "0"], "--threads"),
        (["--precision", "fp16"], "--precision 'fp16': choose one of auto, fp32, bf16"),
    ],
)
def test_cli_knob_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", "--out", str(tmp_path / "x"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_seeds_syntax_and_presets() -> None:
    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("0,4,7") == (0, 4, 7) and parse_seeds("5,") == (5,)
    assert preset("demo") == CompareConfig()
    long, gpu = preset("cpu-long"), preset("gpu")
    assert gpu.seeds == (0, 1, 2) and gpu.train.compile and not preset("demo").train.compile
    assert (
        long.train.steps * long.train.batch_size
        > 2 * CompareConfig().train.steps * CompareConfig().train.batch_size
    )
    assert set(PRESETS) == {"demo", "cpu-long", "gpu"}


def test_probe_steps_include_the_last_tenth() -> None:
    assert probe_steps(400, 20) == list(range(20, 401, 20))
    assert probe_steps(30, 4) == [8, 15, 22, 27, 30]
    assert probe_steps(10, 0) == []


def test_multiples_that_do_not_divide_the_largest_are_refused_before_training() -> None:
    """The scored bytes are whole windows of the longest length; multiples (1, 3, 4) cut 16L bytes into windows
    of 3L unevenly, which raised only at the first evaluation, after a model had been trained. Now the
    configuration is refused, naming the multiples; (1, 3, 6) is fine."""
    with pytest.raises(
        ValueError, match=r"multiples must each divide the largest \(4\).*got \(1, 3, 4\) \(3 do"
    ):
        replace(FAST, multiples=(1, 3, 4))
    assert replace(FAST, multiples=(1, 3, 6)).multiples == (1, 3, 6)


def test_multiples_without_the_training_length_are_refused() -> None:
    """Without 1 the report had nothing to compare with: every verdict n/a, 'Best at L: none measured'."""
    with pytest.raises(ValueError, match=r"multiples must start at 1 .*got \(2, 4\)"):
        replace(FAST, multiples=(2, 4))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("multiples", (1, 2.5), "CompareConfig: multiples must be an integer"),
        ("multiples", (True, 2), "CompareConfig: multiples must be an integer"),
        ("eval_windows", 2.5, "CompareConfig: eval_windows must be an integer"),
        ("curve_bytes", 100.0, "CompareConfig: curve_bytes must be an integer"),
        ("max_val_bytes", 0, "CompareConfig: max_val_bytes must be an integer >= 1, got 0"),
    ],
)
def test_compare_config_fields_must_be_whole_numbers(field: str, value: object, match: str) -> None:
    """A float multiple or window count was accepted and broke only at evaluation, after training (a length
    of 40.0 bytes, or n_tokens 2.5 windows long); now refused naming the field."""
    with pytest.raises((TypeError, ValueError), match=match):
        replace(FAST, **{field: value})
