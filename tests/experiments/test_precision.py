"""Mixed-precision training (``TrainConfig.precision``): bfloat16 products under autocast, float32 elsewhere."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from posenc.attention import AttentionInputs
from posenc.attention.backends import sdpa_attention
from posenc.base import NoPE
from posenc.experiments.presets import preset
from posenc.experiments.train import (
    PRECISIONS,
    TrainConfig,
    autocast_loss,
    lm_loss,
    native_bf16,
    resolve_precision,
    train_model,
)

TINY = TrainConfig(dim=16, depth=1, heads=2, train_len=8, batch_size=4, steps=6, lr=3e-3)
CPU = torch.device("cpu")


def _tokens() -> torch.Tensor:
    return torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_precision_is_checked_and_auto_follows_the_hardware() -> None:
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        TrainConfig(precision="fp16")
    assert PRECISIONS == ("auto", "fp32", "bf16") and TrainConfig().precision == "fp32"
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16(CPU) else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        autocast_loss(lm_loss, "auto", CPU)
    assert all(preset(name).train.precision == "auto" for name in ("demo", "cpu-long", "gpu"))
    assert preset("quick").train.precision == "fp32"


def test_bf16_runs_the_products_in_bfloat16_and_keeps_the_weights_in_float32() -> None:
    seen: list[torch.dtype] = []
    model = nn.Linear(4, 256)
    model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    net = lambda tokens: model(F.one_hot(tokens, 4).float())  # noqa: E731
    batch = torch.randint(0, 4, (2, 5))
    loss = autocast_loss(lambda n, b: lm_loss(n, b), "bf16", CPU)(net, batch)  # type: ignore[arg-type]
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32
    assert autocast_loss(lm_loss, "fp32", CPU) is lm_loss
    result = train_model("rope", _tokens(), replace(TINY, precision="bf16"), progress=False)
    plain = train_model("rope", _tokens(), TINY, progress=False)
    assert all(math.isfinite(x) for x in result.losses) and result.losses != plain.losses
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.losses[0] == pytest.approx(plain.losses[0], rel=2e-2)  # the same model, rounded otherwise
    again = train_model("rope", _tokens(), replace(TINY, precision="bf16"), progress=False)
    assert again.losses == result.losses  # deterministic for a seed, as float32 training is


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_attends_in_float32_under_cpu_autocast(causal: bool) -> None:
    """Under CPU autocast, bfloat16 q, k, v are attended in float32 (CPU flash attention is slower in
    bfloat16) and the result comes back in bfloat16, gradients included; off autocast bfloat16 stays."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=gen).bfloat16().requires_grad_() for _ in range(3))
    pos = torch.arange(5)[None]
    ctx = AttentionInputs(NoPE(), pos, pos, None, causal=causal)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sdpa_attention(q, k, v, ctx)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, want)
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
    plain = sdpa_attention(q, k, v, ctx)
    assert torch.equal(plain, F.scaled_dot_product_attention(q, k, v, is_causal=causal))
