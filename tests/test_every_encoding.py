"""Hygiene every registered encoding must meet: meta-device construction, fullgraph compile, dtype in = out."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import posenc
from posenc.base import OptionsInState
from posenc.models import TransformerLM
from posenc.rotary.scaling import SCALINGS

from .rotary.test_scaling_params import VALID as SCALING_EXAMPLES

OPTIONS: dict[str, dict[str, Any]] = {"learned": {"max_len": 64}}
#: The encodings posenc.Attention takes (an absolute one goes on the token embeddings instead).
IN_ATTENTION = [n for n in posenc.available() if posenc.encoding_class(n).family != "absolute"]


@pytest.mark.parametrize("name", posenc.available())
def test_builds_and_runs_on_the_meta_device(name: str) -> None:
    with torch.device("meta"):
        model = TransformerLM(name, dim=32, depth=2, heads=4, position_options=OPTIONS.get(name))
        logits = model(torch.zeros(2, 9, dtype=torch.long))
    assert logits.is_meta and logits.shape == (2, 9, 256)
    model = model.to_empty(device="cpu")
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("name", IN_ATTENTION)
def test_attention_compiles_fullgraph(name: str) -> None:
    torch._dynamo.reset()  # one compile per encoding type; don't hit dynamo's recompile limit
    enc = posenc.build(name, dim=32, heads=4, **OPTIONS.get(name, {}))
    _assert_compiles_fullgraph(posenc.Attention(32, 4, kv_heads=2, position=enc), seq=7)


@pytest.mark.parametrize("name", posenc.available())
def test_lm_compiles_fullgraph_for_cached_padded_decoding_and_training(name: str) -> None:
    """The whole model under ``torch.compile(fullgraph=True)``: a left-padded prompt with per-row positions, then
    decode steps through the KV cache, equal the eager full forward; a training step traces and backpropagates."""
    torch._dynamo.reset()
    model = TransformerLM(
        name, vocab_size=11, dim=32, depth=1, heads=4, kv_heads=2, position_options=OPTIONS.get(name)
    )
    tokens = torch.randint(0, 11, (2, 6))
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[0, :2] = False  # row 0 left-padded
    pos = (keep.cumsum(-1) - 1).clamp(min=0)  # (2, 6) per-row positions
    compiled = torch.compile(model.eval(), fullgraph=True, backend="eager")
    with torch.no_grad():
        full = model(tokens, positions=pos, mask=keep)
        caches = model.new_caches()
        outs = [compiled(tokens[:, :3], positions=pos[:, :3], mask=keep[:, :3], caches=caches)]
        for i in range(3, 6):
            outs.append(
                compiled(
                    tokens[:, i : i + 1], positions=pos[:, i : i + 1], mask=keep[:, : i + 1], caches=caches
                )
            )
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)
    training = torch.compile(model.train(), fullgraph=True, backend="aot_eager")
    training(tokens, positions=pos, mask=keep).sum().backward()
    assert model.embed.weight.grad is not None and bool(model.embed.weight.grad.isfinite().all())


@pytest.mark.parametrize("name", posenc.available())
def test_bfloat16_module_keeps_the_input_dtype(name: str) -> None:
    model = TransformerLM(name, dim=32, depth=1, heads=4, position_options=OPTIONS.get(name)).eval()
    tokens = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        ref = model(tokens)
        low = model.to(torch.bfloat16)(tokens)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.parametrize("name", posenc.available())
def test_meta_then_to_empty_rebuilds_derived_tables(name: str) -> None:
    """Tables computed from the configuration are real after meta construction + ``to_empty``."""
    fresh = posenc.build(name, dim=32, heads=4, **OPTIONS.get(name, {}))
    with torch.device("meta"):
        meta = posenc.build(name, dim=32, heads=4, **OPTIONS.get(name, {}))
    meta = meta.to_empty(device="cpu")
    derived = fresh.derived_buffers(torch.device("cpu"))
    for buf_name, value in derived.items():
        assert torch.equal(getattr(meta, buf_name), value), buf_name
        assert torch.equal(getattr(fresh.to(torch.bfloat16), buf_name), value), buf_name


@pytest.mark.parametrize("name", posenc.available())
def test_meta_then_assign_load_gives_the_real_model(name: str) -> None:
    """``load_state_dict(assign=True)`` into a model built on meta (how large models load) leaves the derived
    tables on meta, since they are not in the state_dict: they are rebuilt where the weights landed. Before, T5's
    bias came out wrong without an error and ALiBi, RoPE, xPos, sinusoidal failed at the first call."""
    torch.manual_seed(0)
    real = TransformerLM(name, dim=32, depth=2, heads=4, position_options=OPTIONS.get(name)).eval()
    with torch.device("meta"):
        meta = TransformerLM(name, dim=32, depth=2, heads=4, position_options=OPTIONS.get(name)).eval()
    meta.load_state_dict(real.state_dict(), assign=True)
    tokens = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(meta(tokens), real(tokens))
    alone = posenc.build(name, dim=32, heads=4, **OPTIONS.get(name, {}))  # an encoding loaded by itself
    with torch.device("meta"):
        meta_alone = posenc.build(name, dim=32, heads=4, **OPTIONS.get(name, {}))
    meta_alone.load_state_dict(alone.state_dict(), assign=True)
    if any(True for _ in alone.parameters()):  # (one without weights learns its device from its model)
        assert not any(b.is_meta for b in meta_alone.buffers())


@pytest.mark.parametrize("name", posenc.available())
def test_embed_compiles_fullgraph(name: str) -> None:
    """The attention test above never reaches ``embed`` (the absolute family's hook): compiled here, with default,
    shared and per-row positions."""
    torch._dynamo.reset()
    enc = posenc.build(name, dim=32, heads=4, **OPTIONS.get(name, {})).eval()
    x = torch.randn(2, 7, 32)
    compiled = torch.compile(enc.embed, fullgraph=True, backend="eager")
    for positions in (None, torch.arange(3, 10), torch.arange(14).reshape(2, 7)):
        torch.testing.assert_close(compiled(x, positions), enc.embed(x, positions))


@pytest.mark.parametrize("kind", SCALINGS.names())
def test_every_rope_scaling_builds_on_meta_and_compiles_fullgraph(kind: str) -> None:
    """Every registered RoPE scaling (not only the plain RoPE of ``posenc.available()``): meta-device construction
    and a fullgraph compile of attention past the scaling's original length."""
    scaling = {"rope_type": kind, **SCALING_EXAMPLES[kind]}
    with torch.device("meta"):
        out = posenc.Attention(32, 4, position=posenc.RoPE(8, scaling=scaling))(torch.zeros(2, 20, 32))
    assert out.is_meta and out.shape == (2, 20, 32)
    torch._dynamo.reset()
    _assert_compiles_fullgraph(
        posenc.Attention(32, 4, kv_heads=2, position=posenc.RoPE(8, scaling=scaling)), seq=20
    )


@pytest.mark.parametrize("name", posenc.available())
def test_state_dict_holds_only_what_was_learned_and_round_trips(name: str) -> None:
    """Recomputable tables are non-persistent buffers: the state dict holds the parameters only (and, for options
    that change what they mean, those options: ``OptionsInState``), and loading it into a fresh encoding (strict)
    gives the same outputs."""
    torch.manual_seed(0)
    enc = posenc.build(name, dim=32, heads=4, **OPTIONS.get(name, {}))
    options = {"_extra_state"} if isinstance(enc, OptionsInState) else set()
    assert set(enc.state_dict()) == {k for k, _ in enc.named_parameters()} | options
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p))  # away from any initialization a fresh copy would share
    torch.manual_seed(1)
    fresh = posenc.build(name, dim=32, heads=4, **OPTIONS.get(name, {}))
    fresh.load_state_dict(enc.state_dict())
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        assert torch.equal(fresh.embed(x), enc.embed(x))
    if enc.is_absolute:
        return
    attn = posenc.Attention(32, 4, position=enc, backend="math").eval()
    copy = posenc.Attention(32, 4, position=fresh, backend="math").eval()
    copy.load_state_dict(attn.state_dict())
    with torch.no_grad():
        assert torch.equal(copy(x), attn(x))


