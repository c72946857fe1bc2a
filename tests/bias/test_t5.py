"""T5 relative-position buckets: equal to transformers' ``T5Attention._relative_position_bucket``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import posenc
from posenc.functional import t5_buckets, t5_distance_buckets

hf_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
# (bidirectional, num_buckets, max_distance): defaults, small tables, max_distance just past the exact range
SETTINGS = [(b, 32, 128) for b in (False, True)] + [(b, 8, 20) for b in (False, True)]
SETTINGS += [(False, 16, 9), (True, 16, 5), (False, 4, 3), (True, 4, 2), (False, 2, 2)]


@pytest.mark.parametrize(("bidirectional", "num_buckets", "max_distance"), SETTINGS)
def test_buckets_equal_transformers(bidirectional: bool, num_buckets: int, max_distance: int) -> None:
    rel = torch.arange(-3000, 3001)
    ours = t5_buckets(rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    ref = hf_t5.T5Attention._relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    assert torch.equal(ours, ref.long())


@given(rel=st.lists(st.integers(-(10**7), 10**7), min_size=1, max_size=20), bidirectional=st.booleans())
def test_lookup_over_clipped_distances_equals_buckets(rel: list[int], bidirectional: bool) -> None:
    r = torch.tensor(rel)
    table = t5_distance_buckets(
        bidirectional=bidirectional, num_buckets=32, max_distance=128, device=r.device
    )
    direct = t5_buckets(r, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    assert torch.equal(table[r.clamp(-128, 128) + 128], direct)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_bias_reads_the_learned_table(bidirectional: bool) -> None:
    enc = posenc.T5Bias(3, num_buckets=16, max_distance=40, bidirectional=bidirectional)
    bias = enc.bias(6, 70, offset=50)  # keys before and after the queries
    rel = torch.arange(70)[None, :] - torch.arange(50, 56)[:, None]  # key - query
    buckets = hf_t5.T5Attention._relative_position_bucket(rel, bidirectional, 16, 40)
    torch.testing.assert_close(bias, enc.embedding.weight[buckets].permute(2, 0, 1))
    if not bidirectional:  # causal: every key after the query shares bucket 0
        assert torch.equal(bias[:, 0, 51:], enc.embedding.weight[0][:, None].expand(3, 19))


def test_gradients_reach_the_table_and_errors() -> None:
    enc = posenc.build("t5", heads=2, num_buckets=8, max_distance=16)
    enc.bias(5, 5).sum().backward()
    assert enc.embedding.weight.grad is not None and enc.embedding.weight.grad.abs().sum() > 0
    assert "bucket_of" not in enc.state_dict()
    with pytest.raises(ValueError, match="max_distance"):
        posenc.T5Bias(2, num_buckets=32, max_distance=8, bidirectional=True)
    with pytest.raises(ValueError, match="num_buckets"):
        posenc.T5Bias(2, num_buckets=2, bidirectional=True)
    with pytest.raises(TypeError, match="relative must be an integer tensor"):
        t5_buckets(torch.zeros(3), bidirectional=False)


def test_t5_buckets_checks_its_settings() -> None:
    """t5_buckets took max_distance=nan (buckets down to -2**63), num_buckets=32.0 (float "buckets") and
    bidirectional="no" (as True); t5_distance_buckets(max_distance=-1) raised arange's error (fuzz #3, #11)."""
    from posenc.functional import t5_buckets
    from posenc.functional.bias import t5_distance_buckets

    rel = torch.arange(-300, 1)
    with pytest.raises(TypeError, match="t5_buckets: max_distance must be an integer, got nan"):
        t5_buckets(rel, bidirectional=False, max_distance=float("nan"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="t5_buckets: num_buckets must be an integer, got 32.0"):
        t5_buckets(rel, bidirectional=False, num_buckets=32.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="t5_buckets: bidirectional must be True or False, got 'no'"):
        t5_buckets(rel, bidirectional="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="t5_buckets: relative must be an integer tensor"):
        t5_buckets(rel > 0, bidirectional=False)
    with pytest.raises(ValueError, match="t5_distance_buckets: max_distance"):
        t5_distance_buckets(bidirectional=False, num_buckets=32, max_distance=-1, device=torch.device("cpu"))
    import numpy as np

    assert torch.equal(
        t5_buckets(rel, bidirectional=True, num_buckets=np.int64(32), max_distance=torch.tensor(128)),  # type: ignore[arg-type]
        t5_buckets(rel, bidirectional=True),
    )


def test_bidirectional_attention_refuses_a_decoders_buckets() -> None:
    """With ``bidirectional=False`` every key after the query shares the bucket of distance 0 (T5's decoder):
    ``Attention(causal=False)`` refuses it when built, and at a call when it is swapped in later;
    ``bidirectional=True`` serves (a checkpoint cannot change the option: loading refuses another value)."""
    with pytest.raises(
        ValueError, match=r"position: T5Bias is for causal attention only \(with bidirectional=False"
    ):
        posenc.Attention(16, 2, position=posenc.T5Bias(2), causal=False)
    encoder = posenc.Attention(16, 2, position=posenc.T5Bias(2, bidirectional=True), causal=False)
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        encoder(x)
    encoder.position = posenc.T5Bias(2)
    with pytest.raises(ValueError, match="T5Bias is for causal attention only"), torch.no_grad():
        encoder(x)
    with torch.no_grad():
        posenc.Attention(16, 2, position=posenc.T5Bias(2))(
            x
        )  # causal: the decoder's buckets are what it wants
