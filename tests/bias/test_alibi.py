"""ALiBi: the paper's slopes (checked against transformers), the linear bias, both directions."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import posenc
from posenc.functional import alibi_slopes


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16, 32])
def test_power_of_two_slopes_are_the_papers_geometric_sequence(heads: int) -> None:
    expected = torch.tensor([2.0 ** (-8.0 * (i + 1) / heads) for i in range(heads)])
    torch.testing.assert_close(alibi_slopes(heads), expected)


def test_non_power_of_two_rule() -> None:
    # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...)
    expected = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(0.5 + i) for i in range(4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))


@pytest.mark.parametrize("heads", list(range(1, 41)))
def test_slopes_equal_transformers(heads: int) -> None:
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    mask = torch.ones(1, 3, dtype=torch.long)
    ref = bloom.build_alibi_tensor(mask, heads, torch.float32).view(heads, 3)[:, 1]  # slope * position 1
    torch.testing.assert_close(alibi_slopes(heads), ref)


def test_bias_is_minus_slope_times_distance_both_directions() -> None:
    enc = posenc.ALiBi(6)
    bias = enc.bias(5, 9, offset=3)  # queries 3..7 against keys 0..8 (keys after queries too)
    i = torch.arange(3, 8)[:, None]
    j = torch.arange(9)[None, :]
    expected = -alibi_slopes(6)[:, None, None] * (i - j).abs()
    torch.testing.assert_close(bias, expected)
    assert bias.shape == (6, 5, 9) and bias.dtype == torch.float32


@given(offset=st.integers(0, 10_000), q_len=st.integers(1, 6), k_len=st.integers(1, 6))
def test_bias_depends_only_on_distance(offset: int, q_len: int, k_len: int) -> None:
    enc = posenc.ALiBi(3)
    q_pos, k_pos = torch.arange(q_len)[None] + offset, torch.arange(k_len)[None] + offset
    torch.testing.assert_close(enc.pairwise(q_pos, k_pos)[0], enc.bias(q_len, k_len))


def test_registry_buffers_and_errors() -> None:
    enc = posenc.build("alibi", dim=64, heads=8)
    assert isinstance(enc, posenc.ALiBi) and enc.family == "bias"
    assert not list(enc.parameters()) and "slopes" not in enc.state_dict()  # recomputable: not persisted
    enc = enc.to(torch.float16)
    assert enc.slopes.dtype == torch.float32 and math.isclose(enc.slopes[0].item(), 0.5)
    with pytest.raises(ValueError, match="heads"):
        posenc.build("alibi", dim=64)
    with pytest.raises(ValueError, match="heads must be an integer >= 1"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match="built for 8 heads"):
        enc.score_bias(torch.zeros(1, 4, 2, 8), torch.arange(2)[None], torch.arange(2)[None])


def test_meta_device() -> None:
    with torch.device("meta"):
        enc = posenc.ALiBi(4)
        assert enc.bias(3, 3).device.type == "meta"


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("max_bias", [2, 4, 8, 12.5])
def test_max_bias_slopes_equal_mpts(heads: int, max_bias: float) -> None:
    """``max_bias`` is MPT's ``alibi_bias_max`` (its slopes equal ours for power-of-two head counts; for others MPT
    departs from the paper's rule, which is kept)."""
    mpt = pytest.importorskip("transformers.models.mpt.modeling_mpt")
    ref = -mpt.build_mpt_alibi_tensor(heads, 2, alibi_bias_max=max_bias)[
        :, 0, 0
    ]  # (H, 1, 2): slope * (-1, 0)
    torch.testing.assert_close(alibi_slopes(heads, max_bias), ref)
    expected = torch.tensor([2.0 ** (-max_bias * (i + 1) / heads) for i in range(heads)])
    torch.testing.assert_close(alibi_slopes(heads, max_bias), expected)


