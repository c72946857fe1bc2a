"""posenc.hf.install_rope against transformers across architectures: tiny random models built from configs only.

For each (architecture, scaling): model A is transformers built with the scaling in its config; model B has the
same weights, built without (or with another) scaling, then ``install_rope(B, scaling)``. Logits (inside and
past the original length) and greedy generation must be equal, or install_rope must refuse with a cause.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from posenc.hf import HFRotaryEmbedding, UnsupportedRotary, install_rope, rope_from_config  # noqa: E402

MAX_POS = 32
TINY: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=128, max_position_embeddings=MAX_POS, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
_MOE: dict[str, Any] = dict(
    num_local_experts=4, num_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
)  # fmt: skip
_MLA: dict[str, Any] = dict(
    kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=1,
    topk_group=1, first_k_dense_replace=1, num_key_value_heads=4, **_MOE,
)  # fmt: skip
#: model type -> config overrides on top of TINY. Half layout unless said: interleaved (Cohere, GPT-J, CodeGen),
#: R/2 columns (GPT-OSS), complex freqs_cis (Llama 4, DeepSeek-V2), YaRN mscale folded into attention (MLA).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    # Phi-3 keeps L0 on the config, and transformers reads it there (the dict's is replaced): the same 16 as
    # the longrope dict below, so its switch at L0 falls between the lengths compared
    "phi3": {"original_max_position_embeddings": 16},
    "gemma": {"head_dim": 16},
    "olmo2": {},
    "granite": {},
    "helium": {"head_dim": 16},
    "stablelm": {"partial_rotary_factor": 0.25},
    "gpt_neox": {"partial_rotary_factor": 0.5},
    "gptj": {"rotary_dim": 8, "max_position_embeddings": 64},
    "codegen": {"rotary_dim": 8, "max_position_embeddings": 64},
    "cohere": {},
    "gpt_oss": {"head_dim": 16, **_MOE},
    "llama4_text": {"head_dim": 16, **_MOE, "interleave_moe_layer_step": 1},
    "deepseek_v2": _MLA,
    "deepseek_v3": _MLA,
    "minicpm3": _MLA,
}
#: models whose config has no rope dict (only "none" has a transformers reference) or accepts only some types.
ONLY: dict[str, tuple[str, ...]] = {"gptj": ("none",), "codegen": ("none",), "phi3": ("none", "longrope")}
SCALINGS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn_mscale": {  # DeepSeek-V3's form: attention factor 1 in the tables, mscale**2 in the softmax scale
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 16,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "beta_fast": 32,
        "beta_slow": 1,
    },  # fmt: skip
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 16,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },  # fmt: skip
    "longrope": {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 16},
}

#: more architectures, generic tiny overrides (MLA ones fold YaRN's mscale into attention); fewer scalings each.
_MLA_TYPES = ("axk1", "axk2", "deepseek_v32", "glm4_moe_lite", "glm_moe_dsa", "sarvam_mla", "youtu")
_GENERIC_TYPES = (
    "afmoe apertus apertus1p5_text arcee aria_text bitnet cohere2 cohere2_moe cwm diffllama doge ernie4_5 "
    "ernie4_5_moe exaone exaone4 exaone_moe flex_olmo flint gemma2 glm glm4 glm4_moe gpt_neox_japanese granitemoe "
    "granitemoeshared hrm_text hunyuan_v1_dense hunyuan_v1_moe hy_v3 hy_v4 hyperclovax internlm3 iquestcoder jais2 "
    "jetmoe kolibri1 lara_mini lfm2 minimax minimax_m2 ministral mixtral nanochat nemotron olmo olmo_hybrid olmoe "
    "persimmon phi qwen2_moe qwen3_moe sarvam_moe seed_oss smollm3 solar_open starcoder2 vaultgemma minimax_m3_vl_text"
).split()
BREADTH: dict[str, dict[str, Any]] = {
    **{t: {"head_dim": 16, **_MOE} for t in _GENERIC_TYPES},
    **{t: _MLA for t in _MLA_TYPES},
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},
    "granite_swa": {"head_dim": 16, "layer_rope_theta": [1e4, 5e5]},  # rotary_embs: one module per base
    "granitemoe_swa": {"head_dim": 16, "layer_rope_theta": [1e4, 5e5], **_MOE},
    "dots1": {"head_dim": 16, **_MOE, "n_shared_experts": 1, "first_k_dense_replace": 1},
    # hybrids: one attention layer after a linear-attention (Gated DeltaNet) / Mamba one
    "qwen3_next": {"head_dim": 16, **_MOE, "layer_types": ["linear_attention", "full_attention"]},
    "bamba": {"head_dim": 16, "attn_layer_indices": [1]},
    "lfm2_moe": {"head_dim": 16, **_MOE, "layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    # one layer of two MLA attentions (YaRN mscale folded into both), zero experts beside the routed ones
    "longcat_flash": {
        **_MLA,
        "head_dim": 8,
        "num_layers": 1,
        "ffn_hidden_size": 64,
        "moe_topk": 2,
        "zero_expert_num": 2,
        "expert_ffn_hidden_size": 32,
    },  # fmt: skip
}
#: architectures install_rope refuses (see test_refusals_of_real_architectures_name_their_cause).
REFUSED: dict[str, dict[str, Any]] = {"ministral3": {"head_dim": 16}}
#: POSENC_HF_FULL=1 runs every scaling on them too (about 2 minutes on 2 CPU cores; the README's table).
BREADTH_SCALINGS = tuple(SCALINGS) if os.environ.get("POSENC_HF_FULL") else ("none", "yarn_mscale")


def _rope(model_type: str, scaling: dict[str, Any] | None) -> dict[str, Any]:
    if ONLY.get(model_type) == ("none",):
        return {}
    params: dict[str, Any] = {"rope_theta": 10000.0, **(scaling or {"rope_type": "default"})}
    partial = _overrides(model_type).get("partial_rotary_factor")
    if partial is not None:
        params["partial_rotary_factor"] = partial
    if params["rope_type"] == "longrope":  # one factor per rotated pair
        half = rope_from_config(tiny_config(model_type, None)).rotary_dim // 2
        params["short_factor"] = [1.0 + 0.05 * i for i in range(half)]
        params["long_factor"] = [1.0 + 0.5 * i for i in range(half)]
    return {"rope_parameters": params}


def _overrides(model_type: str) -> dict[str, Any]:
    return {**REFUSED, **BREADTH, **ARCHITECTURES}[model_type]


def tiny_config(model_type: str, scaling: dict[str, Any] | None) -> Any:
    cls = transformers.CONFIG_MAPPING[model_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**{**TINY, **_overrides(model_type), **_rope(model_type, scaling)})


def tiny_model(
    model_type: str, scaling: dict[str, Any] | None, weights: dict[str, Any] | None = None
) -> nn.Module:
    torch.manual_seed(0)
    config = tiny_config(model_type, scaling)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    if weights is not None:
        model.load_state_dict(weights)
    return model


def assert_same_model(ours: nn.Module, theirs: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for length in (12, 40):  # inside and past the original length (dynamic, longrope and llama3 switch)
            tokens = torch.randint(3, 128, (2, length), generator=gen)
            torch.testing.assert_close(ours(tokens).logits, theirs(tokens).logits, atol=1e-4, rtol=1e-4)
        prompt = torch.randint(3, 128, (1, 10), generator=gen)
        kwargs: dict[str, Any] = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert torch.equal(ours.generate(prompt, **kwargs), theirs.generate(prompt, **kwargs))


CASES = [
    pytest.param(arch, name, id=f"{arch}-{name}")
    for arch in ARCHITECTURES
    for name in ONLY.get(arch, tuple(SCALINGS))
] + [pytest.param(arch, name, id=f"{arch}-{name}") for arch in BREADTH for name in BREADTH_SCALINGS]


@pytest.mark.parametrize(("arch", "name"), CASES)
def test_install_equals_transformers_with_that_scaling(arch: str, name: str) -> None:
    theirs = tiny_model(arch, SCALINGS[name])
    ours = tiny_model(arch, None, theirs.state_dict())
    install_rope(ours, _rope(arch, SCALINGS[name]).get("rope_parameters"))  # longrope's factors completed
    assert isinstance(ours.get_submodule(_rotary_path(ours)), HFRotaryEmbedding)
    assert_same_model(ours, theirs)


MSCALE = ("deepseek_v2", "deepseek_v3", "minicpm3")


@pytest.mark.parametrize("arch", MSCALE)
@pytest.mark.parametrize("target", ["none", "linear", "yarn"])
def test_switching_a_shipped_deepseek_yarn_undoes_its_mscale(arch: str, target: str) -> None:
    shipped = tiny_model(arch, SCALINGS["yarn_mscale"])
    theirs = tiny_model(arch, SCALINGS[target], shipped.state_dict())
    install_rope(shipped, SCALINGS[target])
    assert_same_model(shipped, theirs)
    install_rope(shipped, SCALINGS["yarn_mscale"])  # and back: equal to the checkpoint as shipped
    assert_same_model(shipped, tiny_model(arch, SCALINGS["yarn_mscale"], shipped.state_dict()))


def _rotary_path(model: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if name.endswith(("rotary_emb", "pos_emb")))


def test_refusals_name_their_cause() -> None:
    model = tiny_model("llama", None)
    model.config.head_dim = 8  # the config now misstates the rotated size
    with pytest.raises(UnsupportedRotary, match=r"\[rotary-size\].*16 wide.*8 rotated dims") as err:
        install_rope(model)
    assert err.value.cause == "rotary-size"
    model = tiny_model("gpt_oss", None)
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 500.0}
    with pytest.raises(UnsupportedRotary, match=r"\[table-values\].*base=500.0"):
        install_rope(model)
    model = tiny_model("llama", None)
    model.model.rotary_emb.forward = lambda x, position_ids: x  # type: ignore[method-assign,assignment]
    with pytest.raises(UnsupportedRotary, match=r"\[table-output\]"):
        install_rope(model)


@pytest.mark.parametrize("arch", ["gptj", "codegen"])
def test_half_precision_sin_cos_table_installs(arch: str) -> None:
    """model.to(bfloat16) casts GPT-J's sin/cos table (a buffer) itself; it was refused as table-values. It is
    recognised, and the installed model equals the cast one (the table is cast to the activations' dtype there)."""
    theirs = tiny_model(arch, None).to(torch.bfloat16)
    ours = tiny_model(arch, None, theirs.state_dict()).to(torch.bfloat16)
    install_rope(ours)
    tokens = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens).logits, theirs(tokens).logits, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["gptj", "codegen"])
