"""Relative-distance indices."""

from __future__ import annotations

import pytest
import torch

from posenc.functional import relative_positions


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