@pytest.mark.parametrize("name", posenc.available(family="absolute"))
def test_attention_refuses_an_absolute_encoding(name: str) -> None:
    """Inside attention an absolute encoding's hooks are identities, so taking one gave a model without positions
    and no word of it; it is refused, pointing at the token embeddings."""
    enc = posenc.build(name, dim=32, heads=4, **OPTIONS.get(name, {}))
    with pytest.raises(
        ValueError, match=r"position: .* is an absolute encoding; add it to the token embeddings"
    ):
        posenc.Attention(32, 4, position=enc)


def _assert_compiles_fullgraph(attn: posenc.Attention, seq: int) -> None:
    """``torch.compile(attn, fullgraph=True)`` gives the eager output (eval mode, batch 2, ``seq`` tokens)."""
    attn = attn.eval()
    x = torch.randn(2, seq, attn.dim)
    compiled = torch.compile(attn, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), attn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", posenc.available())
def test_a_move_under_inference_mode_leaves_a_model_that_trains(name: str) -> None:
    """Tables rebuilt by ``.to()`` under ``torch.inference_mode()`` were inference tensors: the next training step
    raised "Inference tensors cannot be saved for backward"."""
    model = TransformerLM(name, dim=16, depth=1, heads=2)
    tokens = torch.randint(0, 256, (1, 8))
    with torch.inference_mode():
        model.to("cpu")
        model(tokens)
    model(tokens).sum().backward()
