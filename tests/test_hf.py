"""posenc.hf: RoPE from transformers configs and into a tiny randomly initialised LlamaForCausalLM (no download)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import posenc

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from posenc.hf import HFRotaryEmbedding, UnsupportedRotary, apply_rope, install_rope, rope_from_config  # noqa: E402

MAX_POS = 32
#: lengths transformers fills from the config (the full scaling matrix is in test_hf_architectures.py).
SCALINGS: dict[str, dict[str, Any]] = {
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn_default_lengths": {"rope_type": "yarn", "factor": 4.0},
    "llama3_default_lengths": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },
}


def tiny_config(rope: dict[str, Any] | None = None) -> Any:
    params = {"rope_theta": 10000.0, **(rope or {"rope_type": "default"})}
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=MAX_POS,
        rope_parameters=params,
        attn_implementation="eager",  # type: ignore[call-arg]
    )


@pytest.fixture(scope="module")
def plain() -> Any:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def test_apply_rope_is_install_rope() -> None:
    model = LlamaForCausalLM(tiny_config()).eval()
    assert (
        apply_rope(model).scaling is None
        and install_rope(model, {"rope_type": "linear", "factor": 2.0}).scaling
    )
    assert isinstance(model.model.rotary_emb, HFRotaryEmbedding) and model.model.rotary_emb.layout == "half"


def test_no_scaling_leaves_logits_unchanged(plain: Any) -> None:
    tokens = torch.randint(0, 100, (2, 24))
    before = logits(plain, tokens)
    model = LlamaForCausalLM(tiny_config()).eval()
    model.load_state_dict(plain.state_dict())
    rope = apply_rope(model, None)
    assert isinstance(model.model.rotary_emb, HFRotaryEmbedding) and rope.scaling is None
    torch.testing.assert_close(logits(model, tokens), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_scaling_equals_transformers_with_same_rope_scaling(plain: Any, kind: str) -> None:
    theirs = LlamaForCausalLM(tiny_config(SCALINGS[kind])).eval()
    theirs.load_state_dict(plain.state_dict())
    ours = LlamaForCausalLM(tiny_config()).eval()
    ours.load_state_dict(plain.state_dict())
    apply_rope(ours, SCALINGS[kind])
    for length in (12, 40):  # inside and past the original length (dynamic and longrope switch)
        tokens = torch.randint(0, 100, (2, length))
        torch.testing.assert_close(logits(ours, tokens), logits(theirs, tokens), atol=1e-5, rtol=1e-5)


def test_yarn_changes_the_logits_and_generates_with_cache(plain: Any) -> None:
    model = LlamaForCausalLM(tiny_config()).eval()
    model.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 100, (1, 20))
    rope = apply_rope(model, posenc.YaRNScaling(4.0, 16))
    assert rope.attention_scale > 1.0
    assert not torch.allclose(logits(model, tokens), logits(plain, tokens), atol=1e-4)
    with torch.no_grad():  # incremental decoding through transformers' cache = one full forward
        out = model.generate(
            tokens, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True
        )
        full = model(out.sequences).logits[:, -5:-1]
    torch.testing.assert_close(torch.stack(out.logits, dim=1), full, atol=1e-4, rtol=1e-4)


def test_rope_from_config_reads_theta_head_dim_and_partial() -> None:
    config = tiny_config({"rope_type": "default", "rope_theta": 500000.0})
    rope = rope_from_config(config)
    assert (rope.head_dim, rope.rotary_dim, rope.base, rope.scaling) == (16, 16, 500000.0, None)
    config = LlamaConfig(
        hidden_size=64, num_attention_heads=2, head_dim=24, vocab_size=10, num_hidden_layers=1,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4, "partial_rotary_factor": 0.5},
    )  # fmt: skip
    rope = rope_from_config(config)
    assert (rope.head_dim, rope.rotary_dim, rope.scaling) == (24, 12, posenc.LinearScaling(2.0))

    class Legacy:  # transformers 4.x: rope_theta and rope_scaling as attributes
        hidden_size, num_attention_heads, max_position_embeddings, rope_theta = 64, 4, 128, 20000.0
        rope_scaling = {"type": "yarn", "factor": 2.0}

    rope = rope_from_config(Legacy())
    assert rope.base == 20000.0 and rope.scaling == posenc.YaRNScaling(2.0, 128)


def test_rope_from_config_reads_every_place_a_rotary_size_or_base_lives() -> None:
    class NeoX4:  # transformers 4.x GPT-NeoX: rotary_pct and rotary_emb_base, no rope_theta
        model_type, hidden_size, num_attention_heads, rotary_pct, rotary_emb_base = (
            "gpt_neox",
            64,
            2,
            0.25,
            5e4,
        )
        rope_scaling = None

    rope = rope_from_config(NeoX4())
    assert (rope.head_dim, rope.rotary_dim, rope.base, rope.interleaved) == (32, 8, 5e4, False)

    class GPTJ:  # GPT-J and CodeGen: rotary_dim dims of each head, interleaved pairs, base 10000
        model_type, hidden_size, num_attention_heads, rotary_dim = "gptj", 64, 4, 8

    rope = rope_from_config(GPTJ())
    assert (rope.head_dim, rope.rotary_dim, rope.base, rope.interleaved) == (16, 8, 1e4, True)
    config = tiny_config()
    config.rotary_dim = (
        4  # next to a 5.x rope_parameters, which holds the rotated size (MiniMax-M3 keeps both)
    )
    assert rope_from_config(config).rotary_dim == 16
    GPTJ.rotary_dim = 32
    with pytest.raises(ValueError, match=r"\[rotary-size\] config.rotary_dim=32 does not fit head_dim=16"):
        rope_from_config(GPTJ())
    for model_type, interleaved in (("cohere", True), ("llama4_text", True), ("qwen2", False)):
        config = tiny_config()
        config.model_type = model_type
        assert rope_from_config(config).interleaved is interleaved
    config = tiny_config()
    config.rope_interleave = True  # DeepSeek-V3 style
    assert rope_from_config(config).interleaved


def test_clear_errors_for_configs_it_cannot_honour(plain: Any) -> None:
    config = tiny_config()
    config.rope_parameters = {"rope_type": "proportional", "rope_theta": 1e4, "partial_rotary_factor": 0.5}
    with pytest.raises(UnsupportedRotary, match=r"\[rope-type\].*unknown rope_type 'proportional'"):
        rope_from_config(config)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}
    with pytest.raises(ValueError, match="mrope_section"):
        rope_from_config(config)
    config.rope_parameters = {
        "full_attention": {"rope_type": "default"},
        "sliding_attention": {"rope_type": "default"},
    }
    with pytest.raises(ValueError, match="per layer type"):
        rope_from_config(config)
    config.rope_parameters["full_attention"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}
    rope = rope_from_config(config, layer_type="full_attention")
    assert rope.base == 1e6 and rope.scaling == posenc.LinearScaling(2.0)
    with pytest.raises(ValueError, match="got layer_type='global'"):
        rope_from_config(config, layer_type="global")
    with pytest.raises(ValueError, match="no `rotary_emb`"):
        apply_rope(_WithConfig(tiny_config()))
    with pytest.raises(TypeError, match="config"):
        apply_rope(nn.Linear(2, 2))
    model = LlamaForCausalLM(tiny_config()).eval()
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 12345.0}  # config no longer matches
    with pytest.raises(ValueError, match=r"\[table-values\].*base=12345.0"):
        apply_rope(model)
    with pytest.raises(ValueError, match="beta_fast"):
        apply_rope(
            LlamaForCausalLM(tiny_config()),
            {"rope_type": "yarn", "factor": 2.0, "beta_fast": 1, "beta_slow": 2},
        )


class _WithConfig(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(2, 2)


class _NeedsMore(LlamaForCausalLM):  # cannot be rebuilt from its config alone
    def __init__(self, config: Any, extra: int) -> None:
        super().__init__(config)


class _SizedByRope(LlamaForCausalLM):  # a buffer whose shape depends on the rope parameters
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.register_buffer("table", torch.zeros(int(config.rope_parameters.get("factor", 1))))


class _Temperature(LlamaForCausalLM):  # a number derived from the rope parameters outside the rotary module
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.temperature = float(config.rope_parameters.get("factor", 1.0)) ** 0.5


def test_rope_dependent_state_outside_the_rotary_module_is_set_or_refused() -> None:
    yarn = {"rope_type": "yarn", "factor": 4.0}
    model = _Temperature(tiny_config()).eval()
    install_rope(model, yarn)
    assert model.temperature == 2.0  # what transformers would build with that rope configuration
    install_rope(model, None)
    assert model.temperature == 1.0  # and undone
    for model, cause in (
        (_NeedsMore(tiny_config(), 1), "model-build"),
        (_SizedByRope(tiny_config()), "folded-tensor"),
    ):
        before = model.model.rotary_emb
        with pytest.raises(UnsupportedRotary, match=rf"\[{cause}\]"):
            install_rope(model, yarn)
        assert model.model.rotary_emb is before  # refused before anything changed
        install_rope(model, None)  # the config's own RoPE needs no rebuild


def test_half_precision_models_are_checked_as_strictly_as_float32(plain: Any) -> None:
    """model.to(bfloat16) rounds transformers' inv_freq buffer: the check compares with tables from rounded
    frequencies at float32 tolerance, so a misread base is still refused (a bfloat16-sized tolerance let it
    through), and the installed model equals transformers built in bfloat16 (from_config(dtype=...))."""
    for dtype in (torch.bfloat16, torch.float16):
        model = LlamaForCausalLM(tiny_config()).to(dtype).eval()
        model.config.rope_parameters = {"rope_type": "default", "rope_theta": 12345.0}
        with pytest.raises(UnsupportedRotary, match=r"\[table-values\].*base=12345.0"):
            install_rope(model)
        yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
        theirs = transformers.AutoModelForCausalLM.from_config(tiny_config(yarn), dtype=dtype).eval()
        theirs.load_state_dict(plain.state_dict())
        ours = LlamaForCausalLM(tiny_config()).eval()
        ours.load_state_dict(plain.state_dict())
        install_rope(ours.to(dtype), yarn)
        tokens = torch.randint(0, 100, (2, 40))
        torch.testing.assert_close(logits(ours, tokens), logits(theirs, tokens), atol=0, rtol=0)


def test_meta_device_models_are_refused_with_their_cause() -> None:
    with torch.device("meta"):
        model = LlamaForCausalLM(tiny_config())
    before = model.model.rotary_emb
    with pytest.raises(UnsupportedRotary, match=r"\[meta-device\] LlamaRotaryEmbedding.*load the weights"):
        install_rope(model, {"rope_type": "linear", "factor": 2.0})
    assert model.model.rotary_emb is before


def test_install_refuses_a_dict_whose_base_or_rotated_size_is_not_the_models(plain: Any) -> None:
    model = LlamaForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"rope_theta=500000.0 differs from the model's base 10000"):
        install_rope(model, {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5})
    with pytest.raises(ValueError, match=r"partial_rotary_factor=0.5 differs .*16 of 16 dims"):
        install_rope(model, {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5})
    tokens = torch.randint(0, 100, (1, 40))
    assert torch.equal(logits(model, tokens), logits(plain, tokens))  # refused: nothing changed
    own = dict(model.config.rope_parameters)  # transformers 5 keeps rope_theta in it: the model's own passes
    install_rope(model, {**own, "rope_type": "linear", "factor": 2.0})
    want = LlamaForCausalLM(tiny_config({"rope_type": "linear", "factor": 2.0})).eval()
    want.load_state_dict(plain.state_dict())
    torch.testing.assert_close(logits(model, tokens), logits(want, tokens), rtol=0, atol=1e-5)


def test_install_refuses_a_scaling_transformers_cannot_build_with_its_cause() -> None:
    model = LlamaForCausalLM(tiny_config()).eval()
    with pytest.raises(UnsupportedRotary, match=r"\[rope-type\] transformers has no rope_type 'ntk'.*yarn"):
        install_rope(model, posenc.NTKScaling(2.0))
    layered = {"full_attention": {"rope_type": "linear", "factor": 2.0}}
    with pytest.raises(
        ValueError, match=r"keyed by layer type \(\['full_attention'\]\).*one RoPE for every layer"
    ):
        install_rope(model, layered)


def test_public_arguments_of_the_wrong_kind_are_named() -> None:
    model = LlamaForCausalLM(tiny_config())
    with pytest.raises(TypeError, match=r"got a LlamaForCausalLM \(a model\?\); pass its \.config"):
        rope_from_config(model)
    with pytest.raises(TypeError, match=r"got dict \(a dict: build the config first"):
        rope_from_config(tiny_config().to_dict())
    with pytest.raises(TypeError, match="got NoneType"):
        rope_from_config(None)
    with pytest.raises(TypeError, match=r"rope must be a posenc.RoPE .* got int"):
        HFRotaryEmbedding(16)  # type: ignore[arg-type]
    adapter = HFRotaryEmbedding(posenc.RoPE(16))
    with pytest.raises(
        TypeError, match=r"position_ids must be an integer tensor \(batch, seq\), got torch.float32"
    ):
        adapter(torch.zeros(1, 4, 16), torch.arange(4.0)[None])
    with pytest.raises(TypeError, match="got NoneType"):
        adapter(torch.zeros(1, 4, 16), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got torch.bool"):  # True was position 1
        adapter(torch.zeros(1, 4, 16), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="got a 0-d tensor"):
        adapter(torch.zeros(1, 4, 16), torch.tensor(3))
    for freq_dtype in (None, torch.bfloat16):  # both branches refuse positions past 2**31
        far = HFRotaryEmbedding(posenc.RoPE(16), freq_dtype=freq_dtype)
        with pytest.raises(ValueError, match="position 1099511627776 is too far from 0"):
            far(torch.zeros(1, 1, 16), torch.tensor([[2**40]]))


@pytest.mark.parametrize("model_type", ["glm", "helium"])
def test_rope_from_config_rotates_as_the_models_own_code(model_type: str) -> None:
    """GLM and Helium pair consecutive dims (their rotate_half takes 0::2 and 1::2): rope_from_config's RoPE
    gives the scores of transformers' own apply_rotary_pos_emb with the model's own tables."""
    import importlib

    config = transformers.CONFIG_MAPPING[model_type](
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=16, num_hidden_layers=1,
        intermediate_size=64, vocab_size=32, max_position_embeddings=MAX_POS,
    )  # fmt: skip
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    rotary = next(m for n, m in module.__dict__.items() if n.endswith("RotaryEmbedding"))(config)
    rope = rope_from_config(config)
    assert rope.interleaved
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 8, 16), torch.randn(2, 4, 8, 16)
    pos = torch.arange(8)[None] + torch.tensor([[0], [20]])  # (2, 8): one row inside, one past MAX_POS
    cos, sin = rotary(q, pos)
    want_q, want_k = module.apply_rotary_pos_emb(q, k, cos, sin)
    got_q, got_k = rope(q, k, pos)
    torch.testing.assert_close(
        got_q @ got_k.transpose(-1, -2), want_q @ want_k.transpose(-1, -2), rtol=0, atol=1e-5
    )


def test_rope_from_config_refuses_a_rotation_that_is_not_ropes() -> None:
    for model_type in ("nanochat", "deepseek_v4"):
        config = transformers.CONFIG_MAPPING[model_type]()
        layer_type = (posenc.hf.config.layer_types(config) or [None])[0]
        with pytest.raises(UnsupportedRotary, match=rf"\[rotation\] {model_type} rotates"):
            rope_from_config(config, layer_type=layer_type)


def test_config_sizes_are_integers_and_rope_scaling_a_dict() -> None:
    """head_dim=64.7 became 64, "64" was taken, num_attention_heads=3.5 became 3, head_dim=True gave "got 1",
    and rope_scaling="yarn" failed in dict() (fuzz #14)."""
    from types import SimpleNamespace

    from posenc.hf import rope_from_config

    base = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 128}
    for extra, error, words in (
        ({"head_dim": 64.7}, TypeError, "transformers config: head_dim must be an integer, got 64.7"),
        ({"head_dim": "64"}, TypeError, "transformers config: head_dim must be an integer, got '64'"),
        (
            {"head_dim": True},
            TypeError,
            "transformers config: head_dim must be an integer, got the bool True",
        ),
        (
            {"num_attention_heads": 3.5},
            TypeError,
            "transformers config: num_attention_heads must be an integer",
        ),
        ({"rope_scaling": "yarn"}, TypeError, "transformers config: rope_scaling must be a dict"),
    ):
        with pytest.raises(error, match=words):
            rope_from_config(SimpleNamespace(**{**base, **extra}))
    assert rope_from_config(SimpleNamespace(**base)).head_dim == 16


