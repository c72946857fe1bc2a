"""For every registered encoding: tokens fed one at a time through the KV cache == one full forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import posenc
from posenc.attention.static_cache import StaticKVCache
from posenc.models import TransformerLM

OPTIONS: dict[str, dict[str, Any]] = {"learned": {"max_len": 64}}


def options(name: str) -> dict[str, Any]:
    return OPTIONS.get(name, {})


@pytest.mark.parametrize("name", posenc.available())
@pytest.mark.parametrize("max_len", [None, 16])
def test_lm_incremental_decoding_equals_full_forward(name: str, max_len: int | None) -> None:
    model = TransformerLM(name, dim=32, depth=2, heads=4, kv_heads=2, position_options=options(name)).eval()
    tokens = torch.randint(0, 256, (2, 11))
    with torch.no_grad():
        full = model(tokens)
        caches = model.new_caches(max_len)
        prefix = model(tokens[:, :4], caches=caches)  # a prompt, then one token at a time
        steps = [model(tokens[:, i : i + 1], caches=caches) for i in range(4, 11)]
    incremental = torch.cat([prefix, *steps], dim=1)
    assert (incremental - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "name", [n for n in posenc.available() if posenc.encoding_class(n).family != "absolute"]
)
@pytest.mark.parametrize("backend", ["auto", "math"])
def test_attention_incremental_equals_full(name: str, backend: str) -> None:
    enc = posenc.build(name, dim=32, heads=4, **options(name))
    attn = posenc.Attention(32, 4, kv_heads=2, position=enc, backend=backend).eval()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        full = attn(x)
        cache = posenc.KVCache()
        steps = torch.cat([attn(x[:, i : i + 1], cache=cache) for i in range(9)], dim=1)
    assert len(cache) == 9
    assert (steps - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", posenc.available())
def test_explicit_arange_positions_equal_default(name: str) -> None:
    model = TransformerLM(name, dim=32, depth=1, heads=4, position_options=options(name)).eval()
    tokens = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), model(tokens, positions=torch.arange(7)), atol=1e-6, rtol=0)


def test_preallocated_cache_refuses_to_overflow_and_resets() -> None:
    attn = posenc.Attention(16, 2, position=posenc.RoPE(8)).eval()
    cache = posenc.KVCache(max_len=4)
    x = torch.randn(1, 3, 16)
    with torch.no_grad():
        first = attn(x, cache=cache)
        with pytest.raises(ValueError, match=r"max_len=4\) holds 3 tokens and cannot take 3 more"):
            attn(x, cache=cache)
        cache.reset()
        assert len(cache) == 0
        torch.testing.assert_close(attn(x, cache=cache), first)
    with pytest.raises(ValueError, match="max_len"):
        posenc.KVCache(max_len=0)
    from posenc.attention.static_cache import StaticKVCache

    with pytest.raises(TypeError, match=r"StaticKVCache: max_len \(key slots\) must be an integer, got None"):
        StaticKVCache(None)  # type: ignore[arg-type]  # (KVCache's None means "grow"; a static one cannot)
    with pytest.raises(
        ValueError, match=r"StaticKVCache: max_len \(key slots\) must be an integer >= 1, got 0"
    ):
        StaticKVCache(0)


@pytest.mark.parametrize("max_len", [None, 8])
def test_reset_then_decode_equals_a_fresh_cache(max_len: int | None) -> None:
    """Both kinds of cache: after ``reset`` no old key, value or position is left to attend to."""
    attn = posenc.Attention(16, 2, position=posenc.RoPE(8)).eval()
    old, new = torch.randn(1, 5, 16), torch.randn(1, 4, 16)
    used, fresh = posenc.KVCache(max_len), posenc.KVCache(max_len)
    with torch.no_grad():
        attn(old, cache=used)
        used.reset()
        assert len(used) == 0
        after_reset = [attn(new[:, i : i + 1], cache=used) for i in range(4)]
        expected = [attn(new[:, i : i + 1], cache=fresh) for i in range(4)]
    assert len(used) == len(fresh) == 4
    torch.testing.assert_close(torch.cat(after_reset, 1), torch.cat(expected, 1), atol=0, rtol=0)


@pytest.mark.parametrize("max_len", [None, 8])
def test_keys_that_cannot_join_the_cache_are_refused_and_an_emptied_cache_takes_any(
    max_len: int | None,
) -> None:
    """Another layer's keys (heads, head size), another batch, dtype or device: a clear error, not torch.cat's or a
    silent cast into the preallocated room. After ``reset`` the cache starts over with the new keys' kind."""
    from posenc.attention.static_cache import StaticKVCache

    four = posenc.Attention(32, 4, position=posenc.build("rope", dim=32, heads=4)).eval()
    two = posenc.Attention(32, 2, position=posenc.build("rope", dim=32, heads=2)).eval()
    x = torch.randn(1, 3, 32)
    with torch.no_grad():
        for cache in (posenc.KVCache(max_len=max_len), StaticKVCache(8)):
            positions = torch.arange(3)[None]
            static = isinstance(cache, StaticKVCache)
            valid = torch.ones(1, 8, dtype=torch.bool)
            masks = [cache.keep_mask(valid, n) if static else None for n in (3, 1)]  # type: ignore[attr-defined]
            four(x, cache=cache, positions=positions, mask=masks[0])
            with pytest.raises(ValueError, match="cache holds keys of 4 heads x 8 dims, got 2 x 16"):
                two(x[:, :1], cache=cache, positions=positions[:, :1] + 3, mask=masks[1])
            with pytest.raises(ValueError, match="cache holds batch 1, got new keys with batch 2"):
                four(x[:, :1].expand(2, -1, -1), cache=cache, positions=positions[:, :1] + 3, mask=masks[1])
            if isinstance(cache, StaticKVCache):
                continue
            with pytest.raises(ValueError, match="cache holds torch.float32 keys on cpu, got torch.float64"):
                four.double()(x[:, :1].double(), cache=cache)
            cache.reset()  # emptied: the float64 model's keys start it over, equal to a fresh cache's
            want = four(x.double())
            assert torch.equal(four(x.double(), cache=cache), want)
            four.float()


