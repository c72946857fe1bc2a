"""FIRE's session table is capped counting the MLP's hidden row of ``width`` beside the table's row of ``heads``
(the build's largest tensor): past the cap its steps take the per-pair path, the same values as outside."""

from __future__ import annotations

import pytest
import torch

import posenc
import posenc.bias.base as base_mod


@pytest.mark.parametrize("width", [8, 32, 64])
def test_fire_session_table_cap_counts_the_hidden_layer(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    enc = posenc.build("fire", heads=4, width=width, init_threshold=40.0)
    slots = 24
    q_pos, k_pos = torch.tensor([[slots - 1]]), torch.arange(slots)[None]
    table = (2 * slots - 1) * 4 * (4 + width)  # float32 rows of heads + width per distance
    with torch.no_grad():
        outside = enc.pairwise(q_pos, k_pos)
        monkeypatch.setattr(base_mod, "SESSION_TABLE_BYTES", table - 1)
        with posenc.DecodeSession(slots):
            assert enc.pairwise_in_session(q_pos, k_pos) is None
            assert torch.equal(enc.pairwise(q_pos, k_pos), outside)
        monkeypatch.setattr(base_mod, "SESSION_TABLE_BYTES", table)
        with posenc.DecodeSession(slots):
            assert enc.pairwise_in_session(q_pos, k_pos) is not None


def test_the_documented_fire_limit_at_the_real_cap() -> None:
    """``SESSION_TABLE_BYTES``'s comment: FIRE of width 32 and 4 heads has a table up to 116,508 slots."""
    enc = posenc.build("fire", heads=4, width=32)
    assert (2 * 116_508 - 1) * enc.session_bytes_per_distance() <= base_mod.SESSION_TABLE_BYTES
    assert (2 * 116_509 - 1) * enc.session_bytes_per_distance() > base_mod.SESSION_TABLE_BYTES