def test_models_built_in_half_precision_keep_their_rounded_frequencies(arch: str) -> None:
    """GPT-J and CodeGen built in bfloat16 (from_config / from_pretrained with dtype=...) compute their frequencies
    in bfloat16 (an int64 arange divided: torch's default dtype) into a float32 table, 5e-4 off the exact one at
    position 7: install_rope refused them as table-values. The adapter now rounds its frequencies the same way, so
    the installed model has exactly the logits it had, up to the last position; a misread base is still refused."""
    config = tiny_config(arch, None)
    theirs = transformers.AutoModelForCausalLM.from_config(
        config, dtype=torch.bfloat16, attn_implementation="eager"
    ).eval()
    ours = transformers.AutoModelForCausalLM.from_config(
        config, dtype=torch.bfloat16, attn_implementation="eager"
    ).eval()
    ours.load_state_dict(theirs.state_dict())
    install_rope(ours)
    assert ours.transformer.rotary_emb.freq_dtype == torch.bfloat16
    tokens = torch.randint(3, 128, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens).logits, theirs(tokens).logits, atol=0, rtol=0)
    install_rope(ours)  # again: the installed adapter keeps its rounding
    assert ours.transformer.rotary_emb.freq_dtype == torch.bfloat16
    wrong = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    wrong.transformer.rotary_emb.embed_positions.mul_(1.001)
    with pytest.raises(UnsupportedRotary, match=r"\[table-values\]"):
        install_rope(wrong)