def test_static_cache_refuses_writes_past_its_end_with_the_slots_asked_for() -> None:
    """Past ``max_len`` ``index_copy_`` raised a bare IndexError (on CUDA: a device assert)."""
    from posenc.attention.static_cache import StaticKVCache

    k, pos = torch.randn(1, 2, 3, 8), torch.arange(3)[None]
    cache = StaticKVCache(4)
    cache.update(k, k, pos)
    with pytest.raises(
        ValueError, match=r"StaticKVCache\(max_len=4\) holds 3 tokens and cannot take 2 more \(slots 3..4"
    ):
        cache.update(k[:, :, :2], k[:, :, :2], pos[:, :2] + 3)
    assert cache.index is not None and int(cache.index) == 3  # the refused write left no trace
    cache.update(k[:, :, :1], k[:, :, :1], pos[:, :1] + 3)  # the last slot still fits
    with pytest.raises(ValueError, match=r"max_len=4\) cannot take 5 tokens at once \(slots 0..4"):
        StaticKVCache(4).update(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.arange(5)[None])
    with pytest.raises(TypeError, match="checked must be True or False"):
        StaticKVCache(4, checked=1)  # type: ignore[arg-type]


def test_an_emptied_static_cache_takes_other_keys_like_kvcache() -> None:
    """After ``reset`` :class:`KVCache` starts over with any keys; the static cache refused every other batch,
    head count, head size, dtype or device until it was thrown away. Keys of the same kind still reuse its
    memory (CUDA graphs replay fixed addresses)."""
    from posenc.attention.static_cache import StaticKVCache

    k, pos = torch.randn(1, 2, 3, 8), torch.arange(3)[None]
    cache = StaticKVCache(4)
    cache.update(k, k, pos)
    with pytest.raises(ValueError, match="cache holds torch.float32 keys on cpu, got torch.float64"):
        cache.update(k[:, :, :1].double(), k[:, :, :1].double(), pos[:, :1] + 3)  # still filled: refused
    for other in (torch.randn(2, 2, 3, 8), torch.randn(1, 4, 3, 16), k.double(), k):
        cache.reset()
        keys, values, positions = cache.update(other, other, pos.int())
        assert (
            keys.shape == (other.shape[0], other.shape[1], 4, other.shape[-1]) and keys.dtype == other.dtype
        )
        assert torch.equal(keys[:, :, :3], other) and torch.equal(values[:, :, :3], other)
        assert torch.equal(positions[:, :3], pos.expand(other.shape[0], -1))
    assert cache.k is not None
    address = cache.k.data_ptr()
    cache.reset()
    cache.update(k, k, pos)  # the same kind as the last keys: the same memory
    assert cache.k.data_ptr() == address


