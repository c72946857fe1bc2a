"""Every backend agrees with ``math``: bias encodings and Shaw's key term through ``sdpa`` and ``flex``. (How ``auto``
chooses among them: test_backend_choice.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import posenc
from posenc.attention import backends
from posenc.attention import flex as flex_module
from posenc.attention.backends import (
    AttentionInputs,
    math_attention,
    sdpa_attention,
)
from posenc.attention.flex import build_block_mask, flex_attention_backend

BIAS = posenc.available(family="bias")
OPTIONS: dict[str, dict[str, Any]] = {"t5": {"max_distance": 6, "num_buckets": 8}}
pytestmark = pytest.mark.usefixtures("eager_flex")  # (tests/conftest.py)


def encoding(name: str, heads: int = 4, **kw: Any) -> posenc.PositionEncoding:
    enc = posenc.build(name, dim=32, heads=heads, **{**OPTIONS.get(name, {}), **kw})
    with torch.no_grad():  # move learned parameters off their init so every term matters
        for p in enc.parameters():
            p.add_(torch.rand_like(p) * 0.3)
    return enc


def pair(name: str, backend: str, **kw: Any) -> tuple[posenc.Attention, posenc.Attention]:
    # (T5's decoder buckets put every later key at distance 0: bidirectional attention refuses them)
    enc = encoding(name, **({"bidirectional": True} if name == "t5" and not kw.get("causal", True) else {}))
    fast = posenc.Attention(32, 4, position=enc, backend=backend, **kw)
    ref = posenc.Attention(32, 4, position=enc, backend="math", **kw)
    ref.load_state_dict(fast.state_dict())
    return fast.eval(), ref.eval()


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("name", BIAS)
@pytest.mark.parametrize("causal", [True, False])
def test_forward_matches_math(name: str, backend: str, causal: bool) -> None:
    fast, ref = pair(name, backend, causal=causal, kv_heads=2)  # GQA
    x = torch.randn(2, 9, 32)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [3, 4, 5, 9, 10, 11, 40, 41, 200]])  # per-row positions
    with torch.no_grad():
        close(fast(x), ref(x))
        close(fast(x, positions=pos), ref(x, positions=pos))


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("name", BIAS)
def test_kv_cache_and_padding_match_math(name: str, backend: str) -> None:
    fast, ref = pair(name, backend)
    x = torch.randn(2, 10, 32)
    keep = torch.ones(2, 10, dtype=torch.bool)
    keep[0, :3] = False  # left padding in row 0
    with torch.no_grad():
        outs = []
        for attn in (fast, ref):
            cache = posenc.KVCache()
            a = attn(x[:, :6], cache=cache, mask=keep[:, :6])
            b = attn(x[:, 6:], cache=cache, mask=keep)  # 4 queries at offset 6 against 10 keys
            outs.append(torch.cat((a, b), dim=1))
        close(outs[0], outs[1])


@pytest.mark.parametrize("name", BIAS)
def test_fully_masked_rows_are_zero_in_flex(name: str) -> None:
    fast, ref = pair(name, "flex", causal=False)
    x = torch.randn(1, 5, 32)
    keep = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    keep[..., 1:, :2] = True  # query 0 sees nothing
    with torch.no_grad():
        close(fast(x, mask=keep), ref(x, mask=keep))


@pytest.mark.parametrize("name", ["t5", "fire", "kerple"])
def test_sdpa_gradients_reach_learned_tables(name: str) -> None:
    fast, ref = pair(name, "sdpa")
    fast.train(), ref.train()
    x = torch.randn(2, 7, 32)
    grads = []
    for attn in (fast, ref):
        attn.zero_grad()
        attn(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in attn.position.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert grads[0][n].abs().sum() > 0, n
        close(grads[0][n], grads[1][n])


def test_shaw_key_term_through_flex_matches_math() -> None:
    for per_head in (False, True):
        enc = posenc.build("shaw", dim=32, heads=4, values=False, max_distance=3, per_head=per_head)
        fast = posenc.Attention(32, 4, kv_heads=2, position=enc, backend="flex").eval()
        ref = posenc.Attention(32, 4, kv_heads=2, position=enc, backend="math").eval()
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(2, 8, 32)
        with torch.no_grad():
            close(fast(x), ref(x))
            c1, c2 = posenc.KVCache(), posenc.KVCache()
            fast(x[:, :5], cache=c1), ref(x[:, :5], cache=c2)
            close(fast(x[:, 5:], cache=c1), ref(x[:, 5:], cache=c2))


def test_flex_refuses_what_it_cannot_do() -> None:
    shaw = posenc.Attention(32, 4, position=posenc.build("shaw", dim=32, heads=4), backend="flex")
    with pytest.raises(ValueError, match="needs the attention weights"):
        shaw(torch.randn(1, 3, 32))
    drop = posenc.Attention(32, 4, position=posenc.ALiBi(4), backend="flex", dropout=0.1).train()
    with pytest.raises(ValueError, match="dropout"):
        drop(torch.randn(1, 3, 32))
    train = posenc.Attention(32, 4, position=posenc.ALiBi(4), backend="flex")
    with pytest.raises(ValueError, match="no backward on CPU"):
        train(torch.randn(1, 3, 32))
    wide = posenc.Attention(32, 4, position=posenc.ALiBi(4), backend="flex").double()
    with (
        torch.no_grad(),
        pytest.raises(TypeError, match="float32, float16 and bfloat16 queries, got torch.float64"),
    ):
        wide(torch.randn(1, 3, 32, dtype=torch.float64))


def test_flex_without_score_mod_uses_the_materialized_bias() -> None:
    class Materialized(posenc.PositionEncoding):
        def score_bias(self, q: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
            return posenc.ALiBi(4).pairwise(q_pos, k_pos)

    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8)
    pos = torch.arange(6)[None]
    ctx = AttentionInputs(Materialized(), pos, pos, None, causal=True)
    close(flex_attention_backend(q, k, v, ctx), math_attention(q, k, v, ctx))


@pytest.mark.parametrize(("q_len", "k_len"), [(1, 1), (5, 300), (130, 130), (300, 260), (257, 513)])
def test_causal_block_mask_equals_create_block_mask(q_len: int, k_len: int) -> None:
    shift = k_len - q_len
    ours = build_block_mask(q_len, k_len, True, None, torch.device("cpu"))
    ref = create_block_mask(lambda b, h, q, kv: kv <= q + shift, None, None, q_len, k_len, device="cpu")
    assert ours is not None
    assert torch.equal(ours.to_dense(), ref.to_dense())
    assert torch.equal(ours.full_kv_num_blocks, ref.full_kv_num_blocks)  # type: ignore[arg-type]


def test_cached_causal_mask_first_built_in_inference_mode_serves_training() -> None:
    """The per-shape cache outlives inference mode: a mask of inference tensors (from a benchmark or a
    ``generate`` under ``torch.inference_mode``) made a later training step fail to save it for backward."""
    with torch.inference_mode():
        first = build_block_mask(77, 77, True, None, torch.device("cpu"))
    again = build_block_mask(77, 77, True, None, torch.device("cpu"))
    assert first is again is not None
    tensors = [t for t in again.as_tuple() if isinstance(t, torch.Tensor)]
    assert tensors and not any(t.is_inference() for t in tensors)


@pytest.mark.slow
def test_compiled_flex_matches_math() -> None:
    """The real (compiled) kernel once, on a tiny shape."""
    torch._dynamo.reset()
    enc = encoding("alibi")
    q, k, v = torch.randn(1, 4, 40, 16), torch.randn(1, 4, 40, 16), torch.randn(1, 4, 40, 16)
    pos = torch.arange(40)[None]
    ctx = AttentionInputs(enc, pos, pos, None, causal=True)
    compiled = torch.compile(flex_attention)
    out = compiled(
        q,
        k,
        v,
        score_mod=enc.score_mod(q, pos, pos),
        block_mask=build_block_mask(40, 40, True, None, q.device),
    )
    close(out, math_attention(q, k, v, ctx))


def test_flex_kernel_options_shrink_until_the_kernel_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that does not fit shared memory is retried with smaller tiles, once per case."""
    tried: list[object] = []

    def kernel(*args: torch.Tensor, kernel_options: object = None, **kwargs: object) -> str:
        tried.append(kernel_options)
        if kernel_options is None:
            raise RuntimeError("No valid triton configs. OutOfMemoryError: out of resource: Required: 245760")
        return "ok"

    for (
        rung
    ) in flex_module.FITTING_OPTIONS:  # tiles torch's kernels accept: dividing the 128-wide mask blocks,
        tiles = {
            k: v for k, v in rung.items() if "BLOCK" in k
        }  # and the backward's n % m == 0 (static asserts)
        assert set(tiles) == {
            "BLOCK_M",
            "BLOCK_N",
            "bwd_BLOCK_M1",
            "bwd_BLOCK_N1",
            "bwd_BLOCK_M2",
            "bwd_BLOCK_N2",
        }
        assert all(128 % v == 0 for v in tiles.values())
        assert (
            rung["bwd_BLOCK_N1"] % rung["bwd_BLOCK_M1"] == 0
            and rung["bwd_BLOCK_M2"] % rung["bwd_BLOCK_N2"] == 0
        )
    monkeypatch.setattr(flex_module, "_fitted", {})
    assert flex_module.run_fitted(kernel, ("case",)) == "ok"
    assert tried == [None, flex_module.FITTING_OPTIONS[0]]
    assert flex_module.run_fitted(kernel, ("case",)) == "ok" and tried[-1] == flex_module.FITTING_OPTIONS[0]

    def broken(*args: torch.Tensor, kernel_options: object = None, **kwargs: object) -> str:
        raise RuntimeError("index out of bounds")

    with pytest.raises(RuntimeError, match="index out of bounds"):
        flex_module.run_fitted(broken, ("other",))


