"""install_rope on more architectures, built tiny from configs only: plain RoPE, installed equal or refused.

Encoders, text halves of composite models (built from their own model class where transformers has no auto class
for the sub-config) and causal LMs. Each model type here counts as checked for tests/test_hf_coverage.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pathlib
import sys
import warnings
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from posenc.hf import UnsupportedRotary, install_rope  # noqa: E402


def _architectures() -> Any:
    """tests/test_hf_architectures.py as a module (its TINY config and MoE / MLA overrides)."""
    name = "_hf_architectures_lists"
    if name not in sys.modules:
        path = pathlib.Path(__file__).with_name("test_hf_architectures.py")
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


_ARCH = _architectures()
TINY: dict[str, Any] = _ARCH.TINY
_MOE: dict[str, Any] = _ARCH._MOE
_MLA: dict[str, Any] = _ARCH._MLA

#: more model types, built tiny with AutoModel (encoders, text halves of composites) or AutoModelForCausalLM, plain
#: RoPE only: the cause install_rope refuses them with, or None for "installs, equal". (tests/test_hf_coverage.py)
MORE: dict[str, str | None] = {
    **dict.fromkeys(
        "eurobert gte jina_embeddings_v3 nomic_bert openai_privacy_filter granite_docling_text muse_glimmer_text "
        "muse_spark_text modernbert ultrabert beam deepseek_v4 falcon_h1 phimoe mistral_large4_text dbrx bailing_hybrid".split()
    ),
    **dict.fromkeys(
        "roformer recurrent_gemma granitemoehybrid inkling2_text zamba2".split(), "no-rotary-module"
    ),
    "glm5_next_text": "no-rotary-module",
    **dict.fromkeys(("gemma4_text", "gemma4_unified_text"), "rope-type"),  # "proportional" (full attention)
    "mistral4": "rope-type",  # yarn with llama_4_scaling_beta (a query scale read at run time)
    "mimo_v2_flash": "rotary-size",  # its default partial factor 0.334 of a 16-wide head: 5 rotated dims
    "hy_v4_vl_text": "multimodal",
    "qwen2_vl_text": "multimodal",  # mrope: its rotary module has an mrope_section (a default)
    # mrope_section defaults in the rotary module (not in the config): 3-D positions even for text. Was installed,
    # then every forward failed on the (3, B, S) positions
    **dict.fromkeys(("qwen3_5_text", "qwen3_5_moe_text", "qwen4_exp_text"), "multimodal"),
    "embedding_gemma2_text": None,  # one RoPE per layer type; equal head sizes (its 512-wide global heads: refused)
    "cohere_compass_text": "multimodal",  # mrope_section per layer type in the rotary module
    "neomme": "multimodal",
    # sub-configs without an auto class, built from their model class (_SUB_MODELS)
    **dict.fromkeys(
        "blt_global_transformer deepseek_ocr2_text diffusion_gemma_text emu3_text_model mllama_text_model step3p5 "
        "t5_gemma_module t5gemma2_text unlimited_ocr_text".split()
    ),
    "paddleocr_vl_text": "multimodal",  # mrope_section default in its rotary module
    "ernie4_5_vl_moe_text": "multimodal",  # mrope_section in the config (its default needs 128-wide heads)  # two-axis mrope with no mrope_section: found by calling it with (2, B, S) positions
    "molmo2_text": "several-rotary-modules",  # rotary_emb_unscaled
}
#: one RoPE per layer type, plain by default (DeepSeek-V4: "main" and "compress"; phimoe's transformers config
#: rejects YaRN, so it is not in BREADTH; Falcon-H1 is, plain only, here for speed).
_OWN_ROPE = (
    "modernbert",
    "ultrabert",
    "beam",
    "mimo_v2_flash",
    "dbrx",
    "gemma4_text",
    "gemma4_unified_text",
    "mistral4",
    "neomme",
    "embedding_gemma2_text",
)  # DBRX: in attn_config


_MORE_LAYERED = {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8}
_GATED_DELTANET: dict[str, Any] = {
    "layer_types": ["linear_attention", "full_attention"], "linear_key_head_dim": 8, "linear_value_head_dim": 8,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "shared_expert_intermediate_size": 32,
}  # fmt: skip
_LAYERED_ROPE = {
    t: {"rope_type": "default", "rope_theta": 1e4} for t in ("sliding_attention", "full_attention")
}
_MORE_OVERRIDES: dict[str, dict[str, Any]] = {
    "deepseek_ocr2_text": {"mlp_layer_types": ["dense", "sparse"]},
    "unlimited_ocr_text": {"mlp_layer_types": ["dense", "sparse"], "num_key_value_heads": 4},
    "step3p5": {"sliding_window": 8},
    "t5_gemma_module": {**_MORE_LAYERED, "dropout_rate": 0.0},
    "t5gemma2_text": {**_MORE_LAYERED, "dropout_rate": 0.0, "rope_parameters": _LAYERED_ROPE},
    "diffusion_gemma_text": {  # equal head sizes (its default global heads are 512 wide: refused, per-layer-type)
        **_MORE_LAYERED, "rope_parameters": _LAYERED_ROPE, "global_head_dim": 16, "num_global_key_value_heads": 2,
        "top_k_experts": 2,
    },  # fmt: skip
    "ernie4_5_vl_moe_text": {
        "moe_intermediate_size": [32, 32], "moe_num_experts": 4,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 2, 4]},
    },  # fmt: skip
    **dict.fromkeys(("qwen3_5_text", "qwen3_5_moe_text"), _GATED_DELTANET),
    "neomme": _MORE_LAYERED,
    "cohere_compass_text": {
        **_MORE_LAYERED,
        "rope_parameters": {t: {"rope_type": "default", "rope_theta": 1e4} for t in _MORE_LAYERED["layer_types"]},
    },
    "embedding_gemma2_text": {
        **_MORE_LAYERED, "global_head_dim": 16, "num_global_key_value_heads": 2, "hidden_size_per_layer_input": 8,
        "vocab_size_per_layer_input": 128, "embedding_dim": 32,
    },  # fmt: skip
    "qwen4_exp_text": {  # "full_attention" becomes its indexed (sparse) attention
        **_GATED_DELTANET, "indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 8,
        "indexer_compress_ratio": 4, "hc_lowrank": 8, "ngram_vocab_size_base": 256, "split_ngram_parts": 2,
        "heads_per_ngram": 2,
    },  # fmt: skip
    "zamba2": {"layers_block_type": ["mamba", "hybrid"]},
    "mistral_large4_text": _MLA,
    **dict.fromkeys(
        ("bailing_hybrid", "glm5_next_text"),
        {"layer_types": ["linear_attention", "full_attention"], "num_key_value_heads": 4},
    ),
    "dbrx": {
        "d_model": 64, "n_heads": 4, "n_layers": 2,
        "attn_config": {"kv_n_heads": 2, "rope_theta": 1e4, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2},
    },
}  # fmt: skip


#: sub-configs of composite models that no auto class builds: ``module.Class`` under transformers.models.
_SUB_MODELS = {
    "blt_global_transformer": "blt.BltGlobalTransformer",
    "deepseek_ocr2_text": "deepseek_ocr2.DeepseekOcr2TextModel",
    "diffusion_gemma_text": "diffusion_gemma.DiffusionGemmaEncoderTextModel",
    "emu3_text_model": "emu3.Emu3TextModel",
    "mllama_text_model": "mllama.MllamaTextModel",
    "paddleocr_vl_text": "paddleocr_vl.PaddleOCRTextModel",
    "step3p5": "step3p7.Step3p7TextModel",
    "t5_gemma_module": "t5gemma.T5GemmaEncoder",
    "t5gemma2_text": "t5gemma2.T5Gemma2TextEncoder",
    "unlimited_ocr_text": "unlimited_ocr.UnlimitedOcrTextModel",
    "ernie4_5_vl_moe_text": "ernie4_5_vl_moe.Ernie4_5_VLMoeTextModel",
}


def _model_class(model_type: str) -> Any:
    if model_type in _SUB_MODELS:
        module, name = _SUB_MODELS[model_type].split(".")
        return getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), name)
    causal = model_type in transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return transformers.AutoModelForCausalLM if causal else transformers.AutoModel


def _inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Token ids, or embeddings for a model that takes only those (BLT's global transformer)."""
    gen = torch.Generator().manual_seed(1)
    if "input_ids" in inspect.signature(model.forward).parameters:
        return {"input_ids": torch.randint(3, 128, (2, 40), generator=gen)}
    return {"inputs_embeds": torch.randn(2, 40, TINY["hidden_size"], generator=gen)}


def _more_model(model_type: str) -> nn.Module:
    torch.manual_seed(0)
    plain = {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}
    overrides = {
        **TINY, "head_dim": 16, **_MOE, **({} if model_type in _OWN_ROPE else plain),
        **_MORE_OVERRIDES.get(model_type, {}),
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.CONFIG_MAPPING[model_type](**overrides)
    cls = _model_class(model_type)
    build = cls.from_config if model_type not in _SUB_MODELS else cls._from_config
    return build(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("arch", MORE)
def test_more_architectures_install_exactly_or_refuse_with_their_cause(arch: str) -> None:
    theirs = _more_model(arch)
    ours = _more_model(arch)
    ours.load_state_dict(theirs.state_dict())
    if MORE[arch] is not None:
        with pytest.raises(UnsupportedRotary) as err:
            install_rope(ours)
        assert err.value.cause == MORE[arch]
        return
    install_rope(ours)
    inputs = _inputs(theirs)
    with torch.no_grad():
        got, want = ours(**inputs), theirs(**inputs)
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)  # logits or last hidden state