def test_an_alibi_falcon_is_refused() -> None:
    """Falcon with ALiBi builds a rotary_emb its attention never reads: install_rope returned a RoPE and changed
    nothing (review s4)."""
    from transformers import FalconConfig, FalconForCausalLM

    config = FalconConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        alibi=True,
        new_decoder_architecture=False,
    )
    model = FalconForCausalLM(config).eval()
    with pytest.raises(UnsupportedRotary, match=r"\[no-rotary-module\].*ALiBi"):
        install_rope(model, {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16})


def test_install_takes_only_options_that_keep_the_models_rope(plain: Any) -> None:
    """The layout, base and rotated size are the model's: ``interleaved=True`` was accepted and ignored by the
    adapter while the returned RoPE rotated the other way (5.2 off the model's own rotation); ``base`` and
    ``rotary_dim`` failed with the constructor's "multiple values" error. ``cache_len`` and ``impl`` serve."""
    model = LlamaForCausalLM(tiny_config()).eval()
    for option, value in [("interleaved", True), ("base", 5e5), ("rotary_dim", 8), ("scale_base", 512)]:
        with pytest.raises(TypeError, match=rf"install_rope: {option} cannot be given: .* cache_len, impl"):
            install_rope(model, None, **{option: value})
    tokens = torch.randint(0, 100, (1, 40))
    assert torch.equal(logits(model, tokens), logits(plain, tokens))  # refused: nothing changed
    rope = install_rope(model, None, cache_len=64, impl="reference")
    assert isinstance(rope, posenc.RoPE) and rope.cache_len == 64 and rope.impl == "reference"
    torch.testing.assert_close(logits(model, tokens), logits(plain, tokens), rtol=0, atol=1e-5)


