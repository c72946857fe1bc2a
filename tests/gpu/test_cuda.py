"""The GPU tier (``pytest -m gpu``, ``make gpu-check``): every fast path against its reference on CUDA.

Skipped where CUDA is absent, so ``make test`` stays green on CPU. Run on the GPU machine with its own torch:
kernels in fp32/bf16/fp16, every encoding through every backend against ``math`` forward and backward
(learned-bias gradients included), KV-cache decoding equal to the full forward, compiled ``generate`` replayed as
a CUDA graph with the eager tokens, and ``posenc bench --quick``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import posenc
from posenc.attention import BACKENDS
from posenc.cli import main
from posenc.functional import apply_rope
from posenc.kernels import rope_qk
from posenc.models import TransformerLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU tier needs CUDA"),
]
CUDA = "cuda"
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("impl", ["triton", "auto"])
def test_rope_kernels_equal_the_reference(dtype: torch.dtype, interleaved: bool, impl: str) -> None:
    torch.manual_seed(0)
    rope = posenc.RoPE(64, rotary_dim=48, interleaved=interleaved).to(CUDA)
    q = torch.randn(2, 8, 100, 64, device=CUDA, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 2, 100, 64, device=CUDA, dtype=dtype, requires_grad=True)
    cos, sin = rope.cos_sin(100, None, q.device)
    got = rope_qk(q, k, cos, sin, interleaved, impl=impl)
    want = (apply_rope(q, cos, sin, interleaved), apply_rope(k, cos, sin, interleaved))
    grads = [torch.randn_like(t) for t in want]
    g_got = torch.autograd.grad(got, (q, k), grads)
    g_want = torch.autograd.grad(want, (q, k), grads)
    for a, b in zip((*got, *g_got), (*want, *g_want), strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("positions", [None, [[5, 6, 7], [2047, 2048, 10**6]]])
def test_rope_kernels_keep_float64_and_take_many_heads(positions: list[list[int]] | None) -> None:
    """float64 q/k are rotated in float64 (the kernels were float32 only), and batch * (heads + kv_heads) past
    65535, CUDA's limit on a grid's second dimension, launches (was a ValueError under ``impl="auto"``)."""
    torch.manual_seed(0)
    fast, ref = posenc.RoPE(64).to(CUDA), posenc.RoPE(64, impl="reference").to(CUDA)
    pos = None if positions is None else torch.tensor(positions, device=CUDA)
    q = torch.randn(2, 8, 3, 64, device=CUDA, dtype=torch.float64)
    k = torch.randn(2, 2, 3, 64, device=CUDA, dtype=torch.float64)
    for g, w in zip(fast(q, k, pos), ref(q, k, pos), strict=True):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    q = torch.randn(1, 1, 3, 64, device=CUDA).expand(1700, 32, 3, 64)  # 1700 * (32 + 8) = 68000 heads
    k = torch.randn(1, 1, 3, 64, device=CUDA).expand(1700, 8, 3, 64)
    pos = None if pos is None else pos[:1]
    for g, w in zip(fast(q, k, pos), ref(q, k, pos), strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)


def _pair(name: str, backend: str, dtype: torch.dtype) -> tuple[posenc.Attention, posenc.Attention]:
    """``(fast, ref)``: the same weights through ``backend`` and through ``math``, each with its own copy of the
    encoding (a shared one would accumulate both backwards into one ``.grad`` and compare it with itself)."""
    torch.manual_seed(0)
    enc = posenc.build(name, dim=128, heads=4)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.rand_like(p) * 0.3)
    fast = posenc.Attention(128, 4, kv_heads=2, position=enc, backend=backend)
    ref = copy.deepcopy(fast)
    ref.backend = "math"
    return fast.to(CUDA, dtype), ref.to(CUDA, dtype)


def _output_and_grads(attn: posenc.Attention, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """The output and every parameter's gradient (float32; None for a parameter attention does not use) for the
    loss ``sum(out**2)``."""
    out = attn(x.to(next(attn.parameters()).dtype))
    out.float().square().sum().backward()
    got: dict[str, torch.Tensor | None] = {"output": out.detach().float()}
    for pname, p in attn.named_parameters():
        got[pname] = None if p.grad is None else p.grad.float()
    return got


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize(
    "positions", [[[1000]], [[2046, 2047, 2048, 10**6]], [[3, 4, 5, 6], [-1, 0, 5000, 7]]]
)
def test_rope_at_positions_one_launch_equals_the_reference(
    dtype: torch.dtype, positions: list[list[int]]
) -> None:
    """Explicit positions on CUDA (decode steps, offsets) go to the positions kernel; equal to the lookup +
    reference rotation, inside and past the table, forward and backward."""
    torch.manual_seed(0)
    fast, ref = posenc.RoPE(128).to(CUDA), posenc.RoPE(128, impl="reference").to(CUDA)
    pos = torch.tensor(positions, device=CUDA)
    b, s = (pos.shape[0], pos.shape[1])
    q = torch.randn(b, 32, s, 128, device=CUDA, dtype=dtype, requires_grad=True)
    k = torch.randn(b, 8, s, 128, device=CUDA, dtype=dtype, requires_grad=True)
    got, want = fast(q, k, pos), ref(q, k, pos)
    grads = (torch.randn_like(got[0]), torch.randn_like(got[1]))
    pairs = [
        *zip(got, want, strict=True),
        *zip(torch.autograd.grad(got, (q, k), grads), torch.autograd.grad(want, (q, k), grads), strict=True),
    ]
    for g, w in pairs:
        torch.testing.assert_close(g, w, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", [b for b in BACKENDS.names() if b != "math"])
@pytest.mark.parametrize(  # the encodings Attention takes (an absolute one goes on the token embeddings)
    "name", [n for n in posenc.available() if posenc.encoding_class(n).family != "absolute"]
)
def test_every_encoding_through_every_backend_forward_and_backward(
    name: str, backend: str, dtype: torch.dtype
) -> None:
    """Output and every gradient (learned bias tables included) against ``math``. In float32 they agree to 1e-4
    of each tensor's scale; in bfloat16 the fast path is within twice the bfloat16 ``math`` path's own error
    from float32 ``math`` at the same weights (plus 1e-2 of the scale): bfloat16 rounding, not a bug."""
    fast, ref = _pair(name, backend, dtype)
    if fast.position.needs_probs:
        pytest.skip(f"{name} needs the attention weights: math only")
    x = torch.randn(2, 300, 128, device=CUDA)
    got, low = _output_and_grads(fast, x), _output_and_grads(ref, x)
    want = low if dtype == torch.float32 else _output_and_grads(copy.deepcopy(ref).float(), x)
    for key, w in want.items():
        g, lo = got[key], low[key]
        if w is None or g is None or lo is None:  # used by one backend and not the other: a bug
            assert w is None and g is None and lo is None, (
                f"{name} {backend}: only one side has a {key} gradient"
            )
            continue
        scale = (
            w.abs().max().clamp_min(1.0)
        )  # absolute for small tensors (a shift-invariant bias's gradient ~ 0)
        err = ((g - w) / scale).abs().max().item()
        bound = 1e-4 if dtype == torch.float32 else 2 * ((lo - w) / scale).abs().max().item() + 1e-2
        assert err <= bound, (
            f"{name} {backend} {dtype}: {key} is {err:.3g} of its scale from math (> {bound:.3g})"
        )


@pytest.mark.parametrize("name", posenc.available())
def test_kv_cache_decoding_equals_full_forward(name: str) -> None:
    model = TransformerLM(name, dim=64, depth=2, heads=4, kv_heads=2).to(CUDA).eval()
    tokens = torch.randint(0, 256, (2, 40), device=CUDA)
    with torch.no_grad():
        full = model(tokens)
        caches = model.new_caches(64)
        steps = [model(tokens[:, :8], caches=caches)]
        steps += [model(tokens[:, i : i + 1], caches=caches) for i in range(8, 40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["none", "rope", "alibi", "t5"])
def test_compiled_generate_replays_a_cuda_graph_and_gives_the_eager_tokens(name: str) -> None:
    """Issue #10: ``compile=True`` on CUDA compiles the step with ``mode="reduce-overhead"``; inductor must not
    skip CUDA graphs (its ``cudagraph_skips`` counter stays put), and greedy tokens equal the eager ones."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = TransformerLM(name, dim=64, depth=2, heads=4).to(CUDA).eval()
    prompt = torch.randint(0, 256, (2, 12), device=CUDA)
    want = model.generate(prompt, 16, temperature=0)
    skips = counters["inductor"]["cudagraph_skips"]
    got = model.generate(prompt, 16, temperature=0, compile=True)
    again = model.generate(prompt, 16, temperature=0, compile=True)  # replays the recorded graph
    assert counters["inductor"]["cudagraph_skips"] == skips, (
        "inductor skipped CUDA graphs for the decode step"
    )
    assert torch.equal(got, want) and torch.equal(again, want)


def test_bench_quick_completes(tmp_path: Path) -> None:
    assert main(["bench", "--quick", "--device", "cuda", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.json").exists()


@pytest.mark.parametrize("name", ["rope", "alibi", "t5", "shaw"])
def test_mixed_precision_training_steps_run(name: str) -> None:
    """``--preset gpu`` trains under bf16 autocast (``precision="auto"`` on a bf16-capable card): a few steps of
    one encoding per path (rotary; a fixed and a learned bias through ``flex`` with its backward; Shaw through
    ``math``) give finite losses and float32 weights. Four, not ten: each flex backward compiles."""
    from posenc.experiments.train import TrainConfig, native_bf16, train_model

    if not native_bf16(torch.device(CUDA)):
        pytest.skip("this card has no native bfloat16")
    # 1,024^2 scores per head: auto picks flex for the biases (FLEX_MIN_SCORES)
    cfg = TrainConfig(dim=64, depth=2, heads=4, train_len=1024, batch_size=2, steps=3, precision="auto")
    tokens = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    result = train_model(name, tokens, cfg, device=CUDA, progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
