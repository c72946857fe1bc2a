"""RowViews never serves a row of a table it was not called with: blocks of views built for one table are
dropped when another table is passed, whatever blocks that other table is read at next."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc.functional import tables as tables_mod


def test_blocks_of_the_previous_table_are_not_served_for_a_new_one() -> None:
    block = 1 << tables_mod.ROW_BLOCK_SHIFT
    first = torch.arange(8 * block * 2.0).view(8 * block, 2)
    second = -first
    for nested in (False, True):
        views = tables_mod.RowViews(nested)
        for table, other in ((first, second), (second, first), (first, second)):
            for i in range(
                0, 8 * block, 7
            ):  # every block of `other` read (its last blocks held), then `table`
                views(other, i)  # at a fresh block and at those last blocks
            for i in (0, 8 * block - 1, 7 * block - 1, 6 * block - 1, *range(block + 3, 8 * block, block)):
                row = views(table, i)
                assert torch.equal(torch.stack(row) if nested else row, table[i]), (nested, i)


@pytest.mark.parametrize("name", ["rope", "xpos"])
def test_a_step_with_swapped_in_tables_reads_them_in_every_block(name: str) -> None:
    """A decode step in block 1 on the module's own tables, then steps with another module's buffers passed
    through ``functional_call`` in block 0 and block 1: each equals that other module's own step."""
    from torch.func import functional_call

    torch.manual_seed(0)
    cls = posenc.RoPE if name == "rope" else posenc.XPos
    a, b = cls(16, cache_len=128), cls(16, base=500.0, cache_len=128)
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 1, 16)
    late = torch.tensor([40])  # block 1 (rows 32..63)
    a(q, k, late)
    buffers = dict(b.named_buffers())
    for pos in (torch.tensor([3]), late):
        got = functional_call(a, buffers, (q, k, pos))
        want = b(q, k, pos)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), int(pos)
