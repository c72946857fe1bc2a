"""Shaw's decode rows inside a DecodeSession: slices of per-distance tables, bitwise the gather's rows."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import posenc
import posenc.models.generate as generate_mod
from posenc import ShawRelative
from posenc.models import TransformerLM


def _shaw(heads: int | None = None, values: bool = True, max_distance: int = 3) -> ShawRelative:
    torch.manual_seed(0)
    return ShawRelative(8, max_distance=max_distance, heads=heads, values=values)


def _rows(enc: ShawRelative, q_pos: torch.Tensor, k_pos: torch.Tensor) -> list[torch.Tensor | None]:
    return list(enc.kv_rows(q_pos, k_pos))


def _same(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(a, b, strict=True)
    )


@settings(max_examples=60, deadline=None)
@given(
    slots=st.integers(1, 40),
    data=st.data(),
    heads=st.sampled_from([None, 2]),
    values=st.booleans(),
    max_distance=st.integers(0, 6),
)
def test_session_rows_are_the_gathers_rows(
    slots: int, data: st.DataObject, heads: int | None, values: bool, max_distance: int
) -> None:
    p = data.draw(st.integers(0, slots - 1))
    keys = data.draw(st.integers(1, slots))
    enc = _shaw(heads, values, max_distance)
    q_pos, k_pos = torch.tensor([[p]]), torch.arange(keys)[None]
    with torch.no_grad():
        want = _rows(enc, q_pos, k_pos)
        with posenc.DecodeSession(slots):
            assert enc._rows_in_session(q_pos, k_pos) is not None  # the slices, not the gather
            got = _rows(enc, q_pos, k_pos)
    assert got[0] is not None and got[0].shape == (1, heads or 1, keys, 8)
    assert _same(got, want) and (got[1] is None) == (not values)


@pytest.mark.parametrize(
    ("q_pos", "k_pos", "why"),
    [
        (torch.tensor([[5], [4]]), torch.arange(6).expand(2, -1), "per-row positions"),
        (torch.tensor([[5]]), torch.tensor([[0, 1, 2, 4, 5, 6]]), "keys not at 0 .. K-1"),
        (torch.tensor([[5]], dtype=torch.int32), torch.arange(6, dtype=torch.int32)[None], "int32 positions"),
        (torch.tensor([[9]]), torch.arange(6)[None], "a query past the slots"),
        (torch.tensor([[5.0]]), torch.arange(6.0)[None], "float positions"),
    ],
)
def test_other_steps_take_the_gather(q_pos: torch.Tensor, k_pos: torch.Tensor, why: str) -> None:
    enc = _shaw(heads=2)
    with torch.no_grad():
        want = _rows(enc, q_pos, k_pos) if not q_pos.is_floating_point() else None
        with posenc.DecodeSession(8):
            assert enc._rows_in_session(q_pos, k_pos) is None, why
            if want is not None:
                assert _same(_rows(enc, q_pos, k_pos), want)


def test_no_session_rows_while_recording_gradients_or_outside_a_session() -> None:
    enc = _shaw()
    q_pos, k_pos = torch.tensor([[3]]), torch.arange(4)[None]
    with posenc.DecodeSession(8):
        assert enc._rows_in_session(q_pos, k_pos) is None  # grad mode on
        rows, _ = enc.kv_rows(q_pos, k_pos)
    assert rows is not None and rows.requires_grad
    with torch.no_grad():
        assert enc._rows_in_session(q_pos, k_pos) is None  # no session


def test_a_table_changed_between_sessions_is_seen() -> None:
    enc = _shaw()
    q_pos, k_pos = torch.tensor([[3]]), torch.arange(4)[None]
    with torch.no_grad():
        with posenc.DecodeSession(8):
            first = _rows(enc, q_pos, k_pos)
        enc.key_table.data.mul_(2.0)  # no version bump: the session's tables are rebuilt, never keyed on it
        with posenc.DecodeSession(8):
            second = _rows(enc, q_pos, k_pos)
    assert first[0] is not None and second[0] is not None
    assert torch.equal(second[0], 2 * first[0]) and _same(second[1:], first[1:])


@pytest.mark.parametrize("options", [{}, {"per_head": True}, {"values": False}])
def test_generate_gives_the_same_tokens_without_the_session(
    options: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = TransformerLM("shaw", dim=32, depth=2, heads=2, position_options=options).eval()
    for enc in model.layer_encodings():  # tables away from their start, so every distance differs
        with torch.no_grad():
            for p in enc.parameters():
                p.add_(torch.randn_like(p))
    tokens = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    with_session = model.generate(tokens, 10, temperature=0)
    monkeypatch.setattr(generate_mod, "DecodeSession", lambda slots: contextlib.nullcontext())
    assert torch.equal(model.generate(tokens, 10, temperature=0), with_session)


def test_a_session_too_long_for_the_tables_takes_the_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    import posenc.relative.shaw as shaw_mod

    enc = _shaw()
    q_pos, k_pos = torch.tensor([[3]]), torch.arange(4)[None]
    monkeypatch.setattr(shaw_mod, "SESSION_TABLE_BYTES", 2 * 15 * 8 * 4 - 1)  # just under 2 tables of 15 rows
    with torch.no_grad():
        want = _rows(enc, q_pos, k_pos)
        with posenc.DecodeSession(8):  # 2 * 8 - 1 = 15 rows per table
            assert enc._rows_in_session(q_pos, k_pos) is None
            assert _same(_rows(enc, q_pos, k_pos), want)
        monkeypatch.setattr(shaw_mod, "SESSION_TABLE_BYTES", 2 * 15 * 8 * 4)
        with posenc.DecodeSession(8):
            assert enc._rows_in_session(q_pos, k_pos) is not None


def test_a_jit_trace_does_not_keep_one_steps_rows() -> None:
    enc = _shaw()

    class Rows(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = enc  # (its tables are the traced module's parameters)

        def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
            rows, _ = self.enc.kv_rows(q_pos, k_pos)
            assert rows is not None
            return rows

    with torch.no_grad(), posenc.DecodeSession(8):
        traced = torch.jit.trace(Rows(), (torch.tensor([[3]]), torch.arange(4)[None]))
        for p in (3, 5):
            got = traced(torch.tensor([[p]]), torch.arange(4)[None])
            assert torch.equal(got, enc.kv_rows(torch.tensor([[p]]), torch.arange(4)[None])[0])