def _fuyu(rope: dict[str, Any] | None, weights: dict[str, Any] | None = None) -> nn.Module:
    torch.manual_seed(0)
    params = {"rope_theta": 1e4, "partial_rotary_factor": 0.5, **(rope or {"rope_type": "default"})}
    text = {**TINY, "head_dim": 16, "rope_parameters": params}
    model = transformers.FuyuForCausalLM(transformers.FuyuConfig(text_config=text, vocab_size=128)).eval()
    if weights is not None:
        model.load_state_dict(weights)
    return model


@pytest.mark.parametrize("name", ["linear", "yarn_mscale"])
def test_composite_model_reads_the_rotary_modules_own_config(name: str) -> None:
    """Fuyu keeps the RoPE in config.text_config (a Persimmon, partial rotary): read and rebuilt from there."""
    theirs = _fuyu(SCALINGS[name])
    ours = _fuyu(None, theirs.state_dict())
    install_rope(ours, SCALINGS[name])
    tokens = torch.randint(3, 128, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            ours(input_ids=tokens).logits, theirs(input_ids=tokens).logits, atol=1e-4, rtol=1e-4
        )


def test_refusals_of_real_architectures_name_their_cause() -> None:
    """Ministral 3 reads rope_parameters in its attention's forward (Llama-4 query scaling); a rotary module
    outside rotary_emb / rotary_embs is used in ways posenc does not know. Both are refused with their cause."""
    with pytest.raises(UnsupportedRotary, match=r"\[runtime-config\] Ministral3Attention"):
        install_rope(tiny_model("ministral3", None), SCALINGS["yarn"])
    model = tiny_model("llama", None)
    model.model.layers[0].local_rope = type(model.model.rotary_emb)(model.config)
    with pytest.raises(UnsupportedRotary, match=r"\[several-rotary-modules\].*layers.0.local_rope"):
        install_rope(model)


