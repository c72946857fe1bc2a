"""The numbers behind each untrained picture equal what the encodings themselves compute."""

from __future__ import annotations

import math

import pytest
import torch

import posenc
from posenc.plots.bias import bias_by_distance
from posenc.plots.pictures import MIN_DIM, MIN_LENGTH, PICTURES, PlotContext, draw, picture_names
from posenc.plots.rope_scaling import example_scalings, rope_scaling_figure, yarn_ramp
from posenc.plots.xpos import xpos_decay, xpos_figure
from posenc.rotary import RoPE, XPos, available_scalings

CTX = dict(dim=16, heads=4, train_len=8, factor=4)


def bias_names() -> list[str]:
    return [n for n in posenc.available() if posenc.build(n, dim=64, heads=4).family == "bias"]


@pytest.mark.parametrize("name", bias_names())
def test_bias_curve_is_the_last_row_of_the_bias_matrix(name: str) -> None:
    enc = posenc.build(name, dim=64, heads=4)
    curve = bias_by_distance(enc, 40)  # (H, 41)
    full = enc.bias(41, 41)  # (H, Q, K), a different call
    for d in (0, 1, 7, 40):
        torch.testing.assert_close(curve[:, d], full[:, 40, 40 - d].double())


def test_alibi_curve_is_minus_slope_times_distance() -> None:
    enc = posenc.ALiBi(8)
    curve = bias_by_distance(enc, 100)
    expected = -enc.slopes.double().reshape(8, 1) * torch.arange(101, dtype=torch.float64)
    torch.testing.assert_close(curve, expected)


def test_bias_picture_holds_every_bias_encoding_and_their_curves_for_the_query_its_title_names() -> None:
    """The title said "query at factor * L - 1" while the curves were those of a query at factor * L (one more
    distance, and FIRE, which normalises by the query position, drawn for another query)."""
    ctx = PlotContext(**CTX)
    pic = draw("bias", ctx)
    assert sorted(pic.data["bias"]) == sorted(bias_names())
    query = ctx.longest - 1  # the last position of a window of factor * L
    assert f"query at {query})" in pic.figure.get_suptitle()
    for name, layers in pic.data["bias"].items():
        full = ctx.untrained()[name].bias(query + 1, query + 1).double()  # (H, Q, K), a different call
        expected = full[:, query, :].flip(-1)  # distance d: key at query - d
        torch.testing.assert_close(
            torch.tensor(layers[0], dtype=torch.float64), expected, rtol=1e-6, atol=1e-9
        )
    assert pic.data["query"] == query
    legend = pic.figure.axes[0].get_legend()  # the heads were labelled but no legend was drawn
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == [
        f"head {h}" for h in range(4)
    ]


