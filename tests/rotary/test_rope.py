"""posenc.RoPE as a module: defaults, positions, precision, dtype, devices, compile, and the transformers oracle."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import posenc
from posenc.functional import rope_inv_freq


def test_default_positions_equal_arange_and_per_batch_positions() -> None:
    rope = posenc.RoPE(16, rotary_dim=12)
    q, k = torch.randn(2, 4, 7, 16), torch.randn(2, 2, 7, 16)
    default = rope(q, k)
    for pos in (torch.arange(7), torch.arange(7).expand(2, 7)):
        for a, b in zip(rope(q, k, pos), default, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    shifted = torch.stack((torch.arange(7), torch.arange(100, 107)))  # (B, S): per-batch offsets
    q2, _ = rope(q, k, shifted)
    torch.testing.assert_close(q2[0], default[0][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(q2[1], rope(q[1:], k[1:], torch.arange(100, 107))[0][0], atol=1e-6, rtol=0)


@given(st.integers(0, 10**7), st.booleans())
def test_positions_far_past_any_cache(start: int, interleaved: bool) -> None:
    torch.manual_seed(0)  # hypothesis replays examples: keep tensors reproducible
    rope = posenc.RoPE(8, interleaved=interleaved, cache_len=4)
    x = torch.randn(1, 1, 3, 8, dtype=torch.float64)
    pos = torch.arange(start, start + 3)
    y, _ = rope(x, x, pos)
    angles = pos.double()[:, None] * rope_inv_freq(8, dtype=torch.float64)
    expected = posenc.functional.apply_rope_reference(x, angles, interleaved)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)


def test_longer_than_cache_without_positions() -> None:
    rope = posenc.RoPE(8, cache_len=4)
    x = torch.randn(1, 1, 10, 8)
    a, _ = rope(x, x)
    b, _ = rope(x, x, torch.arange(10))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("head_dim,partial", [(16, 1.0), (32, 0.5), (64, 1.0)])
def test_half_layout_equals_transformers_llama(head_dim: int, partial: float) -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    heads = 2
    rotary_dim = int(head_dim * partial)
    # transformers' Llama rotates its whole head_dim; a partial rotary is the same rotation on a head of rotary_dim
    cfg = LlamaConfig(
        hidden_size=rotary_dim * heads, num_attention_heads=heads, head_dim=rotary_dim, rope_theta=5e5
    )
    hf = LlamaRotaryEmbedding(cfg)
    ours = posenc.RoPE(head_dim, base=5e5, rotary_dim=rotary_dim)
    q, k = torch.randn(2, heads, 9, head_dim), torch.randn(2, heads, 9, head_dim)
    pos = torch.arange(9)[None].expand(2, 9) + 40
    cos, sin = hf(q, pos)
    if rotary_dim < head_dim:
        q_hf = apply_rotary_pos_emb(q[..., :rotary_dim], k[..., :rotary_dim], cos, sin)
        expected = tuple(torch.cat((r, x[..., rotary_dim:]), -1) for r, x in zip(q_hf, (q, k), strict=True))
    else:
        expected = apply_rotary_pos_emb(q, k, cos, sin)
    for a, b in zip(ours(q, k, pos), expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_to_bfloat16_keeps_frequencies_exact() -> None:
    rope = posenc.RoPE(64, base=10000.0)
    before = (rope.inv_freq.clone(), rope.cos_cached.clone())
    rope = rope.to(torch.bfloat16)
    assert rope.inv_freq.dtype == torch.float64 and rope.cos_cached.dtype == torch.float32
    assert torch.equal(rope.inv_freq, before[0]) and torch.equal(rope.cos_cached, before[1])
    q = torch.randn(1, 2, 5, 64, dtype=torch.bfloat16)
    y, _ = rope(q, q)
    assert y.dtype == torch.bfloat16
    ref, _ = posenc.RoPE(64)(q.float(), q.float())
    assert torch.equal(y, ref.to(torch.bfloat16))


def test_meta_device_then_materialize() -> None:
    with torch.device("meta"):
        attn = posenc.Attention(32, 4, position=posenc.RoPE(8))
    assert attn.q_proj.weight.is_meta
    attn = attn.to_empty(device="cpu")
    fresh = posenc.RoPE(8)
    assert torch.equal(attn.position.cos_cached, fresh.cos_cached)  # type: ignore[union-attr]


def test_buffers_are_not_persistent() -> None:
    assert posenc.RoPE(8).state_dict() == {}


@pytest.mark.parametrize("bad", [7, 0, -2, 18])
def test_bad_rotary_dim(bad: int) -> None:
    with pytest.raises(ValueError, match="rotary_dim"):
        posenc.RoPE(16, rotary_dim=bad)


def test_rotary_dim_errors_name_what_the_caller_passed() -> None:
    """An odd head_dim without rotary_dim names head_dim and the way out (the error named rotary_dim=15, an
    argument never passed); a bool or float rotary_dim is a TypeError (True was 'got True', a ValueError)."""
    with pytest.raises(ValueError, match=r"head_dim=15 is odd .* pass an even rotary_dim <= 15"):
        posenc.RoPE(15)
    assert posenc.RoPE(15, rotary_dim=8).rotary_dim == 8
    with pytest.raises(TypeError, match="rotary_dim must be an integer, got the bool True"):
        posenc.RoPE(16, rotary_dim=True)
    with pytest.raises(TypeError, match=r"rotary_dim must be an integer, got 8.0"):
        posenc.RoPE(16, rotary_dim=8.0)  # type: ignore[arg-type]


def test_wrong_head_dim_raises() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        posenc.RoPE(16)(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8))


def test_compiled_attention_with_rope_has_no_graph_breaks() -> None:
    attn = posenc.Attention(32, 4, kv_heads=2, position=posenc.RoPE(8)).eval()
    x = torch.randn(2, 6, 32)
    compiled = torch.compile(attn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), attn(x))


def test_each_small_cpu_call_takes_its_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """One position (a decode step) rotates with the pair matrices; more positions in eager mode with
    full-width rows (the pair form's sum is a reduction kernel there: about twice the time forward and
    backward at a training shape). Both bitwise equal to apply_rope (tests/functional/test_tables.py)."""
    from posenc.rotary import rope as rope_mod

    calls: list[str] = []
    real_pairs, real_full = rope_mod.pair_matvec, rope_mod.apply_rope_full
    monkeypatch.setattr(rope_mod, "pair_matvec", lambda *a: calls.append("pairs") or real_pairs(*a))
    monkeypatch.setattr(rope_mod, "apply_rope_full", lambda *a: calls.append("full") or real_full(*a))
    rope = posenc.RoPE(16)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    rope(q, k, torch.tensor([[7]]))
    assert calls == ["pairs", "pairs"]
    calls.clear()
    rope(torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16))
    assert calls == ["full", "full"]  # q and k each on its own (tensors of their own, no slower than one cat)


@pytest.mark.parametrize(("interleaved", "per_row"), [(False, False), (True, True)])
def test_inductor_rotates_in_a_vectorizable_form_equal_to_eager(interleaved: bool, per_row: bool) -> None:
    """Under ``torch.compile`` RoPE rotates in the forms inductor's CPU backend vectorizes (the reference's
    halves; full-width rows interleaved), not the pair form (scalar loops there): the same values and
    gradients as eager, with positions implicit or per row."""
    from posenc.rotary import rope as rope_mod

    rope = posenc.RoPE(16, interleaved=interleaved)
    q0, k0 = torch.randn(2, 4, 12, 16), torch.randn(2, 2, 12, 16)
    pos = torch.arange(12).expand(2, -1) + torch.tensor([[0], [5]]) if per_row else None
    traced: list[bool] = []
    real = rope_mod._rotate_traced
    compiled = torch.compile(rope, fullgraph=True)

    def spy(*args: Any) -> Any:
        traced.append(True)
        return real(*args)

    grads = []
    for fn in (rope, compiled):
        q, k = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rope_mod, "_rotate_traced", spy)
            rq, rk = fn(q, k, pos)
        (rq.square().sum() + rk.sum()).backward()
        grads.append((rq.detach(), rk.detach(), q.grad, k.grad))
    assert traced == [True]  # the compiled call only
    for eager, comp in zip(*grads, strict=True):
        torch.testing.assert_close(comp, eager, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("encoding", ["rope", "rope_interleaved", "xpos"])
@pytest.mark.parametrize("position", [0, 5, 63])
def test_decode_step_shortcut_is_bitwise_the_general_path(
    encoding: str, position: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An eager CPU decode step skips the step-by-step checks (``decode_position``): the same values, bitwise,
    as the general path that makes them; outside the table the shortcut declines."""
    from posenc.rotary import rope as rope_mod
    from posenc.rotary import xpos as xpos_mod

    enc: posenc.PositionEncoding = (
        posenc.XPos(16, cache_len=64)
        if encoding == "xpos"
        else posenc.RoPE(16, interleaved=encoding == "rope_interleaved", cache_len=64)
    )
    q, k = torch.randn(3, 4, 1, 16), torch.randn(3, 2, 1, 16)
    pos = torch.tensor([[position]])
    fast = enc.rotate(q, k, pos)
    for mod in (rope_mod, xpos_mod):
        monkeypatch.setattr(mod, "decode_position", lambda *a: None)
    slow = enc.rotate(q, k, pos)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_decode_position_declines_what_the_general_path_must_check() -> None:
    from posenc.functional.tables import decode_position

    table = torch.zeros(8, 2, 2, 4)
    q, k, p = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8), torch.tensor([[3]])
    assert decode_position(q, k, p, table, 8) == 3
    declined = {
        "bf16 q": (q.bfloat16(), k, p, 8),
        "two positions": (q, k, torch.tensor([[3, 4]]), 8),
        "bool position": (q, k, torch.tensor([[True]]), 8),
        "float position": (q, k, torch.tensor([[3.0]]), 8),
        "past the table": (q, k, torch.tensor([[8]]), 8),
        "negative": (q, k, torch.tensor([[-1]]), 8),
        "two queries": (torch.randn(1, 2, 2, 8), k, p, 8),
        "other head_dim": (q, k, p, 4),
        "no positions": (q, k, None, 8),
        "3-d positions": (q, k, torch.tensor([[[3]]]), 8),
        "0-d position": (q, k, torch.tensor(3), 8),
    }
    for label, (qq, kk, pp, d) in declined.items():
        assert decode_position(qq, kk, pp, table, d) is None, label
    with pytest.raises(TypeError, match="integer"):
        posenc.RoPE(8)(q, k, torch.tensor([[True]]))  # declined, then refused by the general path
    with pytest.raises(ValueError, match="positions"):
        posenc.RoPE(8)(q, k, torch.tensor(3))


