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
    # the uncompiled reference
    monkeypatch.setattr(flex_module, "flex_kernel", lambda device, *callables: flex_attention)
    attn = posenc.Attention(32, 4, kv_heads=2, position=build("t5"), backend="flex").eval()
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(attn, fullgraph=True, backend="eager")(x), attn(x))


@pytest.mark.parametrize("name", [n for n in NAMES if posenc.encoding_class(n).by_distance])  # type: ignore[attr-defined]
@pytest.mark.parametrize(
    ("q_start", "k_start", "q_len", "k_len"), [(0, 0, 7, 7), (5, 0, 3, 8), (300, 40, 4, 9)]
)
def test_distance_vector_path_equals_the_formula_with_gradients(
    name: str, q_start: int, k_start: int, q_len: int, k_len: int
) -> None:
    """Consecutive positions read one value per distance; values and parameter gradients equal the per-pair formula."""
    enc = build(name, **({"max_distance": 6, "num_buckets": 8} if name == "t5" else {}))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.rand_like(p))
    q_pos = torch.arange(q_start, q_start + q_len)[None]
    k_pos = torch.arange(k_start, k_start + k_len)[None]
    fast = enc.pairwise_by_distance(q_pos, k_pos)  # type: ignore[operator]
    ref = enc.pairwise_reference(q_pos, k_pos)  # type: ignore[operator]
    assert fast is not None
    torch.testing.assert_close(fast, ref)
    weight = torch.randn_like(ref)
    g_fast = torch.autograd.grad((fast * weight).sum(), list(enc.parameters()))
    g_ref = torch.autograd.grad((ref * weight).sum(), list(enc.parameters()))
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    mod = enc.score_mod_by_distance(q_pos, k_pos)  # type: ignore[operator]
    assert mod is not None
    h, qi, ki = (
        torch.arange(4).view(-1, 1, 1),
        torch.arange(q_len).view(1, -1, 1),
        torch.arange(k_len).view(1, 1, -1),
    )
    torch.testing.assert_close(mod(torch.zeros(()), torch.zeros((), dtype=torch.long), h, qi, ki), ref[0])


def test_distance_path_applies_only_to_shared_consecutive_positions() -> None:
    enc = build("t5")
    run = torch.arange(3, 8)[None]
    assert enc.pairwise_by_distance(run, run) is not None  # type: ignore[operator]
    assert enc.pairwise_by_distance(torch.tensor([[0, 2, 3, 4, 5]]), run) is None  # type: ignore[operator]
    assert enc.pairwise_by_distance(torch.stack([run[0], run[0]]), run) is None  # type: ignore[operator]
    assert build("alibi").pairwise_by_distance(run, run) is None  # type: ignore[operator]


@pytest.mark.parametrize("name", [n for n in NAMES if posenc.encoding_class(n).by_distance])  # type: ignore[attr-defined]
@pytest.mark.parametrize("positions", [[0, 1, 1, 3], [2, 4, 3, 5], [7, 7, 9, 10]])
def test_positions_with_a_runs_endpoints_but_other_steps_take_the_per_pair_path(
    name: str, positions: list[int]
) -> None:
    """Positions whose first and last values are those of ``start + arange`` but which are not consecutive (a
    repeat, a swap) are no run: no distance vector, and the bias (materialized and per score) is the per-pair
    formula's at the actual positions. An endpoint check (``row[-1] - row[0] == len - 1``) took ``[0, 1, 1, 3]``
    for a run and read the bias at ``[0, 1, 2, 3]`` (6e-3 off for T5, review s5)."""
    enc = build(name, **({"max_distance": 6, "num_buckets": 8} if name == "t5" else {}))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.rand_like(p))
    pos, run = torch.tensor([positions]), torch.arange(positions[0], positions[0] + 4)[None]
    assert enc.pairwise_by_distance(pos, run) is None  # type: ignore[operator]
    assert enc.pairwise_by_distance(run, pos) is None  # type: ignore[operator]
    ref = enc.pairwise_reference(pos, pos)  # type: ignore[operator]
    assert not torch.allclose(ref, enc.pairwise_reference(run, run))  # type: ignore[operator]
    with torch.no_grad():  # (CPU inference: where the distance path would be taken)
        torch.testing.assert_close(enc.pairwise(pos, pos), ref)  # type: ignore[operator]
        mod = enc.score_mod(torch.zeros(1, 4, 4, 8), pos, pos)
        assert mod is not None
        h, qi, ki = (
            torch.arange(4).view(-1, 1, 1),
            torch.arange(4).view(1, -1, 1),
            torch.arange(4).view(1, 1, -1),
        )
        torch.testing.assert_close(mod(torch.zeros(()), torch.zeros((), dtype=torch.long), h, qi, ki), ref[0])