def test_a_static_cache_without_positions_or_mask_is_refused() -> None:
    """Attention sees every slot of a StaticKVCache, unwritten ones too: without a mask the tokens attended to
    the empty (zero) slots, and default positions started at ``max_len``. Both gave wrong outputs silently
    (ALiBi: off by 0.54 from the uncached forward); now a clear error, in Attention and in TransformerLM."""
    from posenc.attention.static_cache import StaticKVCache
    from posenc.models import TransformerLM

    att = posenc.Attention(32, 4, position=posenc.build("alibi", dim=32, heads=4)).eval()
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"Attention: a StaticKVCache needs explicit positions and mask"):
            att(x, cache=StaticKVCache(8))
        with pytest.raises(ValueError, match=r"needs explicit mask \(got None\).*cache.keep_mask"):
            att(x, cache=StaticKVCache(8), positions=torch.arange(5))
        cache = StaticKVCache(8)
        valid = torch.ones(1, 8, dtype=torch.bool)
        out = att(x, cache=cache, positions=torch.arange(5), mask=cache.keep_mask(valid, 5))
        torch.testing.assert_close(out, att(x))
        lm = TransformerLM("alibi", vocab_size=11, dim=32, depth=1, heads=4).eval()
        with pytest.raises(
            ValueError, match=r"TransformerLM: a StaticKVCache needs explicit positions and mask"
        ):
            lm(torch.zeros(1, 2, dtype=torch.long), caches=[StaticKVCache(8)])


def test_a_static_cache_first_filled_inside_torch_compile_works() -> None:
    """A fresh StaticKVCache handed to a compiled attention (``fullgraph=True``) allocated its slots while traced,
    where dynamo refuses ``mark_static_address``: an AssertionError "Attempt to trace forbidden callable". Now the
    slots are marked only when allocated eagerly, and the compiled steps equal the uncached forward."""
    from posenc.attention.static_cache import StaticKVCache

    torch._dynamo.reset()
    attn = posenc.Attention(16, 2, position=posenc.build("alibi", dim=16, heads=2)).eval()
    x = torch.randn(2, 5, 16)
    cache, valid = StaticKVCache(8), torch.ones(2, 8, dtype=torch.bool)
    step = torch.compile(attn, fullgraph=True, backend="eager")
    with torch.no_grad():
        outs = [step(x[:, :3], positions=torch.arange(3), mask=cache.keep_mask(valid, 3), cache=cache)]
        for i in (3, 4):
            outs.append(
                step(
                    x[:, i : i + 1], positions=torch.tensor([i]), mask=cache.keep_mask(valid, 1), cache=cache
                )
            )
        torch.testing.assert_close(torch.cat(outs, dim=1), attn(x))


