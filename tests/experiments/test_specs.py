"""Encoding specs (``alibi:max_bias=4``): parsing, the canonical text, file names, order, models, and a compare
run with a variant beside the plain encoding (checkpoints, results, report, plot, generate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc import ALiBi
from posenc.bias.alibi import alibi_slopes
from posenc.cli import main
from posenc.experiments.compare import CompareConfig, run_compare
from posenc.experiments.specs import (
    EncodingSpec,
    base_name,
    check_specs,
    file_stem,
    parse_spec,
    parse_value,
    spec_of_stem,
    spec_order,
)
from posenc.experiments.specs import _shown as shown
from posenc.experiments.tasks.run import TaskContext, TasksConfig
from posenc.experiments.train import TrainConfig, build_model
from posenc.plots.palette import encoding_color

SMALL = TrainConfig(dim=32, depth=2, heads=4, train_len=16)


def test_a_plain_name_is_a_spec_without_options() -> None:
    assert parse_spec("alibi") == EncodingSpec("alibi") and parse_spec(" alibi ").text == "alibi"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("alibi:max_bias=4", "alibi:max_bias=4"),
        ("alibi:max_bias=04", "alibi:max_bias=4"),
        ("alibi:max_bias=4.0", "alibi:max_bias=4"),  # an integral float is that integer: one model, one name
        ("alibi:max_bias=+4", "alibi:max_bias=4"),
        ("alibi:max_bias=2.5", "alibi:max_bias=2.5"),
        ("alibi : max_bias = 1e+1", "alibi:max_bias=10"),
        ("alibi:max_bias=8", "alibi"),  # the default: the plain encoding
        ("alibi:max_bias=8.0", "alibi"),
        ("shaw:values=False:max_distance=8", "shaw:max_distance=8:values=false"),
        ("shaw:values=True:max_distance=16:per_head=false", "shaw"),
        ("shaw:values=1", "shaw:values=1"),  # not the default True: the encoding refuses it when built
        ("learned:max_len=none", "learned:max_len=none"),  # a training option: its default does not apply
        ("shaw:heads=none", None),
        ("rope:base=5e5:interleaved=TRUE", "rope:base=500000:interleaved=true"),
        ("rope:base=1.5e20", "rope:base=1.5e20"),
    ],
)
def test_the_canonical_text_sorts_options_and_writes_values_as_parsed(
    text: str, canonical: str | None
) -> None:
    if canonical is None:  # heads is a size: the model gives it
        with pytest.raises(ValueError, match="heads is a model size"):
            parse_spec(text)
        return
    spec = parse_spec(text)
    assert spec.text == canonical and parse_spec(spec.text) == spec
    assert "+" not in spec.text  # "+" separates a row's RoPE extension


def test_values_parse_to_their_python_types() -> None:
    assert parse_value("true", "x") is True and parse_value("FALSE", "x") is False
    assert parse_value("none", "x") is None and parse_value("-3", "x") == -3
    assert (
        parse_value("2.5", "x") == 2.5 and parse_value(".5", "x") == 0.5 and parse_value("1e-3", "x") == 1e-3
    )
    assert parse_value("yarn", "x") == "yarn" and parse_value("a.b-c_d", "x") == "a.b-c_d"


@given(
    st.one_of(
        st.booleans(),
        st.none(),
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=False, allow_infinity=False),
        st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,8}", fullmatch=True).filter(
            lambda s: s.lower() not in ("true", "false", "none", "nan", "inf", "infinity")
        ),
    )
)
def test_every_value_survives_its_canonical_text(value: object) -> None:
    text = shown(value)  # type: ignore[arg-type]
    back = parse_value(text, "x")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # an integral float is read as that integer
    assert type(back) is type(value) and back == value
    assert parse_value(shown(back), "x") == back  # canonical: a fixed point
    assert "+" not in text and ":" not in text and "@" not in text and "/" not in text


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("nope", ValueError, "unknown encoding 'nope'.*choose from"),
        ("nope:x=1", ValueError, "unknown encoding 'nope'"),
        ("alibi:max_bias", ValueError, "'max_bias' is not an option; write alibi:key=value"),
        ("alibi:=4", ValueError, "is not an option"),
        ("alibi:max_bias=", ValueError, "is not an option"),
        ("alibi:", ValueError, "is not an option"),
        ("alibi:max_bias=4:max_bias=5", ValueError, "option max_bias given twice"),
        ("alibi:dim=64", ValueError, "dim is a model size"),
        ("alibi:slope=1", TypeError, "unknown option.*'slope'.*it takes max_bias"),
        ("alibi:max_bias=a/b", ValueError, "a value must be true, false, none, a number or a word"),
        ("alibi:max_bias=nan", ValueError, "a value must be"),
        ("alibi:max_bias=inf", ValueError, "a value must be"),
        ("alibi:max_bias=1e400", ValueError, "'1e400': out of the range of a float"),
        ("alibi:max_bias=" + "9" * 41, ValueError, "a value of 41 characters; at most 40"),
        ("alibi:max_bias=" + "9" * 200, ValueError, "a spec of 215 characters; at most 120"),
    ],
)
def test_a_bad_spec_is_refused_naming_what_is_wrong(text: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_spec(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "rope:impl=reference",
            r"^--encodings 'rope:impl=reference': impl chooses how rope computes, not what",
        ),
        ("rope:cache_len=64", "cache_len chooses how rope computes"),
        ("xpos:cache_len=64", "cache_len chooses how xpos computes"),
        ("sinusoidal:cache_len=64", "cache_len chooses how sinusoidal computes"),
    ],
)
def test_options_of_how_not_what_make_no_variant_but_earlier_runs_names_load(text: str, match: str) -> None:
    """A user's ``--encodings`` refuses options that leave the model the same (the same model under a second
    name); a name read back from an earlier run's files (its checkpoints' folder) still parses and builds."""
    with pytest.raises(ValueError, match=match):
        check_specs([text], "--encodings")
    assert parse_spec(text).text == text
    assert check_specs([text.split(":")[0] + ":cache_len=2048"]) == [
        text.split(":")[0]
    ]  # the default: dropped


def test_a_list_is_refused_empty_or_with_one_spec_twice() -> None:
    assert check_specs(["alibi", "alibi:max_bias=4"]) == ["alibi", "alibi:max_bias=4"]
    with pytest.raises(ValueError, match="listed twice: alibi:max_bias=4"):
        check_specs(["alibi:max_bias=4", "alibi:max_bias=4.0"])
    with pytest.raises(ValueError, match="listed twice: alibi"):
        check_specs(["alibi", "alibi:max_bias=8"])
    with pytest.raises(ValueError, match=r"^--encodings 'alibi:': '' is not an option"):
        check_specs(["alibi:"], "--encodings")
    with pytest.raises(ValueError, match="no encodings given"):
        check_specs([])


def test_file_names_stand_for_their_spec() -> None:
    for text in ("alibi", "alibi:max_bias=4", "rope:base=500.0+yarn"):
        stem = file_stem(text)
        assert ":" not in stem and "/" not in stem and spec_of_stem(stem) == text
    assert parse_spec("shaw:max_distance=2").stem == "shaw@max_distance=2"


def test_order_puts_each_encoding_before_its_variants() -> None:
    names = {"alibi:max_bias=4", "alibi", "rope:base=500", "rope", "somebody_else", "alibi:max_bias=2"}
    assert spec_order(names) == [
        "rope",
        "rope:base=500",
        "alibi",
        "alibi:max_bias=2",
        "alibi:max_bias=4",
        "somebody_else",
    ]
    assert base_name("rope:base=500+yarn") == "rope" == base_name("rope+yarn") == base_name("rope")


def test_a_variant_is_drawn_in_a_darker_shade_of_its_encoding() -> None:
    plain, variant = encoding_color("alibi"), encoding_color("alibi:max_bias=4")
    assert variant != plain and variant == encoding_color("alibi:max_bias=4")
    assert encoding_color("rope+yarn") == encoding_color("rope")
    assert encoding_color("rope:base=500+yarn") == encoding_color("rope:base=500") != encoding_color("rope")


def test_a_variants_model_is_the_plain_model_built_with_the_options() -> None:
    plain, variant = build_model("alibi", SMALL), build_model("alibi:max_bias=4", SMALL)
    for a, b in zip(plain.state_dict().values(), variant.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the same seed, the same weights
    enc = variant.layer_encodings()[0]
    assert isinstance(enc, ALiBi) and torch.equal(enc.slopes, alibi_slopes(4, 4.0))
    assert not torch.equal(plain.layer_encodings()[0].slopes, enc.slopes)


def test_a_specs_options_override_the_training_options() -> None:
    assert build_model("learned", SMALL).max_length == 16  # its training option: a table of train_len rows
    assert build_model("learned:max_len=64", SMALL).max_length == 64


def test_tasks_name_a_variants_checkpoint_by_its_file_stem(tmp_path: Path) -> None:
    ctx = TaskContext(TasksConfig.quick(), tmp_path, torch.device("cpu"))
    assert ctx.checkpoint("copy", "alibi:max_bias=4", 1).name == "alibi@max_bias=4-s1.pt"


@pytest.fixture(scope="module")
def variant_run(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("spec") / "run"
    cfg = CompareConfig(**{**CompareConfig.quick(steps=4).__dict__, "data": str(tiny_corpus)})
    return out, run_compare(cfg, encodings=["alibi:max_bias=04", "alibi"], out=out, progress=False)


def test_a_compare_run_trains_a_variant_beside_the_plain_encoding(variant_run: tuple[Path, dict]) -> None:
    out, results = variant_run
    assert results["encodings"] == ["alibi", "alibi:max_bias=4"]
    assert (out / "checkpoints" / "alibi@max_bias=4" / "seed0.pt").is_file()
    assert results["perplexity"]["alibi"] != results["perplexity"]["alibi:max_bias=4"]
    report = (out / "report.md").read_text()
    assert "| alibi:max_bias=4 " in report and "`alibi:max_bias=4` is the encoding before the colon" in report


def test_a_variants_checkpoint_generates_and_is_drawn(
    variant_run: tuple[Path, dict], capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    from posenc.plots.run import load_run

    out, _ = variant_run
    ckpt = out / "checkpoints" / "alibi@max_bias=4" / "seed0.pt"
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "def", "--tokens", "3"]) == 0
    assert len(capfdbinary.readouterr().out) == 3  # the new bytes (a newline on a terminal only)
    run = load_run(out)
    assert list(run.models) == ["alibi", "alibi:max_bias=4"]
    assert torch.equal(run.models["alibi:max_bias=4"].layer_encodings()[0].slopes, alibi_slopes(2, 4.0))


def test_a_bad_spec_on_the_command_line_is_one_line_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    bad_ones = (
        ("alibi:slope=1", "--encodings 'alibi:slope=1': unknown option(s) 'slope'; it takes max_bias"),
        ("alibi:max_bias=-1", "max_bias"),
        ("learned:max_len=8", "exceeds the learned table (max_len=8)"),  # runs once at L: refused up front
        ("xpos:gamma=1e300", "--encodings xpos:gamma=1e300: "),  # an arithmetic error, not a traceback
        ("kerple:eps=1e300", "--encodings kerple:eps=1e300: "),  # torch's RuntimeError
        ("fire:width=99999999999999999999", "--encodings fire:width=99999999999999999999: "),  # several lines
    )
    for bad, words in bad_ones:
        assert main(["compare", "--quick", "--encodings", f"rope,{bad}", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("posenc compare: error:") and words in err and "\n" not in err
    assert not out.exists()


def test_tasks_take_variants_canonical() -> None:
    from posenc.experiments.tasks.experiment import check_request

    _, names, _ = check_request(TasksConfig.quick(), ["copy"], ["none", "alibi:max_bias=04"], None)
    assert names == ["none", "alibi:max_bias=4"]


def test_a_row_measured_short_of_the_longest_length_says_how_far_its_verdict_goes(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    from posenc.experiments.report import measured_reach, row_verdict

    cfg = CompareConfig(**{**CompareConfig.quick(steps=2).__dict__, "data": str(tiny_corpus)})
    results = run_compare(
        cfg, encodings=["learned:max_len=32", "learned"], out=tmp_path / "r", progress=False
    )
    assert measured_reach(results, "learned:max_len=32") == 32 and measured_reach(results, "learned") == 16
    assert (
        row_verdict(results, "learned:max_len=32").endswith(" to 2L")
        and row_verdict(results, "learned") == "n/a"
    )
    report = (tmp_path / "r" / "report.md").read_text()
    held = report.split("Holding up to 16L", 1)[1].split("\n", 1)[0]
    assert "learned:max_len=32" not in held  # it has no perplexity at 16L to hold up to


def test_only_a_row_short_of_the_longest_length_gets_a_reach_in_its_verdict() -> None:
    """row_verdict: "to kL" is for a row whose last length measured is short of the longest; a row measured at
    every length has the bare verdict."""
    from posenc.experiments.report import row_verdict, table
    from posenc.experiments.results import aggregate

    def record(ppl: dict[str, dict[str, float | None]]) -> dict:
        return {
            "perplexity": ppl,
            "final_train_loss": 1.0,
            "train_seconds": 2.0,
            "tokens_per_second": 1.0,
            "curve": {},
        }

    runs = {
        "alibi": {"0": record({"alibi": {"8": 5.0, "16": 5.0, "32": 5.0}})},
        "learned:max_len=16": {"0": record({"learned:max_len=16": {"8": 4.0, "16": 4.1, "32": None}})},
    }
    results = aggregate(runs, {"train_len": 8, "eval_lengths": [8, 16, 32]})
    assert row_verdict(results, "alibi") == "holds up"
    assert row_verdict(results, "learned:max_len=16") == "holds up to 2L"
    (row,) = [line for line in table(results).splitlines() if line.startswith("| alibi |")]
    assert row.endswith("| holds up |")


def test_tasks_refuse_an_encoding_that_cannot_run_at_l_before_touching_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    argv = [
        "tasks",
        "--quick",
        "--tasks",
        "copy",
        "--encodings",
        "alibi,learned:max_len=4",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posenc tasks: error: --encodings learned:max_len=4:") and "\n" not in err
    assert not out.exists()


def test_all_stands_for_every_registered_encoding_in_a_list() -> None:
    import posenc

    assert check_specs(["all", "alibi:max_bias=4"]) == [*posenc.available(), "alibi:max_bias=4"]
    assert check_specs([" all "]) == posenc.available()
    with pytest.raises(ValueError, match=r"listed twice \(all holds every registered encoding\): rope"):
        check_specs(["all", "rope"])


@pytest.mark.parametrize("name", ["all", "alibi:x", "rope+y", "a@b", "a=b", "a,b"])
def test_an_encoding_name_that_a_spec_could_not_name_is_refused(name: str) -> None:
    from posenc import PositionEncoding

    with pytest.raises(ValueError, match="is not allowed"):
        type("Odd", (PositionEncoding,), {"name": name})


def test_the_alibi_note_reports_this_runs_max_bias_variant() -> None:
    from posenc.experiments.alibi_note import alibi_note

    rows = {
        "shaw": {"8": 4.7, "16": 4.6},
        "rope": {"8": 4.8, "16": 6.0},
        "xpos": {"8": 4.7, "16": 5.0},
        "kerple": {"8": 4.9, "16": 4.8},
        "alibi": {"8": 5.3, "16": 5.1},
        "alibi:max_bias=4": {"8": 4.75, "16": 4.7},
    }
    results = {"train_len": 8, "eval_lengths": [8, 16], "perplexity": rows}
    text = alibi_note(results, 4)
    assert "0.25 with 4 heads" in text and "add `--encodings alibi:max_bias=4`" not in text
    assert (
        "`alibi:max_bias=4` (steepest slope 0.5) reached 4.75 at L against `alibi`'s 5.30, 0.99x at 2L"
        in text
    )
    assert "rope, alibi, xpos, kerple, shaw span 1.128x at L, and 1.043x with `alibi:max_bias=4`" in text
    del rows["alibi:max_bias=4"]
    assert "add `--encodings alibi:max_bias=4`" in alibi_note(results, 4)
    rows["alibi:max_bias=2"], rows["alibi:max_bias=4+x"] = {"8": 4.9, "16": 4.8}, {"8": 1.0, "16": 1.0}
    del rows["kerple"]  # without all five, no spread
    text = alibi_note(results, 4)
    assert "`alibi:max_bias=2` (steepest slope 0.707)" in text and "span" not in text and "+x" not in text


def test_variants_in_one_figure_get_distinct_colours_and_markers() -> None:
    from posenc.plots.compare import extension_dashes, row_style
    from posenc.plots.palette import variant_rank

    shown = ["alibi", "alibi:max_bias=2", "alibi:max_bias=4", "alibi:max_bias=6", "rope", "rope:base=5+yarn"]
    assert [variant_rank(n, shown) for n in shown] == [None, 0, 1, 2, None, 0]
    styles = [row_style(n, extension_dashes(), shown) for n in shown[:4]]
    assert len({s["color"] for s in styles}) == 4 and len({s["marker"] for s in styles}) == 4
    assert (
        encoding_color("rope:base=5+yarn", shown)
        == encoding_color("rope:base=5", shown)
        != encoding_color("rope")
    )


def test_a_checkpoint_folder_linked_to_nothing_is_refused_before_training(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "alibi@max_bias=4").symlink_to(tmp_path / "nowhere")
    cfg = CompareConfig(**{**CompareConfig.quick(steps=2).__dict__, "data": str(tiny_corpus)})
    with pytest.raises(ValueError, match=r"checkpoint folder of alibi:max_bias=4 .* which does not exist"):
        run_compare(cfg, encodings=["alibi:max_bias=4"], out=out, progress=False)
    assert not (out / "results.json").exists()


def test_two_specs_of_one_model_at_this_l_are_refused() -> None:
    from posenc.experiments.specs import check_buildable

    train = TrainConfig(dim=32, depth=2, heads=4, train_len=16)
    with pytest.raises(ValueError, match="learned and learned:max_len=16 build the same model at L = 16"):
        check_buildable(["learned", "learned:max_len=16"], train)
    with pytest.raises(ValueError, match="build the same model"):
        check_buildable(["rope:base=1e16", "rope:base=10000000000000000"], train, None)
    # an option whose default (None) is derived from the sizes: rotary_dim=None is the head size, 8 here
    with pytest.raises(ValueError, match=r"^--encodings: rope and rope:rotary_dim=8 build the same model"):
        check_buildable(["rope", "rope:rotary_dim=8"], train, None)
    check_buildable(["learned", "learned:max_len=32", "rope:base=1e16"], train)  # distinct models pass
    check_buildable(["rope", "rope:rotary_dim=4", "rope:base=500", "alibi", "alibi:max_bias=4"], train, None)


def test_a_model_whose_output_is_not_finite_is_refused_before_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import posenc.bias.fire
    from posenc.experiments.specs import check_buildable

    train = TrainConfig(dim=32, depth=2, heads=4, train_len=16)
    with pytest.raises(ValueError, match=r"^--encodings fire:init_c=1e300: FIRE: init_c must be <= 1e\+30"):
        check_buildable(["fire:init_c=1e300"], train)  # FIRE itself refuses it now
    monkeypatch.setattr(posenc.bias.fire, "FIRE_MAX_C", 1e301)  # the safety net behind it, for any encoding
    with pytest.raises(ValueError, match=r"^--encodings fire:init_c=1e300: its output at L is not finite"):
        check_buildable(["fire:init_c=1e300"], train)
    check_buildable(["fire:init_c=1e300"], train, None)  # device None: built, not run


@pytest.mark.parametrize("name", ["a/b", "../x", "a b", ".hidden", "-dash"])
def test_an_encoding_name_that_is_no_file_name_is_refused(name: str) -> None:
    from posenc import PositionEncoding

    with pytest.raises(ValueError, match="is not allowed"):
        type("Odd", (PositionEncoding,), {"name": name})


def test_a_rope_whose_extension_rows_cannot_be_built_is_refused_before_training() -> None:
    """``rope:rotary_dim=2`` trained, then failed building its rope+dynamic row, before its checkpoint was saved."""
    from posenc.experiments.specs import check_buildable

    train = TrainConfig(dim=32, depth=2, heads=4, train_len=16)
    with pytest.raises(
        ValueError, match=r"^--encodings rope:rotary_dim=2: its rope\+dynamic row .*cannot be built"
    ):
        check_buildable(["rope:rotary_dim=2"], train, None)