@pytest.mark.parametrize("cache_len", [6, 2048])
@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.uint16, torch.uint32]
)
def test_every_integer_position_dtype_means_the_same_positions(cache_len: int, dtype: torch.dtype) -> None:
    """A uint8 index is a boolean mask to torch: uint8 positions once read the table as a mask (a silently wrong
    rotation at cache_len 6, an IndexError at 2048); int16 and unsigned ones were refused by indexing or
    ``aminmax``. RoPE and xPos now read every integer dtype as the positions it holds."""
    q, k = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8)
    positions = torch.tensor([5, 4, 3, 2, 1, 1])
    for enc in (posenc.RoPE(8, cache_len=cache_len), posenc.build("xpos", head_dim=8, cache_len=cache_len)):
        want = enc.rotate(q, k, positions)
        got = enc.rotate(q, k, positions.to(dtype))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


_Q = torch.randn(2, 4, 5, 16)  # (B, H, S, D)

#: (id, (q, k, positions), words of the message); were torch's broadcast errors, or results of another shape
ROTATE_SHAPE_CASES = [
    ("3-d q", (_Q[0], _Q, None), ["q must be (batch, heads, seq, head_dim)", "(4, 5, 16)"]),
    ("3-d k", (_Q, _Q[0], torch.arange(5)), ["k must be (batch, heads, seq, head_dim)", "(4, 5, 16)"]),
    ("2-d q, k, (1, S) positions", (_Q[0, 0], _Q[0, 0], torch.arange(5)[None]), ["q must be", "(5, 16)"]),
    ("q and k of other lengths", (_Q, _Q[:, :, :4], None), ["same number of tokens", "(2, 4, 4, 16)"]),
    # a one-token decode step with two keys: both keys were rotated to the query's position
    (
        "one query, two keys",
        (_Q[:1, :, :1], _Q[:1, :, :2], torch.tensor([3])),
        ["same number", "(1, 4, 2, 16)"],
    ),
    # a k of batch 1 came back with batch 2
    ("per-row positions, k of batch 1", (_Q, _Q[:1], torch.arange(10).view(2, 5)), ["k batch 1", "(1, seq)"]),
    ("positions of another length", (_Q, _Q, torch.arange(4)), ["positions must be", "seq=5", "(4,)"]),
]


