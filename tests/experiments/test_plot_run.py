"""``posenc plot --run``: the trained pictures of a (tiny) compare run, checked against the loaded models."""

from __future__ import annotations

import json
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
def plotted(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = tmp_path_factory.mktemp("plot_run") / "run"
    cfg = CompareConfig(**{**CompareConfig.quick(steps=8).__dict__, "data": str(tiny_corpus)})
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
