"""``posenc.kernels.rope_qk``: impl choice, validation, tracing, meta device, and RoPE(impl=...)."""

from __future__ import annotations

import pytest
import torch

import posenc.kernels as kernels
from posenc.attention import Attention
from posenc.fallback import Fallback
from posenc.functional import apply_rope, rope_cos_sin, rope_inv_freq
from posenc.kernels import IMPLS, check_impl, choose_impl, rope_qk
from posenc.rotary.rope import RoPE


def _tables(seq: int, rot: int) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_cos_sin(torch.arange(seq), rope_inv_freq(rot))


def test_unknown_impl_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of auto, compiled, reference, triton"):
        check_impl("fast")
    with pytest.raises(ValueError, match="unknown RoPE impl"):
        RoPE(8, impl="fast")
    q = torch.randn(1, 1, 3, 8)
    with pytest.raises(ValueError, match="unknown RoPE impl"):
        rope_qk(q, q, *_tables(3, 8), impl="fast")


def test_auto_choices() -> None:
    cos, sin = _tables(4, 8)
    small = torch.empty(1, 2, 4, 8)
    assert choose_impl(small, small, cos, sin) == "reference"
    big_cos, big_sin = _tables(1024, 64)
    big = torch.empty(1, 8, 1024, 64)
    assert choose_impl(big, big, big_cos, big_sin) == "compiled"
    assert choose_impl(big.to("meta"), big.to("meta"), big_cos, big_sin) == "reference"
    assert choose_impl(big, big, big_cos.requires_grad_(), big_sin) == "reference"
    assert choose_impl(big.double(), big.float(), big_cos, big_sin) == "reference"


@pytest.mark.parametrize("impl", ["auto", *IMPLS.names()])
def test_meta_device_gives_shapes(impl: str) -> None:
    q, k = torch.empty(2, 4, 5, 16, device="meta"), torch.empty(2, 2, 5, 16, device="meta")
    cos, sin = torch.empty(5, 6, device="meta"), torch.empty(5, 6, device="meta")
    oq, ok = rope_qk(q, k, cos, sin, impl=impl)
    assert oq.shape == q.shape and ok.shape == k.shape and oq.is_meta


@pytest.mark.parametrize("impl", ["compiled", "triton"])
def test_kernels_do_not_differentiate_cos_sin(impl: str) -> None:
    q = torch.randn(1, 1, 3, 8)
    cos, sin = _tables(3, 8)
    with pytest.raises(ValueError, match="impl='reference'"):
        rope_qk(q, q, cos.requires_grad_(), sin, impl=impl)


def test_shape_errors_name_the_problem() -> None:
    q = torch.randn(1, 1, 3, 8)
    cos, sin = _tables(3, 8)
    with pytest.raises(ValueError, match="same shape"):
        rope_qk(q, q, cos, sin[:, :2], impl="compiled")
    with pytest.raises(ValueError, match="sequence length"):
        rope_qk(q, q, *_tables(4, 8), impl="compiled")
    with pytest.raises(ValueError, match="rotary dims"):
        rope_qk(q, q, *_tables(3, 10), impl="compiled")
    cos4, sin4 = rope_cos_sin(torch.zeros(3, 3, dtype=torch.long), rope_inv_freq(8))
    with pytest.raises(ValueError, match="batch"):
        rope_qk(q, q, cos4.unsqueeze(1), sin4.unsqueeze(1), impl="compiled")


@pytest.mark.parametrize("impl", ["reference", "compiled", "auto"])
def test_every_impl_refuses_shapes_that_would_broadcast(impl: str) -> None:
    """rope_qk checks shapes for every impl (it did only for the kernels): a k of batch 1 with per-row cos came
    back with q's batch, 3-D q/k came back 4-D from ``compiled``, a cos of another length was a broadcast error."""
    cos, sin = rope_cos_sin(torch.tensor([[0, 1, 2], [5, 6, 7]]), rope_inv_freq(8))
    q = torch.randn(2, 2, 3, 8)
    with pytest.raises(ValueError, match="batch of both q and k"):
        rope_qk(q, torch.randn(1, 1, 3, 8), cos.unsqueeze(1), sin.unsqueeze(1), impl=impl)
    with pytest.raises(ValueError, match="sequence length"):
        rope_qk(q, q, *_tables(4, 8), impl=impl)
    with pytest.raises(ValueError, match=r"4 dims, got shape \(2, 3, 8\)"):
        rope_qk(q[0], q[0], *_tables(3, 8), impl=impl)
    with pytest.raises(TypeError, match="floating-point"):
        rope_qk(q.long(), q, *_tables(3, 8), impl=impl)
    oq, ok = rope_qk(
        q, torch.randn(1, 1, 3, 8), *_tables(3, 8), impl=impl
    )  # a batch-1 k with shared cos: fine
    assert oq.shape == q.shape and ok.shape == (1, 1, 3, 8)