def test_max_bias_reaches_the_module_and_its_bias() -> None:
    assert torch.equal(posenc.ALiBi(12).slopes, alibi_slopes(12))  # the default is the paper's
    assert torch.equal(posenc.ALiBi(12, max_bias=8).slopes, alibi_slopes(12))
    enc = posenc.build("alibi", dim=64, heads=4, max_bias=4)
    assert isinstance(enc, posenc.ALiBi) and "max_bias=4" in repr(enc)
    torch.testing.assert_close(enc.slopes, torch.tensor([0.5, 0.25, 0.125, 0.0625]))
    i, j = torch.arange(3)[:, None], torch.arange(3)[None, :]
    torch.testing.assert_close(enc.bias(3, 3), -enc.slopes[:, None, None] * (i - j).abs().float())
    assert "max_bias" not in repr(posenc.ALiBi(4)) and not enc.state_dict()  # recomputed, never stored


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (0, ValueError, "ALiBi: max_bias must be > 0, got 0"),
        (-1.5, ValueError, "ALiBi: max_bias must be > 0, got -1.5"),
        (float("nan"), ValueError, "ALiBi: max_bias must be a finite number, got nan"),
        (True, TypeError, "ALiBi: max_bias must be a number, got True"),
        ("4", TypeError, "ALiBi: max_bias must be a number, got '4'"),
    ],
)
def test_bad_max_bias_is_refused(bad: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=re.escape(match)):
        posenc.ALiBi(4, max_bias=bad)  # type: ignore[arg-type]
    with pytest.raises(error, match=re.escape(match.replace("ALiBi", "alibi_slopes"))):
        alibi_slopes(4, bad)  # type: ignore[arg-type]


def _slopes_before(n: int, max_bias: float) -> list[float]:
    """The reference code's recursion (posenc's before the slopes went through an array)."""

    def power_of_two(m: int) -> list[float]:
        start = 2.0 ** (-max_bias / m)
        return [start ** (i + 1) for i in range(m)]

    closest = 2 ** math.floor(math.log2(n))
    if closest == n:
        return power_of_two(n)
    return power_of_two(closest) + _slopes_before(2 * closest, max_bias)[0::2][: n - closest]


@pytest.mark.parametrize("max_bias", [8.0, 4.0, 0.5, 13.7])
def test_slopes_are_bitwise_the_reference_codes(max_bias: float) -> None:
    """The slopes are no longer a Python list (ALiBi(2**28) took a minute, 2**40 hung): same values, bitwise."""
    for heads in [*range(1, 300), 1000, 4097]:
        want = torch.tensor(_slopes_before(heads, max_bias), dtype=torch.float32)
        assert torch.equal(alibi_slopes(heads, max_bias), want), heads


def test_alibi_slopes_takes_integers_as_check_int_does() -> None:
    """numpy and 0-d tensor integers as ALiBi takes them; a bool or a float is a TypeError (fuzz #9)."""
    import numpy as np

    assert torch.equal(alibi_slopes(np.int64(4)), alibi_slopes(4))
    assert torch.equal(alibi_slopes(torch.tensor(6)), alibi_slopes(6))
    for bad in (True, 4.0, "4"):
        with pytest.raises(TypeError, match="alibi_slopes: heads must be an integer"):
            alibi_slopes(bad)  # type: ignore[arg-type]


def test_max_bias_keeps_every_slope_a_normal_float32() -> None:
    """The smallest slope is ``2^-max_bias``: up to 126 every slope is a normal float32 (> 0); past it they lose
    precision, then underflow to 0 (at 1000 every slope was 0 and ALiBi computed NoPE), so both entry points
    refuse, naming max_bias and the value as given (not rounded)."""
    slopes = alibi_slopes(4, 126)
    assert (slopes > 0).all() and slopes.min() >= torch.finfo(torch.float32).tiny
    for owner, make in [
        ("alibi_slopes", lambda b: alibi_slopes(5, b)),
        ("ALiBi", lambda b: posenc.ALiBi(4, b)),
    ]:
        for too_big in (126.0000001, 160, 1000):
            with pytest.raises(
                ValueError, match=rf"{owner}: max_bias must be <= 126, got {float(too_big)!r}:"
            ):
                make(too_big)
