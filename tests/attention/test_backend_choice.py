"""How ``auto`` chooses a backend (:func:`posenc.attention.backends.choose_backend`), and how it falls back when
FlexAttention cannot run here (:class:`posenc.fallback.Fallback`), without giving it up for errors of the input."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import posenc
from posenc.attention import backends
from posenc.attention.backends import (
    BACKENDS,
    AttentionInputs,
    choose_backend,
    flex_or_sdpa,
    math_attention,
    sdpa_attention,
)
from posenc.attention.flex import flex_attention_backend
from posenc.fallback import Fallback

pytestmark = pytest.mark.usefixtures("eager_flex")  # (tests/conftest.py)


def test_auto_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    alibi, t5, rope = posenc.ALiBi(4), posenc.T5Bias(4), posenc.RoPE(8)
    shaw = posenc.build("shaw", dim=32, heads=4)
    pos = torch.arange(1024)[None]

    def pick(
        enc: posenc.PositionEncoding,
        n: int = 1024,
        grad: bool = False,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> object:
        q = torch.randn(1, 4, n, 8, requires_grad=grad, dtype=dtype)
        ctx = AttentionInputs(enc, pos[:, :n], pos[:, :n], None, causal=True, dropout_p=dropout)
        return choose_backend("auto", q, ctx)

    assert pick(shaw) is math_attention
    assert pick(rope) is sdpa_attention  # no bias: SDPA's fused kernels
    assert pick(alibi, n=64) is sdpa_attention  # small: nothing to save
    assert pick(alibi) is flex_or_sdpa  # CPU inference: flex, sdpa if flex cannot run here
    assert pick(alibi, grad=True) is sdpa_attention  # CPU training: no FlexAttention backward on CPU
    assert pick(alibi, dropout=0.1) is sdpa_attention
    assert pick(alibi, dtype=torch.float64) is sdpa_attention  # torch's CPU FlexAttention has no float64
    with torch.no_grad():
        assert pick(t5) is flex_or_sdpa  # learned table, but no gradient wanted
    assert pick(t5) is sdpa_attention
    assert BACKENDS["flex"] is flex_attention_backend
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert pick(alibi) is sdpa_attention  # compiled on a CPU: inductor fails to lower a nested CPU flex


@pytest.mark.slow
def test_a_compiled_model_whose_eager_auto_takes_flex_compiles_with_inductor() -> None:
    """``auto`` took flex on a CPU inside the compiled graph too, where inductor (torch 2.13) cannot lower it."""
    torch.manual_seed(0)
    model = posenc.models.TransformerLM("alibi", dim=16, depth=1, heads=2).eval()
    tokens = torch.randint(0, 256, (1, 1024))
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(tokens), model(tokens))


def test_auto_rule_compiled_cpu_mixed_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Traced on a CPU under bf16 autocast, ``auto`` attends with ``math`` for short sequences (inductor fuses
    it, both products in bf16); everything else as in eager mode."""
    pos = torch.arange(2048)[None]

    def pick(enc: posenc.PositionEncoding, n: int = 128, dtype: torch.dtype = torch.bfloat16) -> object:
        q = torch.randn(1, 4, n, 8, dtype=dtype, requires_grad=True)
        ctx = AttentionInputs(enc, pos[:, :n], pos[:, :n], None, causal=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return choose_backend("auto", q, ctx)

    rope, none, alibi = posenc.RoPE(8), posenc.build("none"), posenc.ALiBi(4)
    assert pick(rope) is sdpa_attention  # eager: float32 flash attention is faster unfused
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert pick(rope) is math_attention and pick(none) is math_attention
    assert pick(alibi) is math_attention  # the bias fused into the softmax
    assert pick(rope, n=1024) is sdpa_attention  # 1M scores per head: not materialized
    assert pick(rope, dtype=torch.float32) is sdpa_attention  # float32 training: SDPA as before


def test_compiled_mixed_precision_lm_matches_eager_within_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled bf16 forward (math attention, products in bf16) stays within bfloat16 rounding of the
    eager one (sdpa in float32), and its gradients point the same way."""
    used: list[str] = []
    real_math, real_sdpa = backends.math_attention, backends.sdpa_attention

    def math_spy(*args: Any) -> torch.Tensor:
        used.append("math")
        return real_math(*args)

    def sdpa_spy(*args: Any) -> torch.Tensor:
        used.append("sdpa")
        return real_sdpa(*args)

    monkeypatch.setattr(backends, "math_attention", math_spy)
    monkeypatch.setattr(backends, "sdpa_attention", sdpa_spy)
    torch.manual_seed(0)
    model = posenc.models.TransformerLM("rope", dim=32, depth=2, heads=4).train()
    tokens = torch.randint(0, 256, (2, 33))

    def loss_of(net: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager_loss, eager_grads = loss_of(model)
    assert set(used) == {"sdpa"}  # eager: float32 SDPA
    seen = len(used)
    comp_loss, comp_grads = loss_of(torch.compile(model, fullgraph=True))
    assert used[seen:] == ["math", "math"]  # the compiled forward took rule 3, once per layer
    torch.testing.assert_close(comp_loss, eager_loss, atol=2e-2, rtol=0)
    flat = [torch.cat([g.flatten() for g in gs]) for gs in (eager_grads, comp_grads)]
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.99


def test_auto_falls_back_to_sdpa_when_flex_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(backends, "flex_attention_backend", broken)
    monkeypatch.setattr(backends, "FALLBACK", Fallback("attention backend"))
    enc = posenc.ALiBi(4)
    pos = torch.arange(1024)[None]
    q, k, v = torch.randn(3, 1, 4, 1024, 8)
    ctx = AttentionInputs(enc, pos, pos, None, causal=True)
    out = choose_backend("auto", q, ctx)(q, k, v, ctx)
    torch.testing.assert_close(out, math_attention(q, k, v, ctx), atol=1e-5, rtol=1e-5)
    assert choose_backend("auto", q, ctx) is sdpa_attention  # remembered: no retry on every call


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
        TypeError("mask must be a bool tensor"),
    ],
)
def test_auto_does_not_give_up_flex_for_good_on_out_of_memory_or_bad_input(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """An out-of-memory error (one batch too large) or a TypeError (bad input) in ``auto``'s flex marked flex as
    unable to run on this machine: every later call used ``sdpa`` (its materialized bias) for the rest of the
    process. Now both propagate and flex stays usable."""

    def failing(*args: object) -> torch.Tensor:
        raise error

    monkeypatch.setattr(backends, "flex_attention_backend", failing)
    monkeypatch.setattr(backends, "FALLBACK", Fallback("attention backend"))
    pos = torch.arange(1024)[None]
    q, k, v = torch.randn(3, 1, 4, 1024, 8)
    ctx = AttentionInputs(posenc.ALiBi(4), pos, pos, None, causal=True)
    with pytest.raises(type(error)):
        choose_backend("auto", q, ctx)(q, k, v, ctx)
    assert choose_backend("auto", q, ctx) is flex_or_sdpa


def test_keys_and_values_that_train_keep_flex_off_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the query projection frozen (LoRA on k and v) only k and v need gradients: a forced flex raised torch's
    NotImplementedError, and auto tried flex, failed and turned it off for the process."""
    monkeypatch.setattr(backends, "FALLBACK", Fallback("attention backend"))
    torch.manual_seed(0)
    x = torch.randn(1, 1024, 16)
    for backend in ("flex", "auto"):
        attn = posenc.Attention(16, 2, position=posenc.ALiBi(2), backend=backend).train()
        attn.q_proj.weight.requires_grad_(False)
        if backend == "flex":
            with pytest.raises(ValueError, match="FlexAttention has no backward on CPU"):
                attn(x[:, :64])
        else:
            attn(x).sum().backward()
            assert attn.k_proj.weight.grad is not None
    assert backends.FALLBACK.failed == set()


def test_an_empty_batch_with_a_mask_and_a_mask_of_another_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "FALLBACK", Fallback("attention backend"))
    for backend in ("flex", "auto"):
        attn = posenc.Attention(16, 2, position=posenc.ALiBi(2), backend=backend).eval()
        with torch.no_grad():
            out = attn(torch.randn(0, 1024, 16), mask=torch.ones(0, 1024, dtype=torch.bool))
        assert out.shape == (0, 1024, 16)
    assert backends.FALLBACK.failed == set()  # (flex failed in inductor and auto turned it off)
    with pytest.raises(ValueError, match=r"mask \(3, 5\): a \(batch, keys\) mask needs batch 1 or 2"):
        posenc.Attention(16, 2)(torch.randn(2, 5, 16), mask=torch.ones(3, 5, dtype=torch.bool))


def test_a_fast_path_failing_on_input_the_slow_one_refuses_too_stays_usable() -> None:
    """An error torch raises as RuntimeError for bad input turned the fast path off for the process."""
    fb = Fallback("test")

    def fast() -> int:
        raise RuntimeError("inference tensors cannot be saved for backward")

    def slow() -> int:
        raise RuntimeError("inference tensors cannot be saved for backward (slow)")

    with pytest.raises(RuntimeError, match=r"\(slow\)"):
        fb.run("fast", fast, slow, "slow")
    assert fb.usable("fast")
    assert fb.run("fast", fast, lambda: 3, "slow") == 3 and not fb.usable("fast")  # the machine's failure
