"""``math``'s rows without a visible key: 0, not NaN, and the pass that ensures it skipped where no row can be
hidden."""

from __future__ import annotations

import pytest
import torch

from posenc.attention.backends import AttentionInputs, math_attention
from posenc.base import PositionEncoding

from .test_backends import close, encoding


def causal_inputs(
    enc: PositionEncoding, q_len: int, k_len: int, keep: torch.Tensor | None
) -> AttentionInputs:
    """Causal inputs for ``q_len`` queries at the end of ``k_len`` keys (a cache's last chunk)."""
    q_pos = torch.arange(k_len - q_len, k_len).unsqueeze(0)  # (1, Q)
    return AttentionInputs(enc, q_pos, torch.arange(k_len).unsqueeze(0), keep, causal=True)


@pytest.mark.parametrize("name", ["none", "alibi", "shaw"])
def test_rows_without_a_visible_key_give_zero_and_the_others_are_unchanged(name: str) -> None:
    """``math``'s fully-masked-row fix: rows hidden by a padding mask, or by the causal mask when there are fewer
    keys than queries, give 0 (not NaN), values and gradients; with the causal mask alone and ``K >= Q`` no row is
    hidden, so the result is the plain softmax's (the fix's pass is skipped there)."""
    torch.manual_seed(0)
    enc = encoding(name)
    b, h, d = 2, 4, 8
    for q_len, k_len, hide_row in [(5, 3, False), (4, 6, True), (6, 6, False)]:
        q = torch.randn(b, h, q_len, d, requires_grad=True)
        k, v = torch.randn(b, h, k_len, d), torch.randn(b, h, k_len, d)
        keep = None
        if hide_row:
            keep = torch.ones(b, 1, q_len, k_len, dtype=torch.bool)
            keep[1, :, 2] = False  # batch row 1, query 2 sees nothing
        ctx = causal_inputs(enc, q_len, k_len, keep)
        out = math_attention(q, k, v, ctx)
        out.sum().backward()
        assert q.grad is not None and torch.isfinite(out).all() and torch.isfinite(q.grad).all()
        hidden = torch.zeros(b, 1, q_len, dtype=torch.bool)
        if hide_row:
            hidden[1, 0, 2] = True
        if k_len < q_len:
            hidden[:, :, : q_len - k_len] = True  # query i sees keys j <= i + K - Q
        assert hidden.any() or k_len >= q_len
        assert (out.masked_select(hidden.unsqueeze(-1).expand_as(out)) == 0).all()
        if not hidden.any():  # no hidden row: exactly the plain masked softmax
            logits = (q @ k.transpose(-1, -2)) * d**-0.5
            bias = enc.score_bias(q, ctx.q_pos, ctx.k_pos)
            logits = logits if bias is None else logits + bias
            probs = logits.masked_fill(
                ~torch.ones(q_len, k_len, dtype=torch.bool).tril(), float("-inf")
            ).softmax(-1)
            extra = enc.value_term(probs, ctx.q_pos, ctx.k_pos)
            close(out, probs @ v + (0 if extra is None else extra))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["none", "alibi"])  # a bool mask, and a float one (the bias)
@pytest.mark.parametrize("q_len", [1, 4])
def test_sdpa_rows_without_a_visible_key_are_zero_without_the_pass(
    name: str, q_len: int, dtype: torch.dtype
) -> None:
    """Without gradients on a CPU, ``sdpa`` leaves hidden rows to torch's CPU kernel, which gives 0 itself (the
    pass costs a decode step one ``any`` and one ``where`` per layer): the same 0 as ``math``, and as ``sdpa``
    while recording gradients (where the pass runs). A torch whose CPU kernel changes this fails here."""
    from posenc.attention.backends import sdpa_attention

    torch.manual_seed(0)
    enc = encoding(name)
    b, h, d, k_len = 2, 4, 8, 6
    q = torch.randn(b, h, q_len, d, dtype=dtype)
    k, v = torch.randn(b, h, k_len, d, dtype=dtype), torch.randn(b, h, k_len, d, dtype=dtype)
    keep = torch.ones(b, 1, q_len, k_len, dtype=torch.bool)
    keep[1, :, -1] = False  # batch row 1, the last query sees nothing
    ctx = causal_inputs(enc, q_len, k_len, keep)
    with torch.no_grad():
        fast = sdpa_attention(q, k, v, ctx)
    recorded = sdpa_attention(q.requires_grad_(), k, v, ctx)
    assert torch.isfinite(fast).all() and (fast[1, :, -1] == 0).all()
    torch.testing.assert_close(fast, recorded.detach(), atol=0, rtol=0)
    want = math_attention(q.detach().float(), k.float(), v.float(), ctx)
    torch.testing.assert_close(fast.float(), want, atol=2e-2 if dtype == torch.bfloat16 else 2e-5, rtol=1e-2)
