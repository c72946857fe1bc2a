"""FlexAttention's backward as a GPU traces it, run on the CPU: learned-bias gradients through ``flex``.

torch has no CPU kernel for FlexAttention's backward and refuses CPU inputs that need gradients before it
traces anything. The tracing itself (dynamo, then AOT autograd's joint graph of the ``score_mod`` with the
tensors it captures) is the same on every device, and two GPU-only failures came from it: a captured strided
view (T5's transposed table) silently got no gradient, and a captured 0-d tensor read without indexing (FIRE's
``c``) failed to trace. Here the device check is lifted and ``flex_attention`` is compiled with the
``aot_eager`` backend (AOT's graphs, eager kernels), for every ``score_mod`` an encoding hands out while learning
on an accelerator: values and every gradient (q, k, v, the encoding's parameters) against ``math``.

Not covered: inductor's lowering of the backward (its own rules, such as one indexing per captured tensor);
that needs a GPU (``tests/gpu``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.attention.flex_attention as flex_module
from torch import Tensor

import posenc
import posenc.attention.flex as posenc_flex
from posenc.attention import BACKENDS, AttentionInputs
from posenc.base import ScoreMod
from posenc.bias import FIRE, BiasEncoding

N, HEADS, D = 48, 4, 8


@pytest.fixture(scope="module")
def traced_flex() -> Iterator[Callable[..., Tensor]]:
    """``flex_attention`` through dynamo + AOT autograd, eager kernels, CPU inputs needing gradients allowed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flex_module, "_validate_device", lambda *args, **kwargs: None)
        torch._dynamo.reset()
        with torch._dynamo.config.patch(recompile_limit=64):
            yield torch.compile(flex_module.flex_attention, backend="aot_eager", fullgraph=True)
        torch._dynamo.reset()


def _accelerator_mods(enc: BiasEncoding, q_pos: Tensor, k_pos: Tensor) -> dict[str, ScoreMod]:
    """The score_mods ``enc.score_mod`` returns while learning on an accelerator (see ``BiasEncoding.score_mod``
    and ``FIRE.score_mod``): FIRE's unbound one; else per distance where it applies and per score otherwise
    (the per-score one is also what the CPU branch returns)."""
    if isinstance(enc, FIRE):
        return {"unbound": enc.score_mod_unbound(q_pos, k_pos)}
    q = torch.zeros(q_pos.shape[0], HEADS, q_pos.shape[-1], D)
    mods = {"per score": BiasEncoding.score_mod(enc, q, q_pos, k_pos)}
    by_distance = enc.score_mod_by_distance(q_pos, k_pos)
    if by_distance is not None:
        mods["per distance"] = by_distance
    return {name: mod for name, mod in mods.items() if mod is not None}


POSITIONS = {
    "consecutive": lambda: torch.arange(N)[None],
    "per row": lambda: torch.stack((torch.arange(N) + 3, torch.arange(N) * 2)),
}


@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("name", posenc.available(family="bias"))
def test_every_learning_score_mod_traces_with_the_math_gradients(
    name: str, positions: str, traced_flex: Callable[..., Tensor]
) -> None:
    torch.manual_seed(0)
    enc = posenc.build(name, heads=HEADS)
    assert isinstance(enc, BiasEncoding)
    with torch.no_grad():  # away from the initial values, so every parameter's gradient is informative
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pos = POSITIONS[positions]()
    q, k, v = (torch.randn(pos.shape[0], HEADS, N, D, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(pos.shape[0], HEADS, N, D)
    wrt = [q, k, v, *enc.parameters()]
    ctx = AttentionInputs(position=enc, q_pos=pos, k_pos=pos, keep=None, causal=False, training=True)
    want_out = BACKENDS["math"](q, k, v, ctx)
    want = torch.autograd.grad(want_out, wrt, grad_out)
    mods = _accelerator_mods(enc, pos, pos)
    assert mods
    for label, mod in mods.items():
        out = traced_flex(q, k, v, score_mod=mod)
        torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5, msg=f"{label}: values")
        got = torch.autograd.grad(out, wrt, grad_out, allow_unused=True)
        names = ["q", "k", "v", *(n for n, _ in enc.named_parameters())]
        for pname, g, w in zip(names, got, want, strict=True):
            assert g is not None, f"{label}: no gradient for {pname} (dropped by the traced backward)"
            scale = w.abs().max().clamp_min(1.0)
            torch.testing.assert_close(
                g / scale, w / scale, atol=2e-5, rtol=2e-5, msg=lambda m, at=f"{label}, {pname}": f"{at}: {m}"
            )


@pytest.fixture
def flex_backend_traced(traced_flex: Callable[..., Tensor]) -> Iterator[None]:
    """posenc's ``flex`` backend (block mask, kernel options, score_mod choice) on the traced function above,
    with its refusal of CPU training lifted."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(posenc_flex, "flex_kernel", lambda device, *callables: traced_flex)
        mp.setattr(posenc_flex, "needs_grad", lambda position, *tensors: False)
        yield


TRAINABLE = [(name, {}) for name in posenc.available(family="bias")] + [("shaw", {"values": False})]


@pytest.mark.parametrize(("positions", "kv_heads"), [("consecutive", HEADS), ("per row", HEADS // 2)])
@pytest.mark.parametrize(("name", "options"), TRAINABLE, ids=[n for n, _ in TRAINABLE])
def test_the_flex_backend_trains_like_math(
    name: str, options: dict[str, object], positions: str, kv_heads: int, flex_backend_traced: None
) -> None:
    """The whole backend, causal, as training calls it (also per-row positions with grouped kv heads): output
    and every gradient equal ``math``'s."""
    torch.manual_seed(0)
    enc = posenc.build(name, heads=HEADS, head_dim=D, **options)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    n = 256  # two 128-blocks: the block mask has a full, a partial and an empty block
    pos = (
        torch.arange(n)[None]
        if positions == "consecutive"
        else torch.stack((torch.arange(n), torch.arange(n) * 3 + 7))
    )
    b = pos.shape[0]
    q = torch.randn(b, HEADS, n, D, requires_grad=True)
    k, v = (torch.randn(b, kv_heads, n, D, requires_grad=True) for _ in range(2))
    grad_out = torch.randn(b, HEADS, n, D)
    wrt = [q, k, v, *enc.parameters()]
    ctx = AttentionInputs(position=enc, q_pos=pos, k_pos=pos, keep=None, causal=True, training=True)
    want_out = BACKENDS["math"](q, k, v, ctx)
    want = torch.autograd.grad(want_out, wrt, grad_out)
    out = BACKENDS["flex"](q, k, v, ctx)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad(out, wrt, grad_out, allow_unused=True)
    names = ["q", "k", "v", *(n for n, _ in enc.named_parameters())]
    for pname, g, w in zip(names, got, want, strict=True):
        assert g is not None, f"no gradient for {pname}"
        scale = w.abs().max().clamp_min(1.0)  # a scalar's gradient sums n^2 terms: float32 order differs
        torch.testing.assert_close(
            g / scale, w / scale, atol=1e-4, rtol=1e-4, msg=lambda m, at=pname: f"{at}: {m}"
        )
