"""``posenc plot --run``: the trained pictures of a (tiny) compare run, checked against the loaded models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from posenc.cli import main
from posenc.experiments.checkpoints import load_model
from posenc.experiments.compare import CompareConfig, run_compare
from posenc.plots.bias import bias_by_distance
from posenc.plots.pictures import picture_names

pytestmark = pytest.mark.slow  # a compare run (about 9 s on 2 cores)


@pytest.fixture(scope="module")
def corpus(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own copy of the corpus (a test changes it, then restores it)."""
    copy = tmp_path_factory.mktemp("plot_corpus") / "text"
    shutil.copytree(tiny_corpus, copy)
    return copy


@pytest.fixture(scope="module")
def plotted(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = tmp_path_factory.mktemp("plot_run") / "run"
    cfg = CompareConfig(**{**CompareConfig.quick(steps=8).__dict__, "data": str(corpus)})
    run_compare(cfg, encodings=["alibi", "learned"], out=run, progress=False)
    out = run.parent / "plots"
    assert main(["plot", "--run", str(run), "--out", str(out), "--dim", "16", "--windows", "1"]) == 0
    return run, out


def test_every_picture_is_drawn_with_a_run(plotted: tuple[Path, Path]) -> None:
    _, out = plotted
    for name in picture_names(with_run=True):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert (out / f"{name}.json").is_file()


def test_trained_bias_is_each_layers_bias(plotted: tuple[Path, Path]) -> None:
    run, out = plotted
    data = json.loads((out / "bias_trained.json").read_text())
    assert list(data["bias"]) == ["alibi"]  # learned is not a bias encoding
    model, _ = load_model(run / "checkpoints" / "alibi" / "seed0.pt")
    longest = 16 * data["train_len"]
    for layer, curve in enumerate(data["bias"]["alibi"]):
        expected = bias_by_distance(model.blocks[layer].attn.position, longest - 1)
        torch.testing.assert_close(torch.tensor(curve, dtype=torch.float64), expected, rtol=1e-6, atol=1e-9)


def test_attention_pictures_cover_l_and_16l(plotted: tuple[Path, Path]) -> None:
    _, out = plotted
    dist = json.loads((out / "attention_distance.json").read_text())["mean_weight"]
    ent = json.loads((out / "attention_entropy.json").read_text())["mean_entropy"]
    assert set(dist) == set(ent) == {"alibi", "learned"}
    assert set(dist["alibi"]) == {"16", "256"}
    assert dist["learned"]["256"] is None  # its table stops at L
    weights = torch.tensor(dist["alibi"]["256"]["all_layers"])
    assert weights.shape == (256,) and (weights > 0).all() and weights[0] > weights[-1]  # ALiBi stays local


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _plot_error(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], only: str = "bias_trained"
) -> str:
    out = tmp_path / "plots"
    assert main(["plot", "--run", str(run), "--out", str(out), "--only", only]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())
    return err


def test_a_checkpoint_of_another_encoding_is_refused_not_drawn_under_its_folders_name(
    plotted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """learned's checkpoint copied over alibi's was drawn as "alibi" (its bias: none at all)."""
    run = _copy(plotted[0], tmp_path)
    shutil.copy(run / "checkpoints" / "learned" / "seed0.pt", run / "checkpoints" / "alibi" / "seed0.pt")
    err = _plot_error(run, tmp_path, capsys)
    assert f"{run / 'checkpoints' / 'alibi' / 'seed0.pt'} was not made by this run" in err
    assert "a checkpoint of 'learned', not of 'alibi'" in err


def test_a_checkpoint_of_another_configuration_is_refused(
    plotted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint trained at another L was drawn with this run's L marked on it. Here config.json was edited,
    so every checkpoint disagrees with it in the same way: the error names config.json (it blamed the first
    checkpoint and said to delete it, review s4)."""
    run = _copy(plotted[0], tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["train"]["train_len"] *= 2
    (run / "config.json").write_text(json.dumps(config))
    err = _plot_error(run, tmp_path, capsys)
    assert f"{run / 'config.json'} disagrees with every checkpoint of this run (train.train_len:" in err
    assert "was it edited?" in err


def test_a_checkpoint_of_an_encoding_not_registered_here_is_not_called_damaged(
    plotted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's encoding trained from a script that imports it: `posenc plot --run` called its checkpoint
    damaged and said to delete it (review s4)."""
    run = _copy(plotted[0], tmp_path)
    path = run / "checkpoints" / "alibi" / "seed0.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["encoding"] = "users_own"
    torch.save(ckpt, path)
    err = _plot_error(run, tmp_path, capsys)
    assert "holds a model of encoding 'users_own', which is not registered in this process" in err
    assert "damaged" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [("{", "is not a readable run configuration"), ("{}", "is not a `posenc compare` configuration")],
)
def test_a_damaged_config_is_one_line_naming_it(
    text: str, message: str, plotted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'{' gave json's bare "Expecting property name ..." and '{}' a KeyError traceback."""
    run = _copy(plotted[0], tmp_path)
    (run / "config.json").write_text(text)
    err = _plot_error(run, tmp_path, capsys)
    assert f"{run / 'config.json'} {message}" in err


def test_a_run_without_a_bias_encoding_draws_every_other_picture(
    plotted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bias_trained, drawn by default, failed the whole command (after the untrained pictures, before the attention
    ones) for a run without ALiBi, T5, FIRE or Kerple; by default it is skipped, by name it is still an error."""
    run = _copy(plotted[0], tmp_path)
    shutil.rmtree(run / "checkpoints" / "alibi")  # only learned is left
    out = tmp_path / "plots"
    assert main(["plot", "--run", str(run), "--out", str(out), "--dim", "16", "--length", "16"]) == 0
    assert "skipped bias_trained: --run" in capsys.readouterr().out
    drawn = {p.stem for p in out.glob("*.png")}
    assert drawn == set(picture_names(with_run=True)) - {"bias_trained"}
    _plot_error(run, tmp_path / "only", capsys)  # --only bias_trained


def test_text_that_is_no_longer_the_runs_is_refused_not_drawn_on(
    plotted: tuple[Path, Path], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The attention pictures read the run's --data folder as it is now: after an edit there they were drawn on
    other text than the run's, silently (config.json records the corpus's SHA-256, as compare's resume checks)."""
    run = plotted[0]
    edited = corpus / "mod_00.py"
    before = edited.read_bytes()
    try:
        edited.write_bytes(before + b"def more():\n    return 1\n")
        err = _plot_error(run, tmp_path, capsys, only="bias_trained,attention_distance")
        assert f"--run {run} was trained on other text than {corpus} holds now (data.sha256:" in err
    finally:
        edited.write_bytes(before)
    moved = corpus.with_name("moved")
    corpus.rename(moved)
    try:
        err = _plot_error(run, tmp_path / "missing", capsys, only="attention_entropy")
        assert f"--run {run} was trained on {corpus}, which is not on this machine" in err
    finally:
        moved.rename(corpus)
    out = tmp_path / "restored"  # the run's own text again: drawn
    assert main(["plot", "--run", str(run), "--out", str(out), "--only", "attention_entropy"]) == 0
    assert (out / "attention_entropy.png").is_file()
