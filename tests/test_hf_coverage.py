"""Every RoPE architecture the installed transformers ships is accounted for by the install_rope tests.

The scan reads transformers' modeling sources (no model is built): a model type is rotary when the modeling file
of its model class defines or uses a rotary embedding. Each must be checked in tests/test_hf_architectures.py
(ARCHITECTURES, BREADTH, REFUSED, PER_LAYER_TYPE, the Fuyu case) or tests/test_hf_more_architectures.py (MORE) or left out here with a reason, so a
transformers upgrade that adds an architecture fails this test until someone checks it.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

#: a class named like a rotary or RoPE module, a use of one (``LlamaRotaryEmbedding``), or a call of
#: ``apply_rotary*`` other than its definition (Jamba and Nemotron-H keep a copied, unused apply_rotary_pos_emb).
_ROTARY = re.compile(
    r"^class \w*(?:Rotary|Rope|RoPE)\w*\(|\w+RotaryEmbedding\b|^(?!\s*def )[^#\n]*\bapply_rotary\w*\(", re.M
)
_CLASS = re.compile(r"^class (\w+)\(", re.M)


def rotary_model_types() -> dict[str, str]:
    """``{model_type: models/ folder of its modeling code}`` for every rotary model type of the installed
    transformers. A config-only model type (Exaone: a Llama config) is looked up through its model class."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES, model_type_to_module_name
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    root = pathlib.Path(transformers.__file__).parent / "models"
    rotary: set[str] = set()
    home: dict[str, str] = {}  # model class name -> its folder
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        source = "".join(f.read_text(encoding="utf-8") for f in sorted(path.glob("modeling_*.py")))
        if _ROTARY.search(source):
            rotary.add(path.name)
        for name in _CLASS.findall(source):
            home.setdefault(name, path.name)
    found: dict[str, str] = {}
    for model_type in CONFIG_MAPPING_NAMES:
        folder = model_type_to_module_name(model_type)
        if not any((root / folder).glob("modeling_*.py")):
            model_class = MODEL_MAPPING_NAMES.get(model_type)
            model_class = model_class[0] if isinstance(model_class, tuple) else model_class
            folder = home.get(str(model_class), folder)
        if folder in rotary:
            found[model_type] = folder
    return found


def _words(text: str, reason: str) -> dict[str, str]:
    return dict.fromkeys(text.split(), reason)