def test_a_t5_max_distance_whose_tables_do_not_fit_is_refused_before_allocating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """T5Bias(8, max_distance=10**12) died in the allocator building its (2M+1,) buckets; now the argument, the
    size and the largest max_distance that fits are named."""
    import posenc.validation

    with pytest.raises(
        ValueError,
        match=r"^T5Bias: max_distance=1000000000000 would take 74,505.8 GiB for a bucket per clipped distance, "
        r"a \(heads, 2 \* max_distance \+ 1\) table and a \(num_buckets, heads\) one, .* max_distance takes at "
        r"most [\d,]+ here$",
    ):
        posenc.T5Bias(8, max_distance=10**12)
    monkeypatch.setattr(posenc.validation, "host_memory", lambda: 2**22)  # 2 MiB at most
    # 52403 distances x (8 bytes + 8 float32) + the (32, 8) float32 embedding: 2,097,144 bytes; 52405 do not fit
    posenc.T5Bias(8, max_distance=26201)
    with pytest.raises(ValueError, match="max_distance takes at most 26,201 here"):
        posenc.T5Bias(8, max_distance=26202)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("name", [n for n in NAMES if list(posenc.build(n, dim=8, heads=2).parameters())])
def test_a_float64_model_keeps_its_bias_in_float64(name: str, backend: str) -> None:
    """The learned biases are computed in float64 for a float64 model (float32 at least for any other): gradcheck
    against the parameters passes, and a KV-cached decode equals the full forward to float64 rounding."""
    from torch.func import functional_call

    torch.manual_seed(0)
    attn = posenc.Attention(8, 2, position=posenc.build(name, dim=8, heads=2), backend=backend).double()
    with torch.no_grad():
        for p in attn.position.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    names = [n for n, _ in attn.named_parameters() if n.startswith("position.")]
    base = {n: p.detach() for n, p in attn.named_parameters()}
    x = torch.randn(1, 5, 8, dtype=torch.float64)

    def run(*params: torch.Tensor) -> torch.Tensor:
        return functional_call(attn, {**base, **dict(zip(names, params, strict=True))}, (x,))  # type: ignore[no-any-return]

    leaves = tuple(base[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-7)
    cache = posenc.KVCache()
    steps = torch.cat([attn(x[:, i : i + 1], cache=cache) for i in range(5)], dim=1)
    torch.testing.assert_close(steps, attn(x), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", [n for n in NAMES if posenc.encoding_class(n).by_distance])  # type: ignore[attr-defined]
def test_vouched_runs_reach_the_distance_path_while_tracing(name: str) -> None:
    """``runs=True`` (what Attention passes for default positions without a cache) gives the per-distance path under
    ``torch.compile(fullgraph=True)`` too, where the values cannot be checked, with the formula's values and
    gradients; unvouched positions are checked only eagerly on a CPU (no device sync on a GPU)."""
    enc = build(name, **({"max_distance": 6, "num_buckets": 8} if name == "t5" else {}))
    pos = torch.arange(9)[None]
    assert enc._consecutive(pos, pos) is not None  # type: ignore[attr-defined]  # eager CPU: checked
    assert enc._consecutive(pos.to("meta"), pos.to("meta")) is None  # type: ignore[attr-defined]  # off CPU: not

    def paths(p: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return enc.pairwise_by_distance(p, p, True), enc.pairwise_by_distance(p, p)  # type: ignore[operator]

    vouched, unvouched = torch.compile(paths, backend="eager", fullgraph=True)(pos)
    assert unvouched is None and vouched is not None
    ref = enc.pairwise_reference(pos, pos)  # type: ignore[operator]
    torch.testing.assert_close(vouched, ref)
    g = torch.autograd.grad((vouched * ref.detach()).sum(), list(enc.parameters()))
    g_ref = torch.autograd.grad((ref * ref.detach()).sum(), list(enc.parameters()))
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_attention_vouches_for_default_positions_without_a_cache_only() -> None:
    seen: list[dict[str, object]] = []

    class Spy(posenc.ALiBi):
        def score_bias(
            self, q: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, **kw: object
        ) -> torch.Tensor | None:  # type: ignore[override]
            seen.append(kw)
            return super().score_bias(q, q_pos, k_pos, **kw)  # type: ignore[arg-type]

    attn = posenc.Attention(32, 4, position=Spy(4), backend="math")
    x = torch.randn(1, 5, 32)
    attn(x)
    attn(x, positions=torch.arange(5))
    attn(x, cache=posenc.KVCache())
    assert seen == [{"runs": True}, {}, {}]

    class Old(posenc.PositionEncoding):  # an encoding written before `runs`: its hooks keep three arguments
        family = "bias"

        def score_bias(
            self, q: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
        ) -> torch.Tensor | None:  # type: ignore[override]
            return torch.zeros(())

    posenc.Attention(32, 4, position=Old(), backend="sdpa")(x)


def test_bias_encodings_written_before_runs_keep_working() -> None:
    """A subclass overriding ``score_bias`` (three arguments) or ``pairwise`` (two) without ``runs`` is never passed
    it (``takes_runs`` turns False for it): under Attention's default positions it failed with a TypeError."""
    from posenc.bias.base import BiasEncoding

    class Sqrt(BiasEncoding):
        def __init__(self, heads: int) -> None:
            super().__init__(heads)
            self.slope = torch.nn.Parameter(torch.full((heads,), 0.5))

        def tables(self) -> tuple[torch.Tensor, ...]:
            return (self.slope,)

        def formula(
            self, t: tuple[torch.Tensor, ...], head: torch.Tensor, q: torch.Tensor, k: torch.Tensor
        ) -> torch.Tensor:
            return -t[0][head] * (q - k).abs().float().sqrt()

    class Scaled(Sqrt):
        def score_bias(
            self, q: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
        ) -> torch.Tensor | None:  # type: ignore[override]
            return 2 * super().score_bias(q, q_pos, k_pos)  # type: ignore[operator]

    class OwnPairwise(Sqrt):
        def pairwise(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return self.pairwise_reference(q_pos, k_pos)

    assert Sqrt.takes_runs and not Scaled.takes_runs and not OwnPairwise.takes_runs
    x = torch.randn(1, 8, 32)
    for cls in (Scaled, OwnPairwise):
        for backend in ("math", "sdpa"):
            attn = posenc.Attention(32, 4, position=cls(4), backend=backend)
            torch.testing.assert_close(attn(x), attn(x, positions=torch.arange(8)))


@pytest.mark.parametrize("name", NAMES)
def test_compiled_inference_keeps_one_graph_over_lengths(name: str) -> None:
    """CPU inference builds the bias per distance; its Toeplitz ``unfold`` fixed Q and K in the graph, so a
    compiled T5 or Kerple model recompiled for each new length and failed at the 9th under fullgraph (review s4).
    While compiling, inference reads the distances by index: two graphs (static, then dynamic) for ten lengths."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = TransformerLM(name, vocab_size=11, dim=16, depth=1, heads=2).eval()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        for s in range(4, 14):
            tokens = torch.randint(0, 11, (1, s))
            torch.testing.assert_close(compiled(tokens), model(tokens), rtol=1e-6, atol=1e-6)
    assert counters["stats"]["unique_graphs"] <= 2
