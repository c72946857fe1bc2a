"""Positions of any integer dtype give the int64 result (review s7): the functional bias and relative functions
subtracted in the positions' own dtype, so uint8 ``5 - 7`` was 254 (ALiBi off by 15.9, Shaw's index by 256),
int8/int16 positions far apart and int32 ones at the ``2**31`` edge wrapped, and ``lookup_bias`` read uint8
positions as a boolean mask."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc.functional.bias import alibi_bias, distance, fire_input, kerple_bias, lookup_bias
from posenc.functional.relative import relative_from_positions

DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32]
Q = torch.tensor([[7, 100, 0]]).t()  # (3, 1)
K = torch.tensor([[5, 0, 120, 2]])  # (1, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_functions_equal_their_int64_results(dtype: torch.dtype) -> None:
    q, k = Q.to(dtype), K.to(dtype)
    slopes, table = torch.tensor([[[0.5]]]), torch.randn(2, 9)
    head = torch.arange(2).view(-1, 1, 1)
    r1, r2, c, thr = torch.tensor(1.5), torch.tensor(0.7), torch.tensor(0.3), torch.tensor(8.0)
    pairs = [
        (distance(q, k), distance(Q, K)),
        (alibi_bias(slopes, q, k), alibi_bias(slopes, Q, K)),
        (kerple_bias(r1, r2, q, k), kerple_bias(r1, r2, Q, K)),
        (fire_input(c, thr, q, k), fire_input(c, thr, Q, K)),
        (lookup_bias(table, head, q, k), lookup_bias(table, head, Q, K)),
        (relative_from_positions(q[:, 0], k[0], 3), relative_from_positions(Q[:, 0], K[0], 3)),
        (relative_from_positions(q[:, 0], k[0]), relative_from_positions(Q[:, 0], K[0])),
    ]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_int32_at_the_edge_does_not_wrap() -> None:
    q = torch.tensor([2**31 - 1], dtype=torch.int32)
    k = torch.tensor([-(2**31)], dtype=torch.int32)
    assert relative_from_positions(q, k).item() == -(2**32) + 1


@pytest.mark.parametrize("name", ["alibi", "t5", "kerple", "fire", "shaw"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hooks_take_narrow_positions(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    enc = posenc.build(name, heads=2, head_dim=8)
    q = torch.randn(1, 2, 3, 8)
    q_pos, k_pos = torch.tensor([[7, 9, 10]]), torch.tensor([[5, 0, 12, 2]])
    want = enc.score_bias(q, q_pos, k_pos)
    got = enc.score_bias(q, q_pos.to(dtype), k_pos.to(dtype))
    assert got is not None and want is not None
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if name == "shaw":
        rows = enc.kv_rows(q_pos[:, :1].to(dtype), k_pos.to(dtype))
        torch.testing.assert_close(rows, enc.kv_rows(q_pos[:, :1], k_pos), rtol=0, atol=0)


def test_bool_positions_are_not_read_as_zero_and_one() -> None:
    """Widening stops at integers: bool positions still fail, as before, instead of meaning 0 and 1 (review s7)."""
    q, k = torch.tensor([[True, False]]).t(), torch.tensor([[False, True]])
    with pytest.raises((RuntimeError, TypeError)):
        distance(q, k)
    with pytest.raises((RuntimeError, TypeError)):
        relative_from_positions(q[:, 0], k[0], 2)