#: rotary model types deliberately not checked against install_rope, with why. Sub-model types of a composite
#: (``*_vision``, ``*_audio``) are listed because they share the composite's modeling file.
_COMPOSITE = (
    "EvollaModel apertus1p5 apertus1p5_vision_tokenizer aria blt blt_local_decoder blt_local_encoder blt_patcher "
    "chameleon chameleon_vqgan clvp clvp_decoder clvp_encoder cohere_compass cohere_compass_vision cosmos3_edge "
    "cosmos3_edge_vision csm csm_depth_decoder_model deepseek_ocr2 deepseek_ocr2_encoder "
    "deepseek_ocr2_sam_vision_model deepseek_ocr2_vision dia dia_decoder dia_encoder diffusion_gemma dinov3_vit "
    "dots3_note dots3_note_audio_encoder dots3_note_vision_encoder edgetam_video edgetam_video_mask_decoder "
    "edgetam_video_prompt_encoder efficientloftr embedding_gemma2 emu3 emu3_vqgan eomt_dinov3 ernie4_5_vl_moe "
    "ernie4_5_vl_moe_vision esm esmc esmfold2 evolla exaone4_5 exaone4_5_vision gemma3 gemma3n gemma3n_audio "
    "gemma3n_vision gemma4 gemma4_audio gemma4_unified gemma4_unified_audio gemma4_unified_vision gemma4_vision "
    "glm4v glm4v_moe glm4v_moe_vision glm4v_vision glm5_next glm5_next_vision glm_image glm_image_vision "
    "glm_image_vqmodel glm_ocr glm_ocr_vision glmasr glmasr_encoder gradium_phonon_tts granite4_vision "
    "granite4_vision_text granite_docling granite_docling_vision higgs_audio_v2 hunyuan_vl hunyuan_vl_vision "
    "hy_v4_vl hy_v4_vl_vision idefics idefics_perciever idefics_vision inkling2 inkling2_vision kimi_k25 "
    "kimi_k25_vision kyutai_speech_to_text lasr_ctc lasr_encoder lfm3_vl lfm3_vl_vision lightglue llama4 "
    "llama4_vision_model mimi mimi_decoder mimi_encoder minimax_m3_vl minimax_m3_vl_vision mistral_large4 mlcd "
    "mlcd_vision_model mllama mllama_vision_model molmo2 molmo2_adapter molmo2_vision moonshine "
    "moonshine_streaming moonshine_streaming_encoder moshi moshi_depth muse_glimmer muse_glimmer_assistant "
    "muse_glimmer_vision muse_spark muse_spark_audio muse_spark_vision musicflamingo nemo_speechlm "
    "nemotron3_5_transcribe_asr_audio nemotron3_5_transcribe_audio nemotron3_5_transcribe_word_timestamp "
    "nemotron3_diarization nemotron3_diarization_audio neucodec paddleocr_vl paddleocr_vl_vision pe_audio "
    "pe_audio_encoder pe_audio_video pe_audio_video_encoder pe_video pe_video_encoder phi4_multimodal "
    "phi4_multimodal_audio phi4_multimodal_vision pixtral pocket_tts pocket_tts_audio_tokenizer "
    "pocket_tts_audio_tokenizer_decoder pocket_tts_audio_tokenizer_encoder qwen3_5 qwen3_5_moe qwen3_5_moe_vision "
    "qwen3_5_vision qwen4_exp qwen4_exp_vision sam2_video sam2_video_mask_decoder sam2_video_prompt_encoder sam3 "
    "sam3_detr_decoder sam3_detr_encoder sam3_geometry_encoder sam3_mask_decoder sam3_tracker_video "
    "sam3_tracker_video_mask_decoder sam3_tracker_video_prompt_encoder sam3_vision_model sam3_vit_model sapiens2 "
    "sapiens2_head seamless_m4t step3p5_vision step3p7 t5gemma t5gemma2 t5gemma2_decoder t5gemma2_encoder "
    "timesfm2_5 unlimited_ocr unlimited_ocr_sam_vision_model unlimited_ocr_vision unlimited_ocr_vision_encoder "
    "video_llama_3 video_llama_3_vision vjepa2 voxtral_realtime voxtral_realtime_encoder voxtral_realtime_text "
    "wav2vec2-bert wav2vec2-conformer xcodec2"
)
_MROPE = (
    "cosmos3_edge_text glm4v_moe_text glm4v_text glm_image_text glm_ocr_text hunyuan_vl_text qwen2_5_omni "
    "qwen2_5_omni_audio_encoder qwen2_5_omni_bigvgan qwen2_5_omni_dit qwen2_5_omni_talker qwen2_5_omni_text "
    "qwen2_5_omni_thinker qwen2_5_omni_token2wav qwen2_5_omni_vision_encoder qwen2_5_vl qwen2_5_vl_text "
    "qwen2_5_vl_vision qwen2_vl qwen2_vl_vision qwen3_omni_moe qwen3_omni_moe_audio_encoder "
    "qwen3_omni_moe_talker_code_predictor qwen3_omni_moe_talker_text qwen3_omni_moe_text qwen3_omni_moe_thinker "
    "qwen3_omni_moe_vision_encoder qwen3_vl qwen3_vl_moe qwen3_vl_moe_text qwen3_vl_moe_vision qwen3_vl_text "
    "qwen3_vl_vision"
)
NOT_COVERED: dict[str, str] = {
    **_words(
        _COMPOSITE,
        "vision, audio, speech or composite (sub-config) model: 2-D/3-D RoPE or a text part of its own",
    ),
    **_words(_MROPE, "mrope (3-D positions): refused as [multimodal], see qwen2_vl_text in MORE"),
}