@pytest.mark.parametrize("name", ["none", "alibi", "rope"])
@pytest.mark.parametrize("causal", [True, False])
def test_flex_with_no_query_or_no_key_gives_the_empty_or_zero_output(name: str, causal: bool) -> None:
    """An empty sequence through ``flex`` (no new token, or nothing cached and nothing new) killed the process
    with SIGFPE inside the compiled kernel; now it returns what ``math`` returns."""
    attn = posenc.Attention(
        16, 4, position=posenc.build(name, dim=16, heads=4), backend="flex", causal=causal
    ).eval()
    empty = torch.randn(2, 0, 16)
    with torch.no_grad():
        assert attn(empty).shape == (2, 0, 16)
        assert attn(empty, mask=torch.ones(2, 0, dtype=torch.bool)).shape == (2, 0, 16)
        cache = posenc.KVCache()
        attn(torch.randn(2, 3, 16), cache=cache)
        assert attn(empty, cache=cache).shape == (2, 0, 16)


@given(
    st.sampled_from([*BIAS, "shaw"]),
    st.integers(1, 3),
    st.sampled_from([(4, 4), (4, 2), (4, 1)]),
    st.integers(1, 40),
    st.integers(0, 100),
    st.booleans(),
    st.sampled_from([None, "padding", "per query"]),
    st.booleans(),
    st.sampled_from([8, 12]),
    st.integers(0, 2**31),
)
def test_every_backend_matches_math_on_any_shape(
    name: str,
    batch: int,
    heads: tuple[int, int],
    q_len: int,
    cached: int,
    causal: bool,
    mask: str | None,
    per_row: bool,
    head_dim: int,
    seed: int,
) -> None:
    """Property: ``sdpa`` and ``flex`` give ``math``'s output for any batch, GQA / MQA grouping, query count, cached
    keys (``K >= Q``, across FlexAttention's 128-blocks), causal or not, padding or per-query masks (rows with no
    visible key included), per-row positions and head_dim not a power of two. Shaw's needs the weights: ``sdpa``
    only for one query (its ``kv_rows``), ``flex`` never."""
    h, g = heads
    gen = torch.Generator().manual_seed(seed)
    k_len = q_len + cached
    enc = posenc.build(name, dim=h * head_dim, heads=h, **OPTIONS.get(name, {}))
    with torch.no_grad():  # learned parameters off their init, so every term matters
        for p in enc.parameters():
            p.add_(torch.rand(p.shape, generator=gen) * 0.3)
    q = torch.randn(batch, h, q_len, head_dim, generator=gen)
    k, v = torch.randn(2, batch, g, k_len, head_dim, generator=gen)
    k_pos = (
        torch.randint(0, 400, (batch, k_len), generator=gen).sort(-1).values
        if per_row
        else torch.arange(k_len)[None]
    )
    keep = None
    if mask == "padding":
        keep = (torch.rand(batch, k_len, generator=gen) > 0.3)[:, None, None, :]
    elif mask == "per query":
        keep = torch.rand(batch, h, q_len, k_len, generator=gen) > 0.5
    ctx = AttentionInputs(enc, k_pos[:, k_len - q_len :], k_pos, keep, causal)
    fast = [] if name == "shaw" and q_len != 1 else [sdpa_attention]
    fast += [] if name == "shaw" else [flex_attention_backend]
    with torch.no_grad():
        want = math_attention(q, k, v, ctx)
        for backend in fast:
            torch.testing.assert_close(backend(q, k, v, ctx), want, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("masked_near_keys", [False, True])
def test_sdpa_keeps_a_far_bias_in_half_precision(dtype: torch.dtype, masked_near_keys: bool) -> None:
    """A query whose visible keys are all far (positions 0..3 against 300,000): the bias cast to fp16 was -inf on
    head 0 (its output exactly 0) and kept few bits in bf16; sdpa now agrees with math. With near keys present
    but masked (padding, evicted keys), the shift must come from the visible keys only (``_in_dtype``), not from
    the masked near ones (review s5: shifting by every key gave head 0 exactly 0 again in fp16)."""
    torch.manual_seed(0)
    alibi = posenc.ALiBi(4)
    n = 8 if masked_near_keys else 4
    q, k, v = (torch.randn(1, 4, m, 8).to(dtype) for m in (1, n, n))
    q_pos, k_pos = torch.tensor([[300_000]]), torch.arange(4)[None]
    keep = None
    if masked_near_keys:  # keys 299,997..300,000 are there but hidden: only the far ones are visible
        k_pos = torch.cat((k_pos, torch.arange(299_997, 300_001)[None]), dim=-1)
        keep = torch.tensor([True] * 4 + [False] * 4)[None, None, None, :]
    ctx = AttentionInputs(alibi, q_pos, k_pos, keep, causal=False)
    want = backends.math_attention(q, k, v, ctx)
    got = backends.sdpa_attention(q, k, v, ctx)
    assert got[0, 0].abs().sum() > 0  # (fp16: was all zeros)
    torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=0)