@pytest.mark.parametrize("encoding", ["rope", "xpos", "rope reference", "rope partial"])
@pytest.mark.parametrize(
    ("args", "words"), [c[1:] for c in ROTATE_SHAPE_CASES], ids=[c[0] for c in ROTATE_SHAPE_CASES]
)
def test_rotate_names_the_shape_it_expected(
    encoding: str, args: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], words: list[str]
) -> None:
    enc = {
        "rope": lambda: posenc.RoPE(16),
        "xpos": lambda: posenc.XPos(16),
        "rope reference": lambda: posenc.RoPE(16, impl="reference"),
        "rope partial": lambda: posenc.RoPE(16, rotary_dim=8),
    }[encoding]()
    with pytest.raises(ValueError) as info:
        enc.rotate(*args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_rotate_shape_checks_trace_without_breaks() -> None:
    """The checks read shapes only: a fullgraph trace of a decode step and of a prefill still compiles."""
    for enc in (posenc.RoPE(16), posenc.XPos(16)):
        compiled = torch.compile(enc.rotate, fullgraph=True, backend="eager")
        for q, pos in ((_Q, None), (_Q[:, :, :1], torch.tensor([[3], [4]]))):
            for got, want in zip(compiled(q, q, pos), enc.rotate(q, q, pos), strict=True):
                torch.testing.assert_close(got, want)


def test_cos_sin_checks_what_rotate_checks() -> None:
    """``cos_sin`` is public (and behind the Hugging Face adapter): it returned 2047 rows for seq_len -1, 3 rows
    for seq_len 5 with 3 positions, position 1 for bool positions, and took positions past 2**31."""
    rope = posenc.RoPE(8)
    with pytest.raises(ValueError, match=r"RoPE.cos_sin: seq_len must be an integer >= 0, got -1"):
        rope.cos_sin(-1, None, torch.device("cpu"))
    with pytest.raises(
        ValueError, match=r"positions must be \(seq,\) or \(batch, seq\) with seq=5, got \(3,\)"
    ):
        rope.cos_sin(5, torch.arange(3), torch.device("cpu"))
    with pytest.raises(TypeError, match="positions must be an integer tensor, got torch.bool"):
        rope.cos_sin(1, torch.tensor([True]), torch.device("cpu"))
    with pytest.raises(ValueError, match="position 1099511627776 is too far from 0"):
        rope.cos_sin(1, torch.tensor([2**40]), torch.device("cpu"))
    cos, _ = rope.cos_sin(3, torch.arange(3)[None], "cpu")
    assert cos.shape == (1, 1, 3, 4)


def test_meta_positions_or_inputs_against_real_tables_are_refused() -> None:
    """Meta positions with CPU q/k raised "Cannot copy out of meta tensor", meta q on a CPU RoPE torch's "not on
    the expected device meta" (fuzz #10); a module on meta with meta inputs still works (shapes only)."""
    q = torch.randn(1, 1, 5, 16)
    rope = posenc.RoPE(16)
    with pytest.raises(ValueError, match="RoPE: positions are on the meta device"):
        rope(q, q, torch.arange(5, device="meta"))
    with pytest.raises(ValueError, match="RoPE: q is on meta but the module's tables are on a real device"):
        rope(q.to("meta"), q.to("meta"))
    with torch.device("meta"):
        on_meta = posenc.RoPE(16)
    out, _ = on_meta(q.to("meta"), q.to("meta"), torch.arange(5, device="meta"))
    assert out.is_meta and out.shape == q.shape


def test_bias_checks_its_sizes() -> None:
    """RoPE(4).bias(-1, 4) raised torch's arange error; the base class now checks as BiasEncoding does
    (fuzz #13)."""
    for enc in (posenc.RoPE(4), posenc.NoPE()):
        with pytest.raises(ValueError, match=r"\.bias: q_len must be an integer >= 0, got -1"):
            enc.bias(-1, 4)
        with pytest.raises(TypeError, match=r"\.bias: q_len must be an integer, got 2.5"):
            enc.bias(2.5, 4)  # type: ignore[arg-type]
        assert enc.bias(3, 4).shape == (1, 3, 4)