def test_install_refuses_an_original_length_the_config_replaces() -> None:
    """transformers builds dynamic NTK from ``max_position_embeddings`` and YaRN from Phi-3's
    ``config.original_max_position_embeddings``, whatever the dict says: a different length written in the dict
    is refused (it was silently replaced); the length the config gives, or none, serves."""
    model = LlamaForCausalLM(tiny_config()).eval()
    with pytest.raises(
        ValueError, match=rf"original_max_position_embeddings=4 would be replaced by {MAX_POS}"
    ):
        install_rope(model, {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 4})
    install_rope(model, {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": MAX_POS})
    install_rope(model, {"rope_type": "dynamic", "factor": 2.0})
    # (Llama keeps a YaRN dict's own length)
    install_rope(model, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8})
    # the model's own length passes only in a dict of its own rope type: dynamic NTK scales from
    # max_position_embeddings whatever the dict holds, even Llama 3's own original length
    llama3 = {"rope_type": "llama3", "factor": 2.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    own = LlamaForCausalLM(tiny_config({**llama3, "original_max_position_embeddings": 16})).eval()
    install_rope(own, dict(own.config.rope_parameters))
    with pytest.raises(
        ValueError, match=rf"original_max_position_embeddings=16 would be replaced by {MAX_POS}"
    ):
        install_rope(own, {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16})


def test_a_half_precision_gptj_keeps_its_scalings_temperature() -> None:
    """install_rope's docstring: a GPT-J built in bfloat16 keeps its rounded frequencies "with any scaling"; the
    tables are still YaRN's, temperature included (cos² + sin² = attention_scale², as with exact frequencies)."""
    config = transformers.GPTJConfig(
        n_embd=64, n_head=4, rotary_dim=8, n_layer=1, vocab_size=32, n_positions=64
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    rope = install_rope(model, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})
    module = model.transformer.rotary_emb
    assert module.freq_dtype == torch.bfloat16 and rope.attention_scale > 1.05
    x, pos = torch.zeros(1, 40, 8), torch.arange(40)[None]
    for table in (
        module(x.float(), pos),
        HFRotaryEmbedding(rope, module.layout, module.order)(x.float(), pos),
    ):
        assert isinstance(table, tuple)
        torch.testing.assert_close(
            table[0] ** 2 + table[1] ** 2,
            torch.full_like(table[0], rope.attention_scale**2),
            atol=1e-5,
            rtol=1e-5,
        )


def _tiny_phi3(**overrides: Any) -> Any:
    return transformers.Phi3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2, **overrides,
    )  # fmt: skip


def test_phi3_takes_the_original_length_from_its_config_not_the_dict() -> None:
    """scaling_from_config: LongRoPE takes config.original_max_position_embeddings first, as Phi-3 stores it (and
    transformers builds from it), and derives a missing factor from it; install_rope refuses a dict whose other
    length would be replaced by the config's."""
    from posenc.hf import scaling_from_config

    halves = {"short_factor": [1.0] * 8, "long_factor": [2.0] * 8}
    config = _tiny_phi3(max_position_embeddings=16384, original_max_position_embeddings=4096)
    scaling = scaling_from_config(
        config, {"rope_type": "longrope", **halves, "original_max_position_embeddings": 2048}
    )
    assert isinstance(scaling, posenc.LongRoPEScaling)
    assert (scaling.original_max_position_embeddings, scaling.factor) == (4096, 4.0)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        _tiny_phi3(max_position_embeddings=64, original_max_position_embeddings=16)
    ).eval()
    before = model.model.rotary_emb
    dict_length = {"rope_type": "longrope", "factor": 4.0, **halves, "original_max_position_embeddings": 8}
    with pytest.raises(ValueError, match=r"original_max_position_embeddings=8 would be replaced by 16"):
        install_rope(model, dict_length)
    assert model.model.rotary_emb is before


