"""xPos: equals the reference implementation, relative (shift-invariant) logits, decay, KV cache, range limit."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import posenc
from posenc.functional import apply_rope_reference, rope_inv_freq
from posenc.rotary.xpos import XPOS_HEADROOM, xpos_zeta


def reference_xpos(
    x: torch.Tensor, positions: torch.Tensor, scale_base: float, gamma: float, key: bool
) -> torch.Tensor:
    """The definition in float64: rotate pair i by p*theta_i, scale by zeta_i^(+-p/scale_base) (interleaved)."""
    d = x.shape[-1]
    zeta = (torch.arange(0, d, 2, dtype=torch.float64) + gamma * d) / ((1 + gamma) * d)
    p = positions.double()[:, None]
    scale = zeta ** ((-p if key else p) / scale_base)  # (S, P)
    rotated = apply_rope_reference(x.double(), p * rope_inv_freq(d), interleaved=True)
    return rotated * scale.repeat_interleave(2, dim=-1)


def test_matches_rotary_embedding_torch_xpos() -> None:
    ret = pytest.importorskip("rotary_embedding_torch")
    theirs = ret.RotaryEmbedding(16, use_xpos=True, xpos_scale_base=64)
    q, k = torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16)
    tq, tk = theirs.rotate_queries_and_keys(q, k)
    ours = posenc.XPos(16, scale_base=64, interleaved=True, center=12 // 2)  # they centre on len // 2
    oq, ok = ours(q, k)
    torch.testing.assert_close(oq, tq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ok, tk, atol=1e-5, rtol=1e-5)
    # the centre cancels in the logits: posenc's fixed centre 0 gives the same attention scores
    zq, zk = posenc.XPos(16, scale_base=64, interleaved=True)(q, k)
    torch.testing.assert_close(zq @ zk.transpose(-1, -2), tq @ tk.transpose(-1, -2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("interleaved", [False, True])
def test_matches_float64_definition(interleaved: bool) -> None:
    x = posenc.XPos(8, scale_base=32.0, gamma=0.4, interleaved=interleaved)
    q, k = torch.randn(2, 3, 9, 8, dtype=torch.float64), torch.randn(2, 3, 9, 8, dtype=torch.float64)
    pos = torch.arange(20, 29)
    perm = posenc.functional.interleaved_permutation(8)  # half layout = interleaved[perm]
    inv = torch.argsort(perm)
    to_inter = (lambda t: t) if interleaved else (lambda t: t[..., inv])
    oq, ok = x(q, k, pos)
    torch.testing.assert_close(
        to_inter(oq), reference_xpos(to_inter(q), pos, 32.0, 0.4, key=False), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(
        to_inter(ok), reference_xpos(to_inter(k), pos, 32.0, 0.4, key=True), atol=1e-6, rtol=1e-6
    )


@given(st.integers(0, 20000), st.integers(0, 64))
def test_logits_depend_only_on_distance_and_decay(shift: int, dist: int) -> None:
    x = posenc.XPos(8, scale_base=512.0)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def logit(n: int, m: int) -> float:
        rq, _ = x(q, q, torch.tensor([n]))
        _, rk = x(k, k, torch.tensor([m]))
        return (rq * rk).sum().item()

    a, b = logit(dist, 0), logit(shift + dist, shift)
    assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    # q = k = e_0 (pair 0 = dims 0 and 4): the logit is zeta_0^(dist/scale_base) cos(dist * theta_0)
    e = torch.zeros(1, 1, 1, 8, dtype=torch.float64)
    e[..., 0] = 1.0
    rq, _ = x(e, e, torch.tensor([shift + dist]))
    _, rk = x(e, e, torch.tensor([shift]))
    zeta0 = xpos_zeta(8, 0.4)[0].item()
    assert math.isclose(
        (rq * rk).sum().item(), zeta0 ** (dist / 512.0) * math.cos(dist), rel_tol=1e-5, abs_tol=1e-6
    )


def test_kv_cache_equals_full_forward_far_from_zero() -> None:
    enc = posenc.XPos(8, scale_base=64.0, center=3000)
    attn = posenc.Attention(32, 4, kv_heads=2, position=enc).eval()
    x = torch.randn(2, 10, 32)
    pos = torch.arange(3000, 3010)
    with torch.no_grad():
        full = attn(x, positions=pos)
        cache = posenc.KVCache()
        steps = torch.cat(
            [attn(x[:, i : i + 1], positions=pos[i : i + 1], cache=cache) for i in range(10)], dim=1
        )
    assert (steps - full).abs().max().item() <= 1e-5


def test_range_limit_is_documented_and_enforced() -> None:
    x = posenc.XPos(8)
    limit = x.max_offset(torch.float32)
    zeta0 = 0.4 / 1.4
    assert zeta0 ** (limit / 512) >= torch.finfo(torch.float32).tiny
    assert zeta0 ** (-limit / 512) <= torch.finfo(torch.float32).max
    assert x.max_offset(torch.float16) < 4000 < limit
    q = torch.randn(1, 1, 2, 8)
    rq, rk = x(q, q, torch.tensor([limit - 1, limit]))
    assert torch.isfinite(rq).all() and torch.isfinite(rk).all()
    for dtype in (
        torch.float32,
        torch.bfloat16,
        torch.float16,
    ):  # entries up to the headroom stay finite, normal
        edge = x.max_offset(dtype)
        big = torch.full((1, 1, 2, 8), XPOS_HEADROOM / math.sqrt(2), dtype=dtype)  # pairs of norm 256
        _, rk = x(big, big, torch.tensor([edge - 1, edge]))
        assert torch.isfinite(rk).all(), dtype
        _, rk = x(16 * big, 16 * big, torch.tensor([edge - 1, edge]))
        assert not torch.isfinite(rk).all(), dtype  # (the headroom is what the limit leaves, no more)
    for dtype in (torch.float32, torch.float64):  # the float32 tables set the limit: float32 is no way out
        with pytest.raises(ValueError, match=r"center.*the float32 tables hold .* up to \d+; .*scale_base$"):
            x(q.to(dtype), q.to(dtype), torch.tensor([limit, limit + 1]))
    with pytest.raises(ValueError, match=r"torch.float16 holds .*, or run in float32$"):
        x(q.half(), q.half(), torch.tensor([5000, 5001]))
    # a centre near the positions moves the window
    far = posenc.XPos(8, center=10**6)
    rq, _ = far(q, q, torch.tensor([10**6, 10**6 + 1]))
    assert torch.isfinite(rq).all()


def test_documented_windows_are_exact() -> None:
    """The module docstring's numbers: 33,427 positions from the centre in float32 and bfloat16, 1,699 in
    float16, ``max_length`` 33,428 (1,700 in float16); each is the largest offset whose scales leave the
    ``XPOS_HEADROOM`` on both sides, so one more leaves the bound (``ceil`` for ``floor`` gave 33,428 and
    accepted position 33,428, review s5)."""
    x = posenc.XPos(8)
    assert x.max_offset() == x.max_offset(torch.float32) == x.max_offset(torch.bfloat16) == 33427
    assert x.max_offset(torch.float16) == 1699
    assert x.max_length == 33428 and x.max_length_in(torch.float16) == 1700
    log_zeta0 = math.log(0.4 / 1.4)  # the smallest zeta: the fastest-changing scale
    for dtype, limit in ((torch.float32, 33427), (torch.float16, 1699)):
        info = torch.finfo(dtype)
        low, high = math.log(info.tiny * XPOS_HEADROOM), math.log(info.max / XPOS_HEADROOM)
        inside = [sign * limit / 512 * log_zeta0 for sign in (1, -1)]  # ln of zeta0^(+-offset/512)
        assert all(low <= v <= high for v in inside), dtype
        outside = [sign * (limit + 1) / 512 * log_zeta0 for sign in (1, -1)]
        assert not all(low <= v <= high for v in outside), dtype
    q = torch.randn(1, 1, 1, 8)
    x(q, q, torch.tensor([33427]))
    with pytest.raises(ValueError, match="up to 33427"):
        x(q, q, torch.tensor([33428]))


def test_float16_window_is_enforced_for_positions_inside_the_table() -> None:
    """Positions farther than ``max_offset(float16)`` (1,699) raise ``ValueError`` in float16 also where the
    float32 tables hold their rows: default positions of a long sequence and explicit in-table positions (both
    paths skipped the check in a mutant and gave inf keys silently, review s5). Up to the window they pass."""
    x = posenc.XPos(8, cache_len=4096)
    q = torch.randn(1, 1, 1701, 8, dtype=torch.float16)
    rq, rk = x(q[:, :, :1700], q[:, :, :1700])  # positions 0 .. 1699: inside the float16 window
    assert torch.isfinite(rq).all() and torch.isfinite(rk).all()
    with pytest.raises(ValueError, match=r"torch.float16 holds .* up to 1699.*, or run in float32$"):
        x(q, q)  # default positions 0 .. 1700, all in the table
    short = torch.randn(1, 1, 2, 8, dtype=torch.float16)
    rq, rk = x(short, short, torch.tensor([1698, 1699]))
    assert torch.isfinite(rq).all() and torch.isfinite(rk).all()
    small = posenc.XPos(8)  # a table of 2048 rows: past the float16 window
    for pos in ([2000, 2047], [1700, 1700], [5, 1700]):
        with pytest.raises(ValueError, match=r"torch.float16 holds .* up to 1699"):
            small(short, short, torch.tensor(pos))
    one = short[:, :, :1]
    with pytest.raises(ValueError, match=r"torch.float16 holds .* up to 1699"):
        small(one, one, torch.tensor([2000]))  # one position (a decode step) in the table


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scale_base"):
        posenc.XPos(8, scale_base=0)
    with pytest.raises(ValueError, match="gamma"):
        posenc.XPos(8, gamma=0.0)
    with pytest.raises(ValueError, match="XPos: head_dim must be even .*got 7"):  # (named rotary_dim)
        posenc.XPos(7)
    with pytest.raises(ValueError, match="XPos: base must be > 1, got 0.5"):  # (was "RoPE base")
        posenc.XPos(8, base=0.5)
    with pytest.raises(ValueError, match="head_dim=8"):
        posenc.XPos(8)(torch.randn(1, 1, 2, 16), torch.randn(1, 1, 2, 16))


def test_registered_dtype_meta_and_compile() -> None:
    enc = posenc.build("xpos", head_dim=8, scale_base=256)
    assert isinstance(enc, posenc.XPos) and enc.scale_base == 256
    q = torch.randn(1, 2, 5, 8)
    out = enc(q.bfloat16(), q.bfloat16())[0]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), enc(q, q)[0], atol=3e-2, rtol=3e-2)
    meta = torch.empty(1, 2, 5, 8, device="meta")
    assert enc(meta, meta)[0].device.type == "meta"
    compiled = torch.compile(enc, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, q, torch.arange(5))[0], enc(q, q, torch.arange(5))[0])


def test_cached_tables_equal_tables_computed_from_positions() -> None:
    enc = posenc.XPos(16, cache_len=8)
    q, k = torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)
    cached = enc(q, k)  # default positions: the precomputed tables
    computed = enc(q, k, torch.arange(6))  # explicit positions: computed on the fly
    for a, b in zip(cached, computed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    long_q = torch.randn(1, 1, 12, 16)  # past cache_len: computed, same as explicit
    torch.testing.assert_close(enc(long_q, long_q)[0], enc(long_q, long_q, torch.arange(12))[0])


def test_an_open_decode_session_stands_for_the_range_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a DecodeSession whose slots the scales fit, positions outside the table need no range check (on a
    GPU a device sync per layer and token); outside a session, or with slots past the range, they are checked."""
    from posenc import DecodeSession

    x = posenc.XPos(8, cache_len=0)  # every position outside the table
    checked: list[int] = []
    monkeypatch.setattr(x, "_check_range", lambda pos, dtype: checked.append(1))
    q, pos = torch.randn(1, 1, 1, 8), torch.tensor([5])
    x(q, q, pos)
    assert checked == [1]
    with DecodeSession(64):
        want = x(q, q, pos)
    assert checked == [1]
    torch.testing.assert_close(want, x(q, q, pos), rtol=0, atol=0)
    with DecodeSession(x.max_offset(torch.float32) + 2):  # slots past the scales' range: still checked
        x(q, q, pos)
    assert checked == [1, 1, 1]
    with DecodeSession(
        4
    ):  # a position outside [0, slots) breaks the promise: on a CPU it is seen, and checked
        x(q, q, pos)
        x(q, q, -pos)
    assert checked == [1, 1, 1, 1, 1]