def test_static_keep_mask_names_a_bad_valid_mask() -> None:
    """``keep_mask`` took any ``valid`` and failed in torch: a float one with "bitwise_and_cpu not implemented for
    'Float'", one short of the slots with "The size of tensor a (5) must match ...", a 1-d one with "too many
    indices"."""
    from posenc.attention.static_cache import StaticKVCache

    cache = StaticKVCache(8)
    with pytest.raises(
        TypeError, match=r"valid must be a bool tensor \(batch, 8\).* got torch.float32 \(2, 8\)"
    ):
        cache.keep_mask(torch.ones(2, 8), 1)
    with pytest.raises(TypeError, match=r"valid must be a bool tensor \(batch, 8\).* got torch.bool \(8,\)"):
        cache.keep_mask(torch.ones(8, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match=r"valid must cover the cache's 8 slots, \(batch, 8\), got \(2, 5\)"):
        cache.keep_mask(torch.ones(2, 5, dtype=torch.bool), 1)
    assert cache.keep_mask(torch.ones(2, 8, dtype=torch.bool), 3).shape == (2, 1, 3, 8)


def test_keep_mask_checks_q_len() -> None:
    """q_len=-1 raised arange's error and 2.5 was accepted (fuzz #13)."""
    from posenc.attention.static_cache import StaticKVCache

    sc = StaticKVCache(4)
    valid = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="StaticKVCache.keep_mask: q_len must be an integer >= 0, got -1"):
        sc.keep_mask(valid, -1)
    with pytest.raises(TypeError, match="StaticKVCache.keep_mask: q_len must be an integer, got 2.5"):
        sc.keep_mask(valid, 2.5)  # type: ignore[arg-type]
    assert sc.keep_mask(valid, 2).shape == (2, 1, 2, 4)