def angle_at_position_one(rope: RoPE, pair: int, length: int) -> float:
    """The angle RoPE turns pair ``pair`` by between positions 0 and 1, read from ``rotate`` on a unit vector."""
    q = torch.zeros(1, 1, length, rope.head_dim, dtype=torch.float64)
    q[..., pair] = 1.0  # x of the pair (half layout: x at i, y at i + D/2)
    out, _ = rope.rotate(q, q.clone(), torch.arange(length))
    x, y = out[0, 0, 1, pair], out[0, 0, 1, pair + rope.head_dim // 2]
    return math.atan2(float(y), float(x))


def test_rope_scaling_picture_shows_every_scaling_with_the_frequencies_rope_rotates_by() -> None:
    pic = rope_scaling_figure(16, 10000.0, 8, 4.0)
    assert set(pic.data["scalings"]) == {"default", *available_scalings()}
    scalings = example_scalings(8, 4.0, 16)
    for kind, row in pic.data["scalings"].items():
        rope = RoPE(16, scaling=scalings.get(kind))
        for pair in (0, 3, 7):
            theta = row["inv_freq"][pair]
            assert angle_at_position_one(rope, pair, 32) == pytest.approx(theta, rel=1e-5)
            assert row["wavelength"][pair] == pytest.approx(2 * math.pi / theta, rel=1e-6)
        assert row["attention_factor"] == pytest.approx(rope.attention_scale)


def test_yarn_ramp_is_shaded_where_yarn_interpolates_partly() -> None:
    pic = rope_scaling_figure(64, 10000.0, 64, 16.0)
    yarn = [k for k, s in example_scalings(64, 16.0, 64).items() if isinstance(s, posenc.YaRNScaling)]
    assert yarn
    for kind in yarn:
        row = pic.data["scalings"][kind]
        plain = torch.tensor(pic.data["scalings"]["default"]["inv_freq"], dtype=torch.float64)
        ours = torch.tensor(row["inv_freq"], dtype=torch.float64)
        lo, hi = row["ramp_pairs"]
        assert 0 < lo <= hi < plain.numel() - 1
        torch.testing.assert_close(ours[:lo], plain[:lo])  # kept
        torch.testing.assert_close(ours[hi + 1 :], plain[hi + 1 :] / 16.0)  # interpolated
        ramp = yarn_ramp(plain, ours, 16.0)
        assert ((ramp[lo : hi + 1] > 0) & (ramp[lo : hi + 1] < 1)).all()


def test_xpos_decay_is_the_product_of_the_scales_rotate_applies() -> None:
    enc = XPos(16, scale_base=64.0)
    decay = xpos_decay(enc, 50)  # (8, 51)
    for pair in (0, 5, 7):
        q = torch.zeros(1, 1, 51, 16)
        q[..., pair] = 1.0
        rq, rk = enc.rotate(q, q.clone())
        # query at n, key at 0: the dot product's magnitude is |rq_n| * |rk_0|
        norms = rq[0, 0].norm(dim=-1).double() * rk[0, 0, 0].norm().double()
        torch.testing.assert_close(decay[pair], norms, rtol=1e-5, atol=0)
    pic = xpos_figure(enc, 50, 8)
    for k, pair in enumerate(pic.data["pairs"]):
        torch.testing.assert_close(
            torch.tensor(pic.data["decay"][k], dtype=torch.float64), decay[pair], rtol=1e-5, atol=1e-12
        )


@pytest.mark.parametrize("name", [n for n, (needs_run, _, _) in PICTURES.items() if not needs_run])
def test_every_untrained_picture_saves_png_and_json(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    paths = draw(name, PlotContext(**CTX)).save(tmp_path, name)
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    assert isinstance(json.loads(paths[1].read_text()), dict)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{name}.json",
        f"{name}.png",
    ]  # no temporaries left


@pytest.mark.parametrize("name", picture_names(with_run=False))
def test_every_untrained_picture_draws_at_the_smallest_sizes_plot_takes(name: str) -> None:
    """--dim 2 and --length 1 were taken, then the rope_scaling picture failed midway (dynamic NTK needs a
    rotary dimension above 2; LongRoPE's temperature divides by ln L); the smallest sizes taken must all draw."""
    ctx = PlotContext(dim=MIN_DIM, heads=1, train_len=MIN_LENGTH, factor=1, max_distance=1)
    assert draw(name, ctx).data
    assert draw(name, PlotContext(dim=MIN_DIM, heads=1, train_len=MIN_LENGTH, factor=3)).data


def test_untrained_encodings_are_seeded_without_touching_the_callers_generator() -> None:
    """untrained() called torch.manual_seed(0) on the global generator: drawing a picture reset a user's seed."""
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    first = PlotContext(**CTX).untrained()
    assert torch.equal(torch.rand(3), expected)
    again = PlotContext(**CTX).untrained()
    for name, enc in first.items():  # still reproducible
        for a, b in zip(enc.state_dict().values(), again[name].state_dict().values(), strict=True):
            assert (
                torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            )  # tensors, or recorded options


def test_trained_pictures_need_a_run() -> None:
    with pytest.raises(ValueError, match="--run"):
        draw("attention_distance", PlotContext(**CTX))
