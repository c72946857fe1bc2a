"""TransformerLM: what experiments may ask of a model without walking its internals."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc.models import TransformerLM


def test_encodings_and_max_length() -> None:
    rope = TransformerLM("rope", dim=32, depth=3, heads=4)
    assert len(rope.encodings()) == 3 and all(isinstance(p, posenc.RoPE) for p in rope.encodings())
    assert rope.max_length is None
    learned = TransformerLM("learned", dim=32, depth=2, heads=4, position_options={"max_len": 40})
    assert [type(p) for p in learned.encodings()] == [posenc.NoPE, posenc.NoPE, posenc.LearnedAbsolute]
    assert learned.max_length == 40


def test_positions_replaced_swaps_and_restores() -> None:
    torch.manual_seed(0)
    model = TransformerLM("rope", dim=32, depth=2, heads=4).eval()
    before = model.layer_encodings()
    tokens = torch.randint(0, 256, (1, 24))
    with torch.no_grad():
        plain = model(tokens)
        scaling = {"rope_type": "linear", "factor": 4.0}
        with model.positions_replaced(lambda p: p.with_scaling(scaling)) as m:
            now = m.layer_encodings()
            assert all(a is not b and isinstance(a, posenc.RoPE) for a, b in zip(now, before, strict=True))
            assert all(isinstance(a.scaling, posenc.LinearScaling) for a in now)  # type: ignore[union-attr]
            scaled = m(tokens)
        assert model.layer_encodings() == before
        torch.testing.assert_close(model(tokens), plain)
    assert not torch.allclose(plain, scaled)


def test_replace_positions_checks_what_it_gets() -> None:
    model = TransformerLM("none", dim=16, depth=1, heads=2)
    with pytest.raises(TypeError, match="must return a PositionEncoding"):
        model.replace_positions(lambda p: torch.zeros(1))  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="NoPE has no RoPE context-extension scaling"):
        model.replace_positions(lambda p: p.with_scaling(None))


def test_rope_with_scaling_keeps_everything_else() -> None:
    rope = posenc.RoPE(16, base=500.0, rotary_dim=8, interleaved=True, cache_len=64, impl="reference")
    yarn = rope.with_scaling({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32})
    assert (yarn.head_dim, yarn.base, yarn.rotary_dim, yarn.interleaved, yarn.cache_len, yarn.impl) == (
        16,
        500.0,
        8,
        True,
        64,
        "reference",
    )
    assert isinstance(yarn.scaling, posenc.YaRNScaling) and rope.scaling is None
    plain = yarn.with_scaling(None)
    assert plain.scaling is None and torch.equal(plain.inv_freq, rope.inv_freq)


def test_bad_position_arguments_are_named() -> None:
    """An encoding instance for ``position`` failed with "RoPE.forward() missing 2 required positional arguments",
    a factory returning something else with an AttributeError, None with "'NoneType' object is not callable",
    and ``position_options`` next to a factory were dropped without a word."""
    with pytest.raises(
        TypeError, match=r"position must be an encoding name or a zero-argument factory, got a RoPE"
    ):
        TransformerLM(posenc.RoPE(32))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"position must be an encoding name .* got None"):
        TransformerLM(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"factory must return a posenc.PositionEncoding, got str"):
        TransformerLM(lambda: "rope")  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match=r"position_options \['base'\] apply to an encoding name only"):
        TransformerLM(lambda: posenc.RoPE(32), position_options={"base": 500})
    with pytest.raises(TypeError, match=r"TransformerLM: embed_scale must be a number, got 'x'"):
        TransformerLM("rope", embed_scale="x")  # type: ignore[arg-type]
    assert isinstance(TransformerLM(lambda: posenc.RoPE(32), depth=1).layer_encodings()[0], posenc.RoPE)


def test_caches_that_are_one_object_or_out_of_step_are_refused() -> None:
    """``[KVCache()] * depth`` or one layer's cache reset alone gave wrong logits without an error."""
    from posenc.attention.static_cache import StaticKVCache

    model = TransformerLM("rope", dim=32, depth=2, heads=4).eval()
    tokens = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        for shared in ([posenc.KVCache()] * 2, [StaticKVCache(12)] * 2):
            with pytest.raises(ValueError, match="one cache object for several layers"):
                model(tokens[:, :3], positions=torch.arange(3), caches=shared)
        caches = model.new_caches()
        model(tokens[:, :3], caches=caches)
        caches[1].reset()
        with pytest.raises(ValueError, match="out of step: the layers' caches hold 3, 0 keys"):
            model(tokens[:, 3:], caches=caches)


def test_bad_tokens_and_caches_are_named() -> None:
    """Bool tokens failed in the embedding ("Expected tensor for argument #1 'indices'..."), ids outside the
    vocabulary with "index out of range in self", and a single KVCache for ``caches`` with "must hold one KVCache
    per layer (2), got 0"."""
    model = TransformerLM("rope", vocab_size=11, dim=32, depth=2, heads=4).eval()
    tokens = torch.randint(0, 11, (2, 5))
    with pytest.raises(ValueError, match=r"tokens must be integer ids \(batch, seq\), got torch.bool"):
        model(tokens > 3)
    with pytest.raises(
        ValueError, match=r"tokens must be ids in \[0, 11\) \(vocab_size\), got ids from 1 to 11"
    ):
        model(torch.tensor([[1, 2, 11], [3, 4, 5]]))
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, 11\).* from -1 to 3"):
        model(torch.tensor([[-1, 2, 3], [0, 0, 0]]))
    with pytest.raises(TypeError, match=r"caches must be a list of posenc.KVCache .* got KVCache"):
        model(tokens, caches=posenc.KVCache())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"TransformerLM: positions must be an integer tensor, got list"):
        model(tokens, positions=[0, 1, 2, 3, 4])  # type: ignore[arg-type]


