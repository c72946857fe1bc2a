"""install_rope's original-length check lets the model's own rope parameters through (a dict of the
config's rope type holding the config's original length: transformers built the model from it), whether the dict
spells the type "rope_type" or, as older transformers did, "type". For dynamic NTK the resolved length is
max_position_embeddings (32), not the dict's 16, so only that clause lets the model's own dict pass."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from posenc.hf import install_rope  # noqa: E402

OWN = {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16}


def _model() -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=100, max_position_embeddings=32, rope_parameters={"rope_theta": 10000.0, **OWN},
        attn_implementation="eager",
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("key", ["rope_type", "type"])
def test_the_models_own_dict_passes_in_either_spelling(key: str) -> None:
    scaling = {k: v for k, v in OWN.items() if k != "rope_type"} | {key: "dynamic"}
    install_rope(_model(), scaling)
