"""Positions whose key-query distances ``k - q`` overflow their integer dtype are refused by every encoding that
reads the distance (bias encodings, Shaw), never wrapped around: int64 positions ``-2**62, 0, 2**62`` gave Kerple
and FIRE NaN outputs and ALiBi a bias of the wrong sign, silently (review s7)."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import Attention

DISTANCE_ENCODINGS = ["alibi", "t5", "kerple", "fire", "shaw"]


def attention(name: str, backend: str = "math") -> Attention:
    torch.manual_seed(0)
    return Attention(16, 2, position=posenc.build(name, heads=2, head_dim=8), backend=backend).eval()


@pytest.mark.parametrize("name", DISTANCE_ENCODINGS)
@pytest.mark.parametrize(
    "positions",
    [[-(2**62), 0, 2**62], [-(2**63), 0, 2**63 - 1], [-1, 0, 2**63 - 1]],
    ids=["pm2^62", "int64-range", "one-far"],
)
def test_attention_refuses_positions_whose_distances_overflow(name: str, positions: list[int]) -> None:
    x = torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match="wrap around"):
        attention(name)(x, positions=torch.tensor(positions))


@pytest.mark.parametrize("name", ["alibi", "t5", "kerple", "shaw"])
def test_far_positions_close_together_are_taken_and_shift_invariant(name: str) -> None:
    """Large positions are fine as long as their distances fit: these encodings see only ``k - q``."""
    attn, x = attention(name), torch.randn(1, 3, 16)
    near = attn(x, positions=torch.tensor([0, 1, 2]))
    far = attn(x, positions=torch.tensor([2**62, 2**62 + 1, 2**62 + 2]))
    torch.testing.assert_close(far, near, rtol=0, atol=0)


@pytest.mark.parametrize("name", DISTANCE_ENCODINGS)
def test_hooks_called_directly_widen_int32_positions(name: str) -> None:
    """A user's own attention calling the hooks with int32 positions ``2**32 - 1`` apart: subtracted in int64 (the
    int32 difference wrapped to 1), so the bias is the int64 positions' one."""
    enc = posenc.build(name, heads=2, head_dim=8)
    q = torch.randn(1, 2, 1, 8)
    q_pos, k_pos = torch.tensor([[-(2**31)]]), torch.tensor([[2**31 - 1, -(2**31)]])
    want = enc.score_bias(q, q_pos, k_pos)
    got = enc.score_bias(q, q_pos.int(), k_pos.int())
    assert got is not None and want is not None
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert enc.score_mod(q, q_pos.int(), k_pos.int()) is not None


def test_shaw_decode_rows_refuse_them_too() -> None:
    enc = posenc.build("shaw", heads=2, head_dim=8)
    with pytest.raises(ValueError, match="wrap around"):
        enc.kv_rows(torch.tensor([[2**62]]), torch.tensor([[-(2**62), 0]]))


@pytest.mark.parametrize("name", ["alibi", "t5", "none"])
def test_bias_refuses_an_offset_past_2_62_naming_it(name: str) -> None:
    enc = posenc.build(name, heads=2, head_dim=8)
    with pytest.raises(ValueError, match=r"offset=9223372036854775807"):
        enc.bias(2, 2, offset=2**63 - 1)
    assert enc.bias(2, 3, offset=2**62 - 2).shape[-2:] == (2, 3)


def test_a_decode_session_step_skips_the_check_and_stays_exact() -> None:
    """Inside a DecodeSession positions are promised in ``[0, slots)``: the session's rows, no reduction."""
    enc = posenc.build("alibi", heads=2)
    q_pos, k_pos = torch.tensor([[5]]), torch.arange(8).unsqueeze(0)
    plain = enc.pairwise(q_pos, k_pos)
    with posenc.DecodeSession(8), torch.no_grad():
        torch.testing.assert_close(enc.pairwise(q_pos, k_pos), plain, rtol=0, atol=0)