def test_multi_axis_positions_are_refused_not_broadcast() -> None:
    """An installed RoPE given mrope's (axes, B, S) positions raised a shape error deep in the attention (Qwen3.5,
    NeoMME before install_rope refused them); it names the cause."""
    ropes = install_rope(tiny_model("llama", None))
    adapter = HFRotaryEmbedding(ropes if not isinstance(ropes, dict) else ropes["full_attention"])
    with pytest.raises(UnsupportedRotary, match=r"\[multimodal\].*\(3, 1, 8\)"):
        adapter(torch.zeros(1, 8, 1), torch.arange(8).expand(3, 1, 8))


def test_a_pos_emb_is_swapped_only_when_called_as_rotary_emb() -> None:
    """LFM2-MoE names its rotary module pos_emb, called (x, position_ids) as rotary_emb (in BREADTH); one called
    otherwise (MusicFlamingo's: audio timestamps and a length) is refused."""

    class TimestampRotaryEmbedding(nn.Module):
        def forward(self, timestamps: torch.Tensor, seq_len: int) -> torch.Tensor:
            return timestamps

    model = tiny_model("llama", None)
    model.model.pos_emb = TimestampRotaryEmbedding()
    with pytest.raises(UnsupportedRotary, match=r"\[several-rotary-modules\].*model.pos_emb"):
        install_rope(model)


