"""Table lookups at explicit positions (the decode fast path) against the exact float64 computation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import posenc
from posenc.functional import tables as tables_mod
from posenc.functional.rotary import (
    apply_rope,
    apply_rope_full,
    apply_rope_pairs,
    apply_rope_reference,
    rope_cos_sin,
    rope_full_tables,
    rope_pair_tables,
)
from posenc.rotary import rope as rope_mod
from posenc.rotary.xpos import xpos_cos_sin

CACHE = 64
CASES = {
    "inside": torch.tensor([[0, 5, 63]]),
    "outside": torch.tensor([[64, 1000, 70000]]),
    "mixed": torch.tensor([[3, 64, 10**6]]),
    "per_row": torch.tensor([[0, 1, 2], [61, 62, 63], [63, 64, 65]]),
    "negative": torch.tensor([[-3, 0, 7]]),
    "one_position": torch.tensor([[7, 7, 7]]),
    "decode_step": torch.tensor([[63]]),
    "decode_step_outside": torch.tensor([[64]]),
}


@pytest.fixture(params=["host_check", "gather_select"])
def strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with the CPU host check and with the sync-free gather-and-select path."""
    if request.param == "gather_select":
        monkeypatch.setattr(tables_mod, "host_span", lambda positions: None)
        monkeypatch.setattr(rope_mod, "host_span", lambda positions: None)
    return str(request.param)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_lookup_equals_exact(strategy: str, case: str, interleaved: bool) -> None:
    torch.manual_seed(0)
    rope = posenc.RoPE(16, cache_len=CACHE, interleaved=interleaved)
    pos = CASES[case]
    b, n = pos.shape
    q, k = torch.randn(b, 4, n, 16), torch.randn(b, 2, n, 16)
    cos, sin = rope.cos_sin(n, pos, q.device)
    want = rope_cos_sin(pos, rope.inv_freq)
    torch.testing.assert_close(cos, want[0].unsqueeze(1), atol=0, rtol=0)  # the same float32 values
    torch.testing.assert_close(sin, want[1].unsqueeze(1), atol=0, rtol=0)
    q2, k2 = rope(q, k, pos)  # pair-matrix decode path (small, CPU)
    angles = (pos.double().unsqueeze(-1) * rope.inv_freq).unsqueeze(1)  # (B, 1, S, P) float64
    torch.testing.assert_close(q2, apply_rope_reference(q, angles, interleaved), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k2, apply_rope_reference(k, angles, interleaved), atol=1e-5, rtol=1e-5)
    assert torch.equal(q2, apply_rope(q, cos, sin, interleaved))  # bitwise: same products, same sums
    assert torch.equal(k2, apply_rope(k, cos, sin, interleaved))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("interleaved", [False, True])
def test_apply_rope_pairs_is_bitwise_apply_rope(interleaved: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 8).mul(torch.logspace(-3, 3, 8)).to(dtype)  # magnitudes far apart
    x[0, 0, 0] = 0.0  # signed zeros and exact cancellations stay as apply_rope gives them
    x[0, 0, 1] = -0.0  # (a sum over the pair started from +0.0: -0.0 came out +0.0)
    x[1, 1, 3, :4] = -0.0
    cos, sin = rope_cos_sin(torch.arange(5) * 37, posenc.functional.rope_inv_freq(8))
    m = rope_pair_tables(cos, sin, interleaved)  # (5, 2, 2, 4) or (5, 4, 2, 2)
    want = apply_rope(x, cos, sin, interleaved)
    got = apply_rope_pairs(x, m, interleaved)
    assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())
    assert torch.equal(
        apply_rope_pairs(x[:, :, 2:3], m[2], interleaved), want[:, :, 2:3]
    )  # one row, broadcast
    assert apply_rope_pairs(x, m, interleaved).dtype == dtype


@pytest.mark.parametrize("case", CASES)
def test_xpos_lookup_equals_exact(strategy: str, case: str) -> None:
    torch.manual_seed(0)
    xp = posenc.XPos(16, cache_len=CACHE)
    pos = CASES[case].clamp(max=30_000)  # xPos represents |position| <= 33,427 in float32
    b, n = pos.shape
    q, k = torch.randn(b, 4, n, 16), torch.randn(b, 4, n, 16)
    got_q, got_k = xp(q, k, pos)
    cq, sq, ck, sk = (t.unsqueeze(1) for t in xpos_cos_sin(pos, xp.inv_freq, xp.zeta, xp.scale_base))
    assert torch.equal(got_q, apply_rope(q, cq, sq)) and torch.equal(got_k, apply_rope(k, ck, sk))


@pytest.mark.parametrize("case", CASES)
def test_sinusoidal_lookup_equals_exact(strategy: str, case: str) -> None:
    enc = posenc.Sinusoidal(12, cache_len=CACHE)
    pos = CASES[case]
    x = torch.zeros(pos.shape[0], pos.shape[1], 12)
    want = posenc.functional.sinusoidal_table(pos.double(), 12, dtype=torch.float64)  # float64 formula
    torch.testing.assert_close(enc(x, pos), want.float(), atol=1e-7, rtol=0)