def test_a_longrope_dict_without_factor_takes_it_from_the_config() -> None:
    """scaling_from_config's docstring: LongRoPE without ``factor`` uses max_position_embeddings / original (real
    Phi-3-128k configs have none), and its temperature is then transformers'."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from posenc.hf import scaling_from_config

    rope = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8, "rope_theta": 1e4}
    config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=1, vocab_size=32, max_position_embeddings=16384,
        rope_parameters={**rope, "original_max_position_embeddings": 4096},
    )  # fmt: skip
    scaling = scaling_from_config(config, dict(config.rope_parameters))
    assert isinstance(scaling, posenc.LongRoPEScaling)
    assert (scaling.factor, scaling.original_max_position_embeddings) == (4.0, 4096)
    _, attention = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu")
    assert scaling.attention_factor_value() == pytest.approx(attention, rel=1e-6)


def test_rope_from_config_edge_sizes_of_the_rotated_part() -> None:
    """A GPT-J rotating the whole head (rotary_dim == head_dim) is accepted, one dim pair past it refused;
    head_dim=0 means unset (hidden_size // num_attention_heads); rope_parameters' partial_rotary_factor comes
    before a config attribute of that name (the module docstring's order)."""

    class GPTJ:
        model_type, hidden_size, num_attention_heads, rotary_dim = "gptj", 64, 4, 16

    rope = rope_from_config(GPTJ())
    assert (rope.head_dim, rope.rotary_dim, rope.interleaved) == (16, 16, True)
    GPTJ.rotary_dim = 18
    with pytest.raises(
        UnsupportedRotary, match=r"\[rotary-size\] config.rotary_dim=18 does not fit head_dim=16"
    ):
        rope_from_config(GPTJ())

    class Unset:
        head_dim, hidden_size, num_attention_heads, rope_theta = 0, 64, 4, 1e4

    assert (rope_from_config(Unset()).head_dim, rope_from_config(Unset()).rotary_dim) == (16, 16)

    class Both:
        head_dim, partial_rotary_factor = 16, 0.25
        rope_parameters = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}

    assert rope_from_config(Both()).rotary_dim == 8


def test_a_yarn_checkpoint_cast_to_half_precision_installs(plain: Any) -> None:
    """install_rope's docstring: after model.to(bfloat16), which rounds transformers' inv_freq buffer, the model's
    own YaRN (with its temperature) is recognised and installed, equal to transformers built in that dtype."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    theirs = transformers.AutoModelForCausalLM.from_config(tiny_config(yarn), dtype=torch.bfloat16).eval()
    theirs.load_state_dict(plain.state_dict())
    ours = LlamaForCausalLM(tiny_config(yarn)).eval()
    ours.load_state_dict(plain.state_dict())
    ours.to(torch.bfloat16)
    rope = install_rope(ours, yarn)
    assert rope.attention_scale > 1.05
    tokens = torch.randint(0, 100, (2, 40))
    torch.testing.assert_close(logits(ours, tokens), logits(theirs, tokens), atol=0, rtol=0)
