"""Relative-distance indices."""

from __future__ import annotations

import pytest
import torch

from posenc.functional import relative_from_positions, relative_positions
from posenc.functional.relative import shaw_key_bias


def test_seed_index_matrix_is_reproduced() -> None:
    expected = torch.tensor(
        [[2, 3, 4, 4, 4], [1, 2, 3, 4, 4], [0, 1, 2, 3, 4], [0, 0, 1, 2, 3], [0, 0, 0, 1, 2]]
    )  # printed in the seed document for seq_len=5, max distance 2
    assert torch.equal(relative_positions(5, 5, max_distance=2) + 2, expected)


def test_offset_and_unclipped() -> None:
    rel = relative_positions(2, 6, offset=4)
    assert torch.equal(rel, torch.arange(6)[None] - torch.tensor([[4], [5]]))


def test_a_fractional_max_distance_is_refused() -> None:
    """relative_positions(3, 3, max_distance=1.5) clipped to +-1.5 and returned it silently."""
    with pytest.raises(TypeError, match="max_distance must be an integer, got 1.5"):
        relative_positions(3, 3, max_distance=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_distance must be an integer >= 0, got -1"):
        relative_positions(3, 3, max_distance=-1)


def test_clipping_leaves_the_positions_alone_and_keeps_gradients() -> None:
    """The clip runs in place on the new difference tensor, never on the caller's positions, and out of place
    where autograd records it (float positions that need a gradient)."""
    q_pos, k_pos = torch.arange(6).unsqueeze(0), torch.arange(6).unsqueeze(0)
    before = (q_pos.clone(), k_pos.clone())
    rel = relative_from_positions(q_pos, k_pos, 2)
    assert torch.equal(rel, (k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)).clamp(-2, 2))
    assert torch.equal(q_pos, before[0]) and torch.equal(k_pos, before[1])
    qf = torch.arange(4, dtype=torch.float64, requires_grad=True)
    kf = torch.arange(4, dtype=torch.float64, requires_grad=True)
    (relative_from_positions(qf, kf, 1) * torch.arange(16.0, dtype=torch.float64).view(4, 4)).sum().backward()
    assert qf.grad is not None and kf.grad is not None
    inside = (
        (kf.detach().unsqueeze(-2) - qf.detach().unsqueeze(-1)).abs() <= 1
    ).double()  # |j - i| <= 1: a gradient
    weights = torch.arange(16.0, dtype=torch.float64).view(4, 4) * inside
    assert torch.equal(kf.grad, weights.sum(0)) and torch.equal(qf.grad, -weights.sum(1))


def test_shaw_key_bias_scales_before_the_gather_bitwise() -> None:
    """Scaling the (Q, 2k+1) products before the gather gives exactly the scaled (Q, K) bias."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(2, 3, 7, 8, dtype=dtype)
        table = torch.randn(1, 5, 8)
        idx = relative_positions(7, 9, max_distance=2, offset=2) + 2
        scaled = shaw_key_bias(q, table, idx, 8**-0.5)
        assert scaled.dtype == torch.float32  # (float32 or better, as attention's logits)
        assert torch.equal(scaled, shaw_key_bias(q, table, idx) * 8**-0.5)
