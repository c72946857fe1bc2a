"""posenc.Attention: backends agree, masks, GQA, errors, compile."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import posenc


def pair(position: posenc.PositionEncoding | None, **kw: object) -> tuple[posenc.Attention, posenc.Attention]:
    fast = posenc.Attention(32, 4, position=position, backend="sdpa", **kw)  # type: ignore[arg-type]
    ref = posenc.Attention(32, 4, position=position, backend="math", **kw)  # type: ignore[arg-type]
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@given(st.sampled_from([1, 2, 4]), st.booleans(), st.integers(1, 9), st.sampled_from(["none", "rope"]))
def test_sdpa_equals_math(kv_heads: int, causal: bool, seq: int, name: str) -> None:
    torch.manual_seed(0)  # hypothesis replays examples: keep tensors reproducible
    fast, ref = pair(posenc.build(name, dim=32, heads=4), kv_heads=kv_heads, causal=causal)
    x = torch.randn(2, seq, 32, requires_grad=True)
    a, b = fast(x), ref(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    (ga,) = torch.autograd.grad(a.sum(), x)
    (gb,) = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)


def test_padding_mask_hides_keys() -> None:
    fast, ref = pair(posenc.RoPE(8), causal=False)
    x = torch.randn(2, 6, 32)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4:] = False
    out = fast(x, mask=keep)
    torch.testing.assert_close(out, ref(x, mask=keep), atol=1e-5, rtol=1e-5)
    changed = x.clone()
    changed[1, 4:] = 100.0  # padded keys: changing them must not change the other rows' outputs
    torch.testing.assert_close(fast(changed, mask=keep)[1, :4], out[1, :4], atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_give_zero_not_nan() -> None:
    fast, ref = pair(None, causal=False)
    keep = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    keep[..., 0, :] = True
    x = torch.randn(1, 3, 32)
    for attn in (fast, ref):
        assert torch.isfinite(attn(x, mask=keep)).all()


def test_gqa_equals_mha_with_repeated_kv_heads() -> None:
    gqa = posenc.Attention(32, 4, kv_heads=2, position=posenc.RoPE(8))
    mha = posenc.Attention(32, 4, position=posenc.RoPE(8))
    mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
    mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    for name in ("k_proj", "v_proj"):
        w = getattr(gqa, name).weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
        getattr(mha, name).weight.data.copy_(w)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_bad_configurations_raise() -> None:
    with pytest.raises(ValueError, match=r"dim \(30\) must be divisible by heads \(4\)"):
        posenc.Attention(30, 4)
    with pytest.raises(ValueError, match=r"heads \(4\) must be divisible by kv_heads \(3\)"):
        posenc.Attention(32, 4, kv_heads=3)
    with pytest.raises(ValueError, match="unknown attention backend"):
        posenc.Attention(32, 4, backend="fast")
    with pytest.raises(TypeError, match="PositionEncoding"):
        posenc.Attention(32, 4, position=torch.nn.Identity())  # type: ignore[arg-type]
    attn = posenc.Attention(32, 4)
    with pytest.raises(TypeError, match="bool"):
        attn(torch.randn(1, 3, 32), mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="keys"):
        attn(torch.randn(1, 3, 32), mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions"):
        attn(torch.randn(1, 3, 32), positions=torch.arange(4))
    with pytest.raises(TypeError, match="x is torch.bfloat16 but the projections are torch.float32"):
        attn(torch.randn(1, 3, 32, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for the products: allowed
        assert attn(torch.randn(1, 3, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_arguments_of_the_wrong_kind_are_named() -> None:
    """A list for ``cache``, ``mask`` or ``positions`` failed deep inside with AttributeError ("'list' object has
    no attribute 'update'", "... 'dtype'", "... 'is_floating_point'"); now a TypeError naming the argument."""
    attn = posenc.Attention(32, 4)
    x = torch.randn(2, 3, 32)
    with pytest.raises(TypeError, match=r"Attention: cache must be a posenc.KVCache .* got list"):
        attn(x, cache=[])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Attention: mask must be a bool tensor .* got list"):
        attn(x, mask=[[True] * 3] * 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Attention: positions must be an integer tensor, got list"):
        attn(x, positions=[0, 1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Attention: positions must be \(seq,\) or \(1 or 2, seq\)"):
        attn(x, positions=torch.zeros(3, 3, dtype=torch.long))


def test_dropout_only_in_training() -> None:
    attn = posenc.Attention(32, 4, dropout=0.5)
    x = torch.randn(1, 5, 32)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))
    attn.train()
    assert not torch.allclose(attn(x), attn(x))


@pytest.mark.parametrize(
    ("enc", "message"),
    [
        (lambda: posenc.ALiBi(4), "ALiBi was built for heads=4, but this Attention has heads=8"),
        (lambda: posenc.RoPE(16), "RoPE was built for head_dim=16, but this Attention has head_dim=8"),
        (
            lambda: posenc.build("shaw", dim=64, heads=4, per_head=True),
            "ShawRelative was built for heads=4, but this Attention has heads=8",
        ),
    ],
)
def test_an_encoding_of_other_sizes_is_refused_when_built(enc: Any, message: str) -> None:
    """Caught at construction, naming the size (before: at the first call, and for a per-head Shaw table as a
    head_dim mismatch of sizes the caller never gave)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        posenc.Attention(64, heads=8, position=enc())


def test_bias_and_x_are_checked() -> None:
    """bias="no" built projections with biases (truthiness, fuzz #3); x=None raised AttributeError and meta
    positions with CPU x "Cannot copy out of meta tensor" (fuzz #10)."""
    with pytest.raises(TypeError, match="Attention: bias must be True or False, got 'no'"):
        posenc.Attention(16, 2, bias="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Attention: bias must be True or False, got 0"):
        posenc.Attention(16, 2, bias=0)  # type: ignore[arg-type]
    a = posenc.Attention(16, 2, position=posenc.RoPE(8))
    for bad in (None, [[0.0] * 16], "x"):
        with pytest.raises(
            TypeError, match=r"Attention: x must be a floating-point tensor \(batch, seq, 16\)"
        ):
            a(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Attention: positions are on the meta device"):
        a(torch.randn(2, 5, 16), positions=torch.arange(5, device="meta"))
