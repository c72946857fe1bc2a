"""Modules left on the meta device meet real inputs with a clear error, and ``torch.export`` leaves the module it
traced as it was (review s4, serialization)."""

from __future__ import annotations

import copy as copy_module

import pytest
import torch

import posenc

DIM, HEADS = 32, 4


def _on_meta(name: str) -> posenc.PositionEncoding:
    with torch.device("meta"):
        return posenc.build(name, dim=DIM, heads=HEADS)


@pytest.mark.parametrize(
    "name", [None, *(n for n in posenc.available() if posenc.encoding_class(n).family != "absolute")]
)
def test_an_attention_left_on_meta_refuses_real_input(name: str | None) -> None:
    """Built on meta and never loaded, NoPE and Shaw returned uninitialised CPU memory (NaN with Shaw)."""
    with torch.device("meta"):
        attn = posenc.Attention(
            DIM, HEADS, position=None if name is None else posenc.build(name, dim=DIM, heads=HEADS)
        )
    with pytest.raises(ValueError, match="Attention: x is on cpu but the module's weights are on meta"):
        attn(torch.randn(1, 5, DIM))


@pytest.mark.parametrize("name", ["alibi", "t5", "kerple", "fire", "xpos", "shaw"])
def test_an_encoding_left_on_meta_names_the_device(name: str) -> None:
    """A user's own module built on meta and loaded with assign=True keeps meta tables (only Attention and
    TransformerLM rebuild them): torch's "not on the expected device meta" or, for T5, a meta bias for CPU
    queries. Now one message naming the input and the tables."""
    enc = _on_meta(name)
    q = torch.randn(1, HEADS, 5, DIM // HEADS)
    pos = torch.arange(5).unsqueeze(0)
    with pytest.raises(ValueError, match="is on cpu but the module's tables are on meta"):
        if name == "xpos":
            enc.rotate(q, q, pos)
        else:
            enc.score_bias(q, pos, pos)
    if name == "shaw":
        with pytest.raises(ValueError, match="ShawRelative: probs is on cpu"):
            enc.value_term(torch.rand(1, HEADS, 5, 5), pos, pos)
        with pytest.raises(ValueError, match="ShawRelative: q_pos is on cpu"):
            enc.kv_rows(pos[:, -1:], pos)


@pytest.mark.parametrize("name", ["alibi", "t5", "kerple"])
def test_export_leaves_the_module_it_traced_usable(name: str) -> None:
    """A head index kept for CPU calls was filled with export's fake tensor when the first call was the trace:
    afterwards the eager module returned fake tensors, and deepcopy failed."""
    torch.manual_seed(0)
    attn = posenc.Attention(DIM, HEADS, position=posenc.build(name, dim=DIM, heads=HEADS)).eval()
    x = torch.randn(1, 6, DIM)
    exported = torch.export.export(attn, (x,))
    out = attn(x)
    assert type(out) is torch.Tensor
    torch.testing.assert_close(exported.module()(x), out, rtol=0, atol=0)
    copy = copy_module.deepcopy(attn)
    torch.testing.assert_close(copy(x), out, rtol=0, atol=0)
