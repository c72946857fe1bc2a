"""Shaw inside a DecodeSession lays its per-distance tables out once per session and layer (not at every step),
and the SESSION_TABLE_BYTES cap counts one table when there is no value table."""

from __future__ import annotations

import pytest
import torch

import posenc
import posenc.relative.shaw as shaw_mod
from posenc import ShawRelative
from posenc.models import TransformerLM


def test_generate_lays_the_tables_out_once_per_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = TransformerLM("shaw", dim=32, depth=2, heads=2).eval()
    tokens = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    calls: list[int] = []
    build = ShawRelative._by_distance

    def spy(self: ShawRelative, slots: int) -> object:
        calls.append(slots)
        return build(self, slots)

    monkeypatch.setattr(ShawRelative, "_by_distance", spy)
    model.generate(tokens, 12, temperature=0)
    assert len(calls) == 2  # one per layer for the whole loop of 11 decode steps


def test_a_session_reuses_its_tables_across_steps() -> None:
    torch.manual_seed(0)
    enc = ShawRelative(8, max_distance=3, heads=2)
    with torch.no_grad(), posenc.DecodeSession(16):
        rows = [enc._rows_in_session(torch.tensor([[p]]), torch.arange(p + 1)[None]) for p in range(16)]
    assert all(r is not None for r in rows)
    bases = {r[0].untyped_storage().data_ptr() for r in rows if r is not None}
    assert len(bases) == 1  # every step a slice of the same laid-out table


def test_the_cap_counts_one_table_without_values(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    enc = ShawRelative(8, max_distance=3, values=False)
    q_pos, k_pos = torch.tensor([[3]]), torch.arange(4)[None]
    one_table = 15 * 8 * 4  # 2 * 8 - 1 rows of 8 float32
    with torch.no_grad():
        monkeypatch.setattr(shaw_mod, "SESSION_TABLE_BYTES", one_table)
        with posenc.DecodeSession(8):
            assert enc._rows_in_session(q_pos, k_pos) is not None
        monkeypatch.setattr(shaw_mod, "SESSION_TABLE_BYTES", one_table - 1)
        with posenc.DecodeSession(8):
            assert enc._rows_in_session(q_pos, k_pos) is None
