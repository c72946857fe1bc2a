"""full_keep skips the causal mask when a keep-mask is given and there is exactly one query. A small chunk of
2 or 3 queries with a padding mask must still be causal (an all-True mask changes nothing)."""

from __future__ import annotations

import pytest
import torch

import posenc


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("q_len", [1, 2, 3])
def test_an_all_true_mask_changes_nothing_for_short_chunks(backend: str, q_len: int) -> None:
    torch.manual_seed(0)
    attn = posenc.Attention(16, 4, position=posenc.build("alibi", heads=4), backend=backend).eval()
    x = torch.randn(2, 4 + q_len, 16)
    with torch.no_grad():
        # a prompt of 4 in the cache, then a chunk of q_len tokens, with and without an all-True mask
        outs = []
        for mask in (None, torch.ones(2, 4 + q_len, dtype=torch.bool)):
            cache = posenc.KVCache()
            attn(x[:, :4], cache=cache, mask=None if mask is None else mask[:, :4])
            outs.append(attn(x[:, 4:], cache=cache, mask=mask))
        full = attn(x)[:, 4:]  # the whole sequence at once, causal
    torch.testing.assert_close(outs[1], outs[0], atol=0, rtol=0)
    torch.testing.assert_close(outs[0], full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("q_len", [2, 3])
def test_full_keep_of_a_short_chunk_is_causal(q_len: int) -> None:
    from posenc.attention.inputs import AttentionInputs, full_keep

    k_len = 5
    q = torch.zeros(1, 1, q_len, 8)
    k = torch.zeros(1, 1, k_len, 8)
    keep = torch.ones(1, 1, 1, k_len, dtype=torch.bool)
    ctx = AttentionInputs(
        posenc.NoPE(), torch.arange(k_len - q_len, k_len)[None], torch.arange(k_len)[None], keep, causal=True
    )
    got = full_keep(q, k, ctx)
    want = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
    assert got is not None and torch.equal(got.expand(1, 1, q_len, k_len)[0, 0], want)