def test_math_training_compiles_with_dynamic_shapes() -> None:
    """Under ``dynamic=True`` the dropout rate is symbolic: ``F.dropout(training=rate > 0)`` got a SymBool and
    every encoding's math-backend training failed to compile (Shaw always trains through math; review s4)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    for dropout in (0.0, 0.1):
        attn = posenc.Attention(
            16, 2, position=posenc.ShawRelative(8, max_distance=4), backend="math", dropout=dropout
        )
        compiled = torch.compile(attn.train(), fullgraph=True, dynamic=True, backend="eager")
        for s in (5, 7):
            compiled(torch.randn(1, s, 16)).sum().backward()


def _attention_f64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    s = q.shape[-2]
    logits = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    logits = logits.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf"))
    return logits.softmax(-1) @ v.double()


def test_math_multiplies_half_precision_q_and_k_in_float32() -> None:
    """The reference rounded ``q @ k^T`` to q's dtype before its float32 softmax: in fp16 a product past 65,504
    became inf and the rows NaN, in bf16 large logits lost bits (0.5 off where sdpa was 8e-3; review s4)."""
    torch.manual_seed(0)
    pos = torch.arange(8)[None]
    ctx = AttentionInputs(posenc.NoPE(), pos, pos, None, causal=True)
    q = torch.randn(1, 2, 8, 64).sign() * 40.0  # q . q = 102,400: past fp16's range
    v = torch.randn(1, 2, 8, 64)
    out = math_attention(q.half(), q.half(), v.half(), ctx)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), _attention_f64(q.half(), q.half(), v.half()), rtol=0, atol=2e-3)
    q, k, v = (torch.randn(1, 4, 64, 32) * 3 for _ in range(3))  # logits of std ~9 * sqrt(32) / sqrt(32)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    pos = torch.arange(64)[None]
    ctx = AttentionInputs(posenc.NoPE(), pos, pos, None, causal=True)
    exact = _attention_f64(q, k, v)
    err_math = (math_attention(q, k, v, ctx).double() - exact).abs().max()
    err_sdpa = (sdpa_attention(q, k, v, ctx).double() - exact).abs().max()
    assert err_math <= 1.5 * err_sdpa + 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does not put the product back into bf16
        torch.testing.assert_close(
            math_attention(q, k, v, ctx), math_attention(q, k, v, ctx).float().bfloat16()
        )
        assert (math_attention(q, k, v, ctx).double() - exact).abs().max() == err_math