@pytest.mark.parametrize("assign", [False, True])
def test_a_model_built_on_meta_keeps_its_head_tied_to_the_embedding(assign: bool) -> None:
    """``to_empty`` gave the head and the embedding a Parameter each (they then trained apart); so did a load with
    ``assign=True``."""
    from posenc.models.lm import count_parameters

    ref = TransformerLM("rope", dim=32, depth=2, heads=4)
    with torch.device("meta"):
        model = TransformerLM("rope", dim=32, depth=2, heads=4)
    if not assign:
        model.to_empty(device="cpu")
    model.load_state_dict(ref.state_dict(), assign=assign)
    assert model.head.weight is model.embed.weight
    assert count_parameters(model) == count_parameters(ref)
    assert model.double().head.weight is model.embed.weight


def test_token_ids_on_another_device_or_of_a_narrow_dtype() -> None:
    """Meta ids on a CPU model gave CPU logits of uninitialised memory (fuzz #2); uint8 and int16 ids passed the
    check, then failed in the embedding, though generate took them (fuzz #6)."""
    lm = TransformerLM("alibi", vocab_size=11, dim=16, depth=1, heads=2).eval()
    tok = torch.randint(0, 11, (2, 5))
    with pytest.raises(ValueError, match="TransformerLM: tokens are on meta but the model on cpu"):
        lm(tok.to("meta"))
    with torch.no_grad():
        want = lm(tok)
        for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
            assert torch.equal(lm(tok.to(dtype)), want), dtype


def test_constructor_checks_its_own_arguments() -> None:
    """dim, heads and dropout reached torch unchecked; position_options="x" failed in dict(); a 1-element
    vocab_size tensor built Embedding(tensor([4]), 16) (fuzz #8)."""
    import numpy as np

    kw: dict[str, object] = {"vocab_size": 11, "dim": 16, "depth": 1, "heads": 2}
    for field, bad, error, words in (
        ("dim", None, TypeError, "TransformerLM: dim must be an integer, got None"),
        ("heads", 2.0, TypeError, "TransformerLM: heads must be an integer, got 2.0"),
        ("dropout", None, TypeError, "TransformerLM: dropout must be a number"),
        ("dropout", "4", TypeError, "TransformerLM: dropout must be a number"),
        ("dropout", 1.5, ValueError, "TransformerLM: dropout must be <= 1"),
        ("vocab_size", "4", TypeError, "TransformerLM: vocab_size must be an integer"),
        ("position_options", "x", TypeError, "TransformerLM: position_options must be a dict"),
        ("vocab_size", 2**40, ValueError, "TransformerLM: vocab_size=1099511627776 would take"),
    ):
        with pytest.raises(error, match=words):
            TransformerLM("alibi", **{**kw, field: bad})  # type: ignore[arg-type]
    lm = TransformerLM("alibi", **{**kw, "dim": torch.tensor(16), "vocab_size": np.int64(11)})  # type: ignore[arg-type]
    assert lm.embed.num_embeddings == 11 and lm.embed.embedding_dim == 16
    assert type(lm.embed.num_embeddings) is int
    lm = TransformerLM("alibi", **{**kw, "vocab_size": torch.tensor([4])})  # type: ignore[arg-type]
    assert (
        type(lm.embed.num_embeddings) is int and lm.embed.num_embeddings == 4
    )  # was Embedding(tensor([4]), 16)


def test_a_head_the_caller_untied_stays_untied_through_a_load() -> None:
    model = TransformerLM("rope", dim=32, depth=2, heads=4)
    model.head.weight = torch.nn.Parameter(model.embed.weight.detach().clone() + 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for assign in (False, True):
        model.load_state_dict(state, assign=assign)
        assert model.head.weight is not model.embed.weight
        assert torch.equal(model.head.weight, state["head.weight"])


@pytest.mark.parametrize("name", ["rope", "sinusoidal"])
def test_forward_equals_the_model_written_out_by_hand(name: str) -> None:
    """An independent oracle: pre-norm blocks ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, the final norm and
    the tied head, written out with ``torch.nn.functional``, embeddings scaled by ``embed_scale`` before an
    absolute encoding is added. Every LayerNorm gets its own non-identity weights: at init they are all identity,
    and the other tests compare the model with itself, so an MLP fed by ``norm1`` went unnoticed (review s5)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = TransformerLM(name, dim=16, depth=2, heads=2, embed_scale=2.0).eval()
    norms = [model.norm, *(n for b in model.blocks for n in (b.norm1, b.norm2))]
    with torch.no_grad():
        for n in norms:
            n.weight.normal_()
            n.bias.normal_()
    tokens = torch.randint(0, 256, (2, 7))

    def norm(n: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (16,), n.weight, n.bias, n.eps)

    with torch.no_grad():
        x = model.input_position.embed(F.embedding(tokens, model.embed.weight) * 2.0, None)
        for b in model.blocks:
            x = x + b.attn(norm(b.norm1, x))
            up, down = b.mlp[0], b.mlp[2]
            x = x + F.linear(F.gelu(F.linear(norm(b.norm2, x), up.weight, up.bias)), down.weight, down.bias)
        want = F.linear(norm(model.norm, x), model.embed.weight)
        torch.testing.assert_close(model(tokens), want, rtol=0, atol=1e-5)