def test_a_position_a_decode_session_did_not_promise_is_refused_not_nan() -> None:
    attn = posenc.Attention(32, 4, position=posenc.XPos(8))
    x = torch.randn(1, 1, 32)
    with (
        posenc.DecodeSession(10),
        torch.no_grad(),
        pytest.raises(ValueError, match="100000 away from center"),
    ):
        attn(x, positions=torch.tensor([100_000]))


def test_attention_without_the_causal_mask_refuses_xpos() -> None:
    with pytest.raises(ValueError, match="XPos is for causal attention only"):
        posenc.Attention(32, 2, position=posenc.XPos(16), causal=False)
    posenc.Attention(32, 2, position=posenc.XPos(16))  # causal (the default)


def test_settings_without_a_computable_window_are_refused() -> None:
    """gamma=1e17 (zeta_0 rounds to 1: ZeroDivisionError), scale_base=1e308 (an infinite window:
    OverflowError) and center=-(2**70) (OverflowError in torch) crashed the constructor (fuzz #5); numpy and 0-d
    tensor centres were refused though every other int argument takes them (fuzz #9)."""
    import numpy as np

    with pytest.raises(ValueError, match=r"XPos: gamma=1e\+17 gives zeta_0 = gamma / \(1 \+ gamma\) = 1"):
        posenc.XPos(16, gamma=1e17)
    with pytest.raises(ValueError, match=r"XPos: scale_base=1e\+308 makes the representable window"):
        posenc.XPos(16, scale_base=1e308)
    with pytest.raises(ValueError, match=r"XPos: center must be a position in \[-2\*\*31, 2\*\*31\]"):
        posenc.XPos(16, center=-(2**70))
    with pytest.raises(TypeError, match="XPos: center must be an integer, got 3.0"):
        posenc.XPos(16, center=3.0)  # type: ignore[arg-type]
    for center in (np.int64(3), torch.tensor(3)):
        assert posenc.XPos(16, center=center).center == 3  # type: ignore[arg-type]
    assert posenc.XPos(16, gamma=1e15).max_offset() > 0


def test_positions_on_meta_are_refused_for_real_inputs() -> None:
    """Meta positions with CPU q and k raised "Cannot copy out of meta tensor" (fuzz #10)."""
    q = torch.randn(1, 1, 5, 8)
    with pytest.raises(ValueError, match="XPos: positions are on the meta device"):
        posenc.XPos(8)(q, q, torch.arange(5, device="meta"))


def test_positions_past_2_31_are_refused_as_ropes_are() -> None:
    """``center`` near 2**31 let positions reach 2**31 + 33,427, past the float64 angles' exact range."""
    x = posenc.XPos(8, center=2**31)
    q = torch.randn(1, 1, 2, 8)
    x(q, q, torch.tensor([2**31 - 1, 2**31]))
    with pytest.raises(ValueError, match=r"XPos: position 2147483649 is too far from 0"):
        x(q, q, torch.tensor([2**31, 2**31 + 1]))