def _load(file: str) -> Any:
    path = pathlib.Path(__file__).with_name(file)
    spec = importlib.util.spec_from_file_location(f"_hf_lists_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def _covered() -> set[str]:
    lists = [
        (_load("test_hf_architectures.py"), ("ARCHITECTURES", "BREADTH", "REFUSED", "PER_LAYER_TYPE")),
        (_load("test_hf_more_architectures.py"), ("MORE",)),
    ]
    return {
        "fuyu",
        *(t for module, names in lists for name in names for t in getattr(module, name)),
    }  # fuyu: own


def test_every_rotary_architecture_is_checked_or_left_out_with_a_reason() -> None:
    found = rotary_model_types()
    assert len(found) > 100, f"the scan found only {len(found)} rotary model types: has transformers moved?"
    covered = _covered()
    both = sorted(covered & set(NOT_COVERED))
    assert not both, f"model types both tested and in NOT_COVERED: {both}"
    missing = sorted(set(found) - covered - set(NOT_COVERED))
    assert not missing, (
        f"rotary model types in transformers {transformers.__version__} that no install_rope test covers: "
        f"{missing}. Check each (tests/test_hf_architectures.py: BREADTH, REFUSED, ...; tests/test_hf_more_architectures.py: MORE) or add it to NOT_COVERED "
        "with the reason"
    )
    gone = sorted(set(NOT_COVERED) - set(found))
    assert not gone, (
        f"NOT_COVERED lists model types that are not rotary (or gone) in this transformers: {gone}"
    )


def _pairing(folder: str) -> str:
    """How the modeling code in ``folder`` pairs and turns dims: "consecutive" ``(x[2i], x[2i+1])``
    (``rotate_every_two``, a complex view, or a ``rotate_half`` that turns ``0..3`` into ``(-1, 0, -3, 2)``),
    "half" (``(-2, -3, 0, 1)``, or no ``rotate_half``), or "flipped" (``(2, 3, 0, -1)`` or ``(1, 0, 3, -2)``: minus
    the angle)."""
    import importlib

    import torch

    root = pathlib.Path(transformers.__file__).parent / "models" / folder
    source = "".join(f.read_text(encoding="utf-8") for f in sorted(root.glob("modeling_*.py")))
    if "def rotate_every_two" in source or "view_as_complex" in source:
        return "consecutive"
    module = importlib.import_module(f"transformers.models.{folder}.modeling_{folder}")
    rotate_half = getattr(module, "rotate_half", None)
    if rotate_half is None:
        return "half"
    kinds = {
        (-1.0, 0.0, -3.0, 2.0): "consecutive",
        (-2.0, -3.0, 0.0, 1.0): "half",
        (2.0, 3.0, 0.0, -1.0): "flipped",
        (1.0, 0.0, 3.0, -2.0): "flipped",
    }
    out = tuple(abs(v) if v == 0 else v for v in rotate_half(torch.arange(4.0)).tolist())
    assert out in kinds, (
        f"{folder}.rotate_half turned (0, 1, 2, 3) into {out}: a pairing this test does not know"
    )
    return kinds[out]


def test_rope_from_config_pairs_dims_as_every_rotary_architecture_does() -> None:
    """rope_from_config's ``interleaved`` against the pairing of each rotary model type's own code (default config;
    NOT_COVERED's vision and audio models left out),
    or a refusal (UnsupportedRotary, or sizes a default config leaves out): never the other pairing, and a refusal
    for a rotation by minus the angle."""
    import warnings

    from transformers import CONFIG_MAPPING

    from posenc.hf import UnsupportedRotary, rope_from_config
    from posenc.hf.config import layer_types

    wrong = []
    for model_type, folder in sorted(rotary_model_types().items()):
        if model_type in NOT_COVERED:  # vision, audio, composite: no 1-D RoPE of a language model to describe
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                config = CONFIG_MAPPING[model_type]()
            except Exception:  # noqa: BLE001 -- a config class that needs arguments: nothing to read
                continue
        pairing = _pairing(folder)
        for layer_type in layer_types(config) or [None]:
            try:
                rope = rope_from_config(config, layer_type=layer_type)
            except (UnsupportedRotary, ValueError, TypeError):
                continue
            want = bool(getattr(config, "rope_interleave", False)) or pairing == "consecutive"
            if pairing == "flipped" or rope.interleaved != want:
                wrong.append(f"{model_type} (interleaved={rope.interleaved}, its code: {pairing})")
    assert not wrong, f"rope_from_config rotates unlike transformers for: {wrong}"