@pytest.mark.parametrize("name", ["none", "rope", "alibi", "t5"])
@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gradients_flow_through_preallocated_caches(name: str, backend: str, kv_heads: int) -> None:
    """A preallocated KVCache or a StaticKVCache wrote in place into slots that earlier steps had saved for
    backward: ``backward()`` raised autograd's "modified by an inplace operation" for most configurations (review
    s4). Recording gradients, they write out of place and equal the growing cache's gradients."""
    dim, heads, s = 8, 2, 6
    torch.manual_seed(0)
    enc = None if name == "none" else posenc.build(name, dim=dim, heads=heads, head_dim=dim // heads)
    attn = posenc.Attention(dim, heads, kv_heads=kv_heads, position=enc, backend=backend)
    x = torch.randn(1, s, dim)
    valid = torch.ones(1, s, dtype=torch.bool)

    def grads(cache: posenc.KVCache) -> list[torch.Tensor]:
        outs = []
        for start, end in ((0, 3), *((i, i + 1) for i in range(3, s))):
            if isinstance(cache, StaticKVCache):
                kw: dict[str, Any] = {
                    "positions": torch.arange(start, end),
                    "mask": cache.keep_mask(valid, end - start),
                }
            else:
                kw = {}
            outs.append(attn(x[:, start:end], cache=cache, **kw))
        loss = torch.cat(outs, 1).square().sum()
        return list(torch.autograd.grad(loss, list(attn.parameters())))

    expected = grads(posenc.KVCache())
    for cache in (posenc.KVCache(max_len=s), StaticKVCache(s)):
        for got, want in zip(grads(cache), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        cache.reset()  # a graph's buffers are let go, not written again
        assert cache.k is None


@pytest.mark.parametrize("name", ["rope", "alibi", "kerple"])
def test_a_preallocated_cache_returns_to_in_place_writes_after_recorded_steps(name: str) -> None:
    """Steps recorded by autograd grow out of place; a later step under no_grad copies them into a fresh buffer
    and writes in place from then on, and reset() under no_grad lets the graph's tensors go (review s4: a reset
    under no_grad kept them and the next write broke the earlier backward). The copy carries the past key
    positions too: a bias encoding (ALiBi, KERPLE) reads them, so outputs and ``cache.positions`` equal a growing
    cache's (review s5: past keys left at position 0 went unnoticed with RoPE, whose keys are rotated already)."""
    torch.manual_seed(0)
    attn = posenc.Attention(8, 2, position=posenc.build(name, dim=8, heads=2, head_dim=4))
    x = torch.randn(1, 6, 8)
    cache, grow = posenc.KVCache(max_len=6), posenc.KVCache()
    loss = sum(attn(x[:, i : i + 1], cache=cache).sum() for i in range(3))
    with torch.no_grad():
        for i in range(3, 6):
            torch.testing.assert_close(
                attn(x[:, i : i + 1], cache=cache), _steps(attn, x, grow, i), rtol=0, atol=0
            )
            assert cache.positions is not None and grow.positions is not None
            assert torch.equal(cache.positions[:, : len(cache)], grow.positions.expand(1, -1))
        assert cache.k is not None and cache.k.shape[-2] == 6 and not cache.k.requires_grad
    cache2 = posenc.KVCache(max_len=6)
    loss2 = sum(attn(x[:, i : i + 1], cache=cache2).sum() for i in range(3))
    with torch.no_grad():
        cache2.reset()
        attn(x[:, :1], cache=cache2)
    (loss + loss2).backward()  # type: ignore[union-attr]


def _steps(attn: posenc.Attention, x: torch.Tensor, cache: posenc.KVCache, i: int) -> torch.Tensor:
    while len(cache) < i:
        attn(x[:, len(cache) : len(cache) + 1], cache=cache)
    return attn(x[:, i : i + 1], cache=cache)


@pytest.mark.parametrize("grad", ["k", "v", "both"])
def test_static_cache_reset_keeps_a_recorded_graph_intact(grad: str) -> None:
    """``StaticKVCache.reset``: a graph's tensors are not written again. After a step that recorded gradients
    through the keys, the values or both, a reset and a no-grad step leave the earlier backward working (the
    step wrote in place into the tensors the graph saved: "modified by an inplace operation")."""
    torch.manual_seed(0)
    cache = StaticKVCache(4)
    k = torch.randn(1, 1, 2, 4, requires_grad=grad in ("k", "both"))
    v = torch.randn(1, 1, 2, 4, requires_grad=grad in ("v", "both"))
    kk, vv, _ = cache.update(k, v, torch.arange(2)[None])
    loss = (kk * kk).sum() + (vv * vv).sum()
    cache.reset()
    with torch.no_grad():
        cache.update(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), torch.arange(2)[None])
    loss.backward()
    for t in (k, v):
        if t.requires_grad:
            assert t.grad is not None
            torch.testing.assert_close(t.grad, 2 * t.detach())


@pytest.mark.parametrize("static", [False, True])
def test_a_cache_too_large_for_the_machine_is_refused_naming_max_len(static: bool) -> None:
    """``KVCache(max_len=10**10)`` failed at its first write with the allocator's own error (80 GB asked for)."""
    cache = StaticKVCache(10**10) if static else posenc.KVCache(max_len=10**10)
    k = torch.randn(1, 2, 1, 8)
    owner = "StaticKVCache" if static else "KVCache"
    with pytest.raises(
        ValueError, match=rf"{owner}\(max_len=10000000000\): keys, values and positions of batch 1"
    ):
        cache.update(k, k, torch.tensor([[0]]))
    # a generous max_len of which a part is written: untouched pages cost nothing (refused at half the memory once)
    big = StaticKVCache(2**30) if static else posenc.KVCache(max_len=2**30)
    with torch.device("meta"):  # (no allocation; a cache on a device of unknown memory is not checked)
        meta = torch.empty(1, 2, 1, 8)
        big.update(meta, meta, torch.tensor([[0]], device="meta"))
    assert big.k is not None and big.k.shape[-2] == 2**30
