"""Properties every bias encoding shares: shapes, offsets, score_mod == score_bias, compile, cache, LM."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

import posenc
from posenc.attention import flex as flex_module
from posenc.models import TransformerLM

NAMES = posenc.available(family="bias")


def build(name: str, **kw: Any) -> posenc.PositionEncoding:
    return posenc.build(name, dim=32, heads=4, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_offset_rows_are_rows_of_the_full_bias(name: str) -> None:
    enc = build(name)
    full = enc.bias(12, 12)
    assert full.shape == (4, 12, 12)
    torch.testing.assert_close(enc.bias(3, 12, offset=9), full[:, 9:])  # KV cache: last 3 queries


@pytest.mark.parametrize("name", NAMES)
def test_score_mod_elementwise_equals_score_bias(name: str) -> None:
    enc = build(name)
    q = torch.zeros(2, 4, 5, 8)
    q_pos = torch.tensor([[0, 1, 2, 3, 4], [7, 9, 30, 31, 600]])
    k_pos = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 9, 30, 31, 600, 601]])
    mod = enc.score_mod(q, q_pos, k_pos)
    assert mod is not None
    b, h = torch.arange(2).view(-1, 1, 1, 1), torch.arange(4).view(1, -1, 1, 1)
    qi, ki = torch.arange(5).view(1, 1, -1, 1), torch.arange(6).view(1, 1, 1, -1)
    via_mod = mod(torch.zeros(()), b, h, qi, ki)  # broadcasting stands in for FlexAttention's vmap
    torch.testing.assert_close(via_mod, enc.score_bias(q, q_pos, k_pos).expand(2, 4, 5, 6))


@pytest.mark.parametrize("name", NAMES)
def test_compiles_fullgraph(name: str) -> None:
    enc = build(name)
    attn = posenc.Attention(32, 4, position=enc, backend="sdpa").eval()
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(attn, fullgraph=True, backend="eager")(x), attn(x))


@pytest.mark.parametrize("name", NAMES)
def test_lm_trains_and_decodes_with_cache(name: str) -> None:
    model = TransformerLM(name, dim=32, depth=1, heads=4)
    tokens = torch.randint(0, 256, (2, 8))
    model(tokens).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.blocks[0].attn.position.parameters())
    model.eval()
    with torch.no_grad():
        caches = model.new_caches()
        steps = torch.cat([model(tokens[:, i : i + 1], caches=caches) for i in range(8)], dim=1)
        torch.testing.assert_close(steps, model(tokens), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_meta_device(name: str) -> None:
    with torch.device("meta"):
        enc = build(name)
        assert enc.bias(3, 5, offset=2).shape == (4, 3, 5)


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
def test_flex_backend_traces_fullgraph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamo traces the flex path (score_mod, block mask) without graph breaks; "eager" skips codegen."""
    monkeypatch.setattr(flex_module, "flex_kernel", lambda device: flex_attention)  # uncompiled reference
    attn = posenc.Attention(32, 4, kv_heads=2, position=build("t5"), backend="flex").eval()
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(attn, fullgraph=True, backend="eager")(x), attn(x))