#: one RoPE per layer type (rope_parameters keyed by "sliding_attention" / "full_attention").
_LAYERED: dict[str, Any] = {
    "head_dim": 16,
    "layer_types": ["sliding_attention", "full_attention"],
    "sliding_window": 8,
}
PER_LAYER_TYPE: dict[str, dict[str, Any]] = {
    **{
        t: {**_LAYERED, **_MOE}
        for t in ("gemma3_text", "olmo3", "laguna", "mellum", "modernbert-decoder", "lfm3")
    },
    "gemma3n_text": {  # no KV sharing (it needs both layer types before the shared layers), small AltUp / LAuReL
        **_LAYERED,
        "num_kv_shared_layers": 0,
        "vocab_size_per_layer_input": 128,
        "hidden_size_per_layer_input": 8,
        "laurel_rank": 4,
        "altup_num_inputs": 2,
        "activation_sparsity_pattern": [0.0, 0.0],
    },  # fmt: skip
    "dory": {  # one input, one recurrent (one loop) and one output layer around the sliding/full pattern
        **_LAYERED,
        "num_hidden_layers": 4,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "n_input_layers": 1,
        "n_recurrent_layers": 2,
        "n_output_layers": 1,
        "n_recurrent_loops": 1,
    },  # fmt: skip
    "zaya": {  # layer types "hybrid_sliding" / "hybrid" (attention + MoE); one expert per token only
        "head_dim": 16,
        "layer_types": ["hybrid_sliding", "hybrid"],
        "sliding_window": 8,
        "num_experts": 4,
        "num_experts_per_tok": 1,
        "router_hidden_size": 16,
        "moe_intermediate_size": 32,
    },  # fmt: skip
    "dots3_note_text": {  # MLA: DSA-indexed and sliding layers (swa_*: the sliding layers' own sizes)
        **_MLA,
        "head_dim": 16,
        "v_head_dim": 16,
        "n_shared_experts": 1,
        "shared_experts_intermediate_size": 32,
        "num_hidden_layers": 3,
        "layer_types": ["indexed_attention", "sliding_attention", "indexed_attention"],
        "sliding_window": 8,
        "index_n_heads": 2,
        "index_head_dim": 16,
        "index_topk": 4,
        "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 4,
        "swa_q_lora_rank": 16,
        "swa_kv_lora_rank": 16,
        "swa_head_dim": 16,
        "swa_qk_nope_head_dim": 8,
        "swa_v_head_dim": 16,
    },  # fmt: skip
}
#: (plain, scaled) layer type names where not ("sliding_attention", "full_attention").
_LAYER_KEYS: dict[str, tuple[str, str]] = {
    "zaya": ("hybrid_sliding", "hybrid"),
    "dots3_note_text": ("sliding_attention", "indexed_attention"),
}


def _layer_keys(model_type: str) -> tuple[str, str]:
    return _LAYER_KEYS.get(model_type, ("sliding_attention", "full_attention"))


def _layered(
    model_type: str, scaling: dict[str, Any] | None, weights: dict[str, Any] | None = None
) -> nn.Module:
    torch.manual_seed(0)
    plain, scaled = _layer_keys(model_type)
    rope = {
        plain: {"rope_type": "default", "rope_theta": 1e4},
        scaled: {"rope_theta": 1e5, **(scaling or {"rope_type": "default"})},
    }
    config = transformers.CONFIG_MAPPING[model_type](
        **{**TINY, **PER_LAYER_TYPE[model_type], "rope_parameters": rope}
    )
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    if weights is not None:
        model.load_state_dict(weights)
    return model


@pytest.mark.parametrize("arch", PER_LAYER_TYPE)
@pytest.mark.parametrize("name", ["none", "linear", "dynamic", "yarn_mscale", "llama3"])
def test_one_rope_per_layer_type(arch: str, name: str) -> None:
    theirs = _layered(arch, SCALINGS[name])
    ours = _layered(arch, SCALINGS["yarn"], theirs.state_dict())  # ships a scaling: undone on the way
    plain, scaled = _layer_keys(arch)
    ropes = install_rope(ours, {scaled: SCALINGS[name]})
    assert isinstance(ropes, dict) and sorted(ropes) == sorted((plain, scaled))
    assert ropes[plain].scaling is None and ropes[plain].base == 1e4
    assert_same_model(ours, theirs)
    with pytest.raises(UnsupportedRotary, match=r"\[per-layer-type\].*dict keyed by layer type"):
        install_rope(ours, SCALINGS["linear"])


def test_phi3_refuses_a_dicts_original_length_its_config_replaces_but_takes_its_own() -> None:
    """transformers builds Phi-3's LongRoPE from ``config.original_max_position_embeddings``, whatever the dict
    says: another length in a dict given to install_rope is refused (it was silently replaced); the model's own
    rope parameters pass even where they disagree with that attribute, since transformers built it from them."""
    params = _rope("phi3", SCALINGS["longrope"])["rope_parameters"]  # L0 = 16 in the dict
    with pytest.raises(ValueError, match=r"original_max_position_embeddings=8 would be replaced by 16"):
        install_rope(tiny_model("phi3", None), {**params, "original_max_position_embeddings": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.CONFIG_MAPPING["phi3"](
            **{**TINY, "original_max_position_embeddings": 32, "rope_parameters": params}
        )
    torch.manual_seed(0)
    theirs = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    ours = copy.deepcopy(theirs)
    install_rope(ours, dict(ours.config.rope_parameters))  # its own (16 beside the attribute's 32): as built
    assert_same_model(ours, theirs)
