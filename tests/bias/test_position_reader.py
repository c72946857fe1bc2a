"""How score_mods read positions: consecutive positions by index arithmetic, anything else by gather."""

from __future__ import annotations

import torch

from posenc.bias.base import arange_start, position_reader


def test_consecutive_positions_are_read_without_a_gather() -> None:
    for start in (0, 7):
        pos = torch.arange(start, start + 5)[None]  # (1, S)
        assert arange_start(pos[0]) is not None
        idx = torch.tensor([0, 3, 4], dtype=torch.int32)
        assert torch.equal(position_reader(pos)(torch.tensor(0), idx).long(), pos[0, idx.long()])


def test_other_positions_are_gathered() -> None:
    gappy = torch.tensor([[0, 1, 5, 6]])
    assert arange_start(gappy[0]) is None
    per_batch = torch.tensor([[0, 1, 2], [10, 11, 12]])
    idx = torch.tensor([2])
    assert position_reader(per_batch)(torch.tensor(1), idx).item() == 12
    assert position_reader(gappy)(torch.tensor(0), idx).item() == 5


def test_a_runs_endpoints_with_other_steps_are_gathered() -> None:
    """``[0, 1, 1, 3]`` starts and ends as ``0 + arange(4)`` but is no run: ``arange_start`` refuses it and the
    reader gathers (an endpoint check read ``idx + start``: position 2 for index 2, not 1, review s5)."""
    for row in ([0, 1, 1, 3], [2, 4, 3, 5]):
        pos = torch.tensor([row])
        assert arange_start(pos[0]) is None
        idx = torch.arange(4)
        assert torch.equal(position_reader(pos)(torch.tensor(0), idx), pos[0])