def test_rope_lookup_under_compile_does_not_recompile() -> None:
    """Compiled rotation at changing positions (inside and outside the table): exact, one graph."""
    rope = posenc.RoPE(16, cache_len=CACHE)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    torch._dynamo.reset()
    counts: list[int] = []

    def backend(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
        counts.append(1)
        return gm.forward

    fn = torch.compile(rope.rotate, backend=backend, fullgraph=True)
    for p in (3, 40, 63, 64, 5000):
        pos = torch.tensor([[p]])
        got = fn(q, k, pos)
        want = rope.rotate(q, k, pos)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert len(counts) == 1


@pytest.mark.parametrize("name", ["rope", "xpos"])
def test_decode_rows_follow_the_tables(name: str) -> None:
    """The per-row views a decode step reads are rebuilt with the tables (moves, meta construction) and start
    empty in copies and pickles; every decode call equals the reference at that position."""
    import copy
    import io

    torch.manual_seed(0)
    cls = posenc.RoPE if name == "rope" else posenc.XPos
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 1, 16)
    pos = torch.tensor([[9]])
    enc = cls(16, cache_len=CACHE)
    want = enc.rotate(q, k, pos)  # builds the row views
    with torch.device("meta"):
        on_meta = cls(16, cache_len=CACHE)
    on_meta.to_empty(device="cpu")  # garbage tables, then rebuilt by _apply
    buf = io.BytesIO()
    torch.save(enc, buf)
    buf.seek(0)
    moved = enc.double().float()
    assert moved._rows._state[0] is None  # cleared when the tables were rebuilt: no old table kept alive
    copies = [on_meta, copy.deepcopy(enc), torch.load(buf, weights_only=False), moved]
    for other in copies:
        got = other.rotate(q, k, pos)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert copy.deepcopy(enc)._rows.held() == 0  # a copy does not carry the views


@pytest.mark.parametrize("name", ["rope", "xpos"])
def test_decode_rows_follow_tables_swapped_in_by_functional_call(name: str) -> None:
    """The row views are rebuilt whenever another table object is passed, not only when none is held: a decode
    step after ``torch.func.functional_call`` with another module's buffers reads those buffers' rows and
    equals that module, and the next plain call reads the module's own rows again (views kept while a table
    was held gave the old module's rotation, review s5)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    cls = posenc.RoPE if name == "rope" else posenc.XPos
    a, b = cls(16, cache_len=CACHE), cls(16, base=500.0, cache_len=CACHE)
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 1, 16)
    pos = torch.tensor([9])
    own = a(q, k, pos)  # a decode step: a's views now hold a's rows
    want = b(q, k, pos)
    assert not torch.equal(own[0], want[0])
    got = functional_call(a, dict(b.named_buffers()), (q, k, pos))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    again = a(q, k, pos)
    assert torch.equal(again[0], own[0]) and torch.equal(again[1], own[1])


def test_row_views_follow_the_table_passed() -> None:
    """``RowViews`` gives row ``index`` of the table it is called with, whichever table it saw before (also
    nested: the row split along its first dimension), in any order of rows, across blocks and the table's last
    short block; it never holds more than ``ROW_BLOCKS_KEPT`` blocks."""
    rows = 3 * (1 << tables_mod.ROW_BLOCK_SHIFT) * tables_mod.ROW_BLOCKS_KEPT + 5
    first = torch.arange(rows * 4.0).view(rows, 2, 2)
    second = -first
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0)).tolist()
    cap = tables_mod.ROW_BLOCKS_KEPT << tables_mod.ROW_BLOCK_SHIFT
    for nested in (False, True):
        views = tables_mod.RowViews(nested)
        for table in (first, second, first):
            for i in [0, 1, 2, *order, rows - 1, 0]:
                row = views(table, i)
                assert torch.equal(torch.stack(row) if nested else row, table[i])
                assert views.held() <= cap
                if not nested:
                    assert row.data_ptr() == table[i].data_ptr()  # a view, no copy


@pytest.mark.parametrize("name", ["rope", "xpos"])
def test_decode_row_views_do_not_grow_with_the_table(name: str) -> None:
    """A decode step holds one block of row views whatever ``cache_len`` is (views of every row, built on the
    first step, took 152 MB at a RoPE cache_len of 65,536: review s6), and a decode loop a bounded number;
    every step is bitwise the rotation computed without a table."""
    torch.manual_seed(0)
    cls = posenc.RoPE if name == "rope" else posenc.XPos
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 1, 16)
    exact = cls(16, cache_len=0)
    block = 1 << tables_mod.ROW_BLOCK_SHIFT
    for cache_len in (CACHE, 8192):
        enc = cls(16, cache_len=cache_len)
        enc.rotate(q, k, torch.tensor([[7]]))
        assert enc._rows.held() == block  # the first step: one block, not cache_len views
    for p in [*range(300), 8191, 5, 4000, 299]:
        pos = torch.tensor([[p]])
        got, want = enc.rotate(q, k, pos), exact.rotate(q, k, pos)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert enc._rows.held() <= tables_mod.ROW_BLOCKS_KEPT * block


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 6),
    st.sampled_from([2, 4, 8, 16]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
)
def test_pair_and_full_rotations_are_bitwise_apply_rope_for_any_shape(
    b: int, h: int, s: int, d: int, interleaved: bool, per_row: bool, dtype: torch.dtype
) -> None:
    """Any batch, heads, length and head_dim; positions shared ``(S,)`` or per row ``(B, 1, S)``."""
    gen = torch.Generator().manual_seed(b * 1000 + h * 100 + s * 10 + d)
    x = torch.randn(b, h, s, d, generator=gen).to(dtype)
    pos = torch.randint(-50, 10**6, (b, 1, s) if per_row else (s,), generator=gen)
    cos, sin = rope_cos_sin(pos, posenc.functional.rope_inv_freq(d))
    want = apply_rope(x, cos, sin, interleaved)
    assert torch.equal(apply_rope_pairs(x, rope_pair_tables(cos, sin, interleaved), interleaved), want)
    assert torch.equal(apply_rope_full(x, *rope_full_tables(cos, sin, interleaved), interleaved), want)
