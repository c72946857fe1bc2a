"""The attention statistics equal those of weights recomputed by hand from the model's own modules."""

from __future__ import annotations

import math

import pytest
import torch

import posenc
from posenc.models import TransformerLM
from posenc.plots.attention import (
    AttentionStats,
    attention_distance_figure,
    attention_entropy_figure,
    attention_stats,
    probing,
    uniform_mean_weight,
)


def model(name: str) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(name, dim=32, depth=2, heads=2).eval()


def by_hand(m: TransformerLM, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """``(B, H, N, N)`` weights of ``layer`` from q, k of its modules: rotate, bias, causal softmax."""
    x = m.input_position.embed(m.embed(tokens) * m.embed_scale)
    for block in m.blocks[:layer]:
        x = block(x, None, None, None)
    attn = m.blocks[layer].attn
    h = m.blocks[layer].norm1(x)
    b, n, _ = h.shape
    q = attn.q_proj(h).view(b, n, attn.heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, n, attn.kv_heads, attn.head_dim).transpose(1, 2)
    q, k = attn.position.rotate(q, k, None)
    logits = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    pos = torch.arange(n).unsqueeze(0)
    bias = attn.position.score_bias(q, pos, pos)
    if bias is not None:
        logits = logits + bias
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


@pytest.mark.parametrize("name", posenc.available())
def test_stats_match_weights_computed_by_hand(name: str) -> None:
    m = model(name)
    tokens = torch.randint(0, 256, (3 * 24,), dtype=torch.uint8)
    stats = attention_stats(m, tokens, 24, windows=3)
    assert stats is not None and len(stats) == 2
    x = tokens.view(3, 24).long()
    for layer, s in enumerate(stats):
        with torch.no_grad():
            p = by_hand(m, x, layer).double()  # (B, H, N, N)
        n = 24
        for d in (0, 1, 5, 23):
            diag = torch.diagonal(p, offset=-d, dim1=-2, dim2=-1)  # (B, H, N - d)
            assert s.mean_weight()[d].item() == pytest.approx(diag.mean().item(), rel=1e-4)
        entropy = -(p * p.clamp_min(1e-300).log()).sum(-1).mean(dim=(0, 1))  # (N,)
        torch.testing.assert_close(s.mean_entropy(), entropy, rtol=1e-4, atol=1e-5)
        assert s.rows == 3 * 2 and s.length == n


def test_probing_leaves_outputs_and_model_unchanged() -> None:
    m = model("shaw")  # needs the weights for its value term
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        before = m(x)
        with probing(m, 16):
            during = m(x)
        after = m(x)
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, before)
    assert all(type(b.attn.position).__name__ != "_Probe" for b in m.blocks)


def test_uniform_attention_gives_the_uniform_reference() -> None:
    m = model("none")
    for block in m.blocks:
        torch.nn.init.zeros_(block.attn.q_proj.weight)  # every logit 0: uniform causal attention
    stats = attention_stats(m, torch.randint(0, 256, (40,), dtype=torch.uint8), 20, windows=2)
    assert stats is not None
    torch.testing.assert_close(stats[0].mean_weight(), uniform_mean_weight(20), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        stats[1].mean_entropy(), torch.arange(1, 21).double().log(), rtol=1e-5, atol=1e-6
    )


def test_learned_table_shorter_than_the_window_is_skipped_and_figures_draw() -> None:
    m = TransformerLM("learned", dim=32, depth=1, heads=2, position_options={"max_len": 16})
    text = torch.randint(0, 256, (64,), dtype=torch.uint8)
    assert attention_stats(m, text, 32) is None
    measured = {"learned": {8: attention_stats(m, text, 8), 32: None}}
    dist = attention_distance_figure(measured, 8)
    assert dist.data["mean_weight"]["learned"]["32"] is None
    assert len(dist.data["mean_weight"]["learned"]["8"]["all_layers"]) == 8
    ent = attention_entropy_figure(measured, 8)
    assert ent.data["mean_entropy"]["learned"]["32"] is None
    # --windows past what the text holds is capped: the .json says how many windows were read per length
    capped = {
        "learned": {
            8: attention_stats(m, text, 8, windows=100),
            16: attention_stats(m, text, 16, windows=100),
        }
    }
    assert attention_distance_figure(capped, 8).data["windows"] == {"learned": {"8": 8, "16": 4}}
    assert dist.data["windows"] == ent.data["windows"] == {"learned": {"8": 2, "32": None}}  # (default 2)


def test_stats_reject_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="expected"):
        AttentionStats(4).add(torch.ones(1, 1, 5, 5))  # positions 0..4 in windows of 4
    with pytest.raises(ValueError, match="expected"):
        AttentionStats(4).add(torch.ones(1, 1, 2, 3), torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))


def test_stats_of_blocks_equal_the_whole_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without gradients ``math`` attends a block of queries at a time past MATH_BLOCK_BYTES; the probe then sees
    blocks, and adds them up to the same statistics."""
    from posenc.attention import backends

    torch.manual_seed(0)
    model = TransformerLM("shaw", dim=32, depth=2, heads=2).eval()
    text = torch.randint(0, 256, (200,), dtype=torch.uint8)
    whole = attention_stats(model, text, 48, windows=2)
    monkeypatch.setattr(backends, "MATH_BLOCK_BYTES", 2 * 2 * 48 * 4 * 5)  # blocks of 5 queries
    blocks = attention_stats(model, text, 48, windows=2)
    assert whole is not None and blocks is not None
    for w, b in zip(whole, blocks, strict=True):
        assert (w.rows, w.windows) == (b.rows, b.windows) == (4, 2)
        torch.testing.assert_close(b.weight_sum, w.weight_sum, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.pairs, w.pairs, atol=0, rtol=0)
        torch.testing.assert_close(b.entropy_sum, w.entropy_sum, atol=1e-5, rtol=1e-5)