def test_rope_module_on_meta_device() -> None:
    with torch.device("meta"):
        rope = RoPE(16, rotary_dim=8)
        q, k = torch.empty(2, 4, 5, 16), torch.empty(2, 2, 5, 16)
    oq, ok = rope(q, k, torch.arange(5, device="meta"))
    assert oq.shape == q.shape and ok.shape == k.shape and oq.is_meta and ok.is_meta


def test_functorch_transforms_use_the_reference() -> None:
    cos, sin = _tables(3, 8)
    x = torch.randn(5, 1, 2, 3, 8)
    got = torch.func.vmap(lambda t: rope_qk(t, t, cos, sin, impl="compiled")[0])(x)
    torch.testing.assert_close(got, apply_rope(x, cos, sin))


def test_auto_falls_back_once_when_compiling_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernels, "rope_qk_compiled", broken)
    monkeypatch.setattr(kernels, "AUTO_COMPILED_MIN_NUMEL", 0)
    monkeypatch.setattr(kernels, "FALLBACK", Fallback("RoPE kernel"))
    q = torch.randn(1, 2, 3, 8)
    cos, sin = _tables(3, 8)
    assert choose_impl(q, q, cos, sin) == "compiled"
    out = rope_qk(q, q, cos, sin)
    torch.testing.assert_close(out[0], apply_rope(q, cos, sin))
    assert choose_impl(q, q, cos, sin) == "reference"
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        rope_qk(q, q, cos, sin, impl="compiled")  # a forced impl never falls back


def test_attention_with_compiled_rope_matches_reference_and_compiles_fullgraph() -> None:
    """Eager: the fused kernel gives the reference's outputs and grads. Under torch.compile(fullgraph=True)
    the same module traces the reference math: no graph break."""
    torch._dynamo.reset()  # a worker's earlier compiles of Attention.forward must not use up the recompile limit
    torch.manual_seed(0)
    ref = Attention(32, 4, kv_heads=2, position=RoPE(8, rotary_dim=6, impl="reference"))
    fast = Attention(32, 4, kv_heads=2, position=RoPE(8, rotary_dim=6, impl="compiled"))
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 32)
    positions = torch.tensor([[0, 1, 2, 3, 4], [9, 10, 11, 12, 13]])
    want = ref(x, positions=positions)
    got = fast(x, positions=positions)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    want.sum().backward()
    got.sum().backward()
    for p_ref, p_fast in zip(ref.parameters(), fast.parameters(), strict=True):
        assert p_ref.grad is not None and p_fast.grad is not None
        torch.testing.assert_close(p_fast.grad, p_ref.grad, atol=1e-5, rtol=1e-5)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, positions=positions), want.detach(), atol=1e-5, rtol=1e-5)


def test_rope_qk_refuses_a_non_bool_interleaved() -> None:
    """interleaved="no" was read by truthiness (as True) (fuzz #3)."""
    import posenc
    from posenc.kernels import rope_qk

    q = torch.randn(1, 1, 3, 8)
    cos, sin = posenc.functional.rope_cos_sin(torch.arange(3), posenc.functional.rope_inv_freq(8))
    with pytest.raises(TypeError, match="rope_qk: interleaved must be True or False, got 'no'"):
        rope_qk(q, q, cos, sin, interleaved="no")  # type: ignore[arg-type]


def test_triton_that_does_not_import_is_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed but failing to import: ``auto`` picked it on CUDA and every call raised "needs the triton
    package" (a ValueError, which the fallback takes for bad input)."""
    import posenc.kernels as kernels
    import posenc.kernels.triton_rope as triton_rope

    kernels.has_triton.cache_clear()
    monkeypatch.setattr(triton_rope, "HAS_TRITON", False)
    try:
        assert not kernels.has_triton()
    finally:
        kernels.has_triton.cache_clear()


def test_a_forced_triton_rope_with_positions_traces_on_meta() -> None:
    """The positions kernel refused meta tensors ("runs on CUDA"): on meta every impl traces the reference."""
    with torch.device("meta"):
        rope = RoPE(8, impl="triton")
        q = torch.randn(2, 3, 5, 8)
        out, _ = rope(q, q, torch.arange(5))
    assert out.is_meta and out.shape == (2, 3, 5, 8)


@pytest.mark.parametrize("impl", ["reference", "compiled", "auto"])
def test_every_impl_names_a_k_of_another_sequence_length(impl: str) -> None:
    """q and k share ``S`` with cos (rope_qk's docstring): a k of 5 positions against q and cos of 8 is refused,
    naming the three shapes, for every impl (not a broadcast error from inside the math or the compiler)."""
    q, k = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 5, 16)
    cos, sin = _tables(8, 16)
    with pytest.raises(
        ValueError, match=r"k \(1, 2, 5, 16\) and cos \(8, 8\) must share the sequence length"
    ):
        rope_qk(q, k, cos, sin, impl=impl)
    with pytest.raises(ValueError, match=r"q \(1, 2, 5, 16\), k \(1, 2, 8, 16\) .* must share the sequence"):
        rope_qk(k, q, cos, sin, impl=impl)
