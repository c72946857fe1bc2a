"""The :class:`posenc.RoPE` a transformers config describes, for transformers 4.x and 5.x configs.

Rotary sizes and bases live in several places depending on the architecture and the transformers version:

* base: ``rope_parameters["rope_theta"]`` (5.x), ``config.rope_theta`` (4.x), ``config.rotary_emb_base``
  (GPT-NeoX in 4.x), else 10000;
* rotated size: ``config.rotary_dim`` (GPT-J, CodeGen: a number of dims; ignored next to a 5.x
  ``rope_parameters``, which holds the size as ``partial_rotary_factor``), ``partial_rotary_factor`` on the
  config (4.x), ``config.rotary_pct`` (GPT-NeoX in 4.x), else the whole head;
* scaling: ``rope_parameters`` (5.x) or ``rope_scaling`` (4.x), with ``rope_type`` or the legacy ``type``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..rotary.rope import RoPE
from ..rotary.scaling import LENGTH, SCALINGS, Bound, RopeScaling, check_param, parse_scaling
from ..validation import check_int
from .errors import UnsupportedRotary

#: the kind of number ``partial_rotary_factor`` / ``rotary_pct`` and ``rotary_dim`` are; the sizes they give are
#: checked against the head next (an :class:`UnsupportedRotary` "rotary-size").
_SHARE = Bound(note="the rotated share of the head")
_ROTARY_DIM = Bound(integer=True, note="a number of rotated dims")
#: rope types whose original length transformers defaults to ``max_position_embeddings``.
_NEEDS_ORIGINAL = ("yarn", "llama3", "longrope")
#: keys of ``rope_parameters`` that describe the RoPE itself rather than its scaling.
ROPE_KEYS = ("rope_theta", "partial_rotary_factor")
#: model types whose attention pairs ``(x[2i], x[2i+1])`` (transformers' ``rotate_every_two``, a complex view
#: of consecutive pairs, or an interleaved cos/sin table). DeepSeek-V3-style configs say it with
#: ``rope_interleave``. :func:`posenc.hf.install_rope` reads the table layout from the module itself.
#: tests/test_hf_coverage.py checks this set against every rotary model type of the installed transformers (its
#: ``rotate_half`` called on a probe, ``rotate_every_two``, or a complex view).
_INTERLEAVED_MODEL_TYPES = frozenset(
    {
        "gptj", "codegen", "cohere", "cohere2", "cohere2_moe", "llama4", "llama4_text", "deepseek_v2",
        "glm", "glm4", "helium", "ernie4_5", "ernie4_5_moe", "moonshine", "moonshine_streaming",
        "moonshine_streaming_encoder", "blt", "blt_global_transformer", "blt_local_decoder", "blt_local_encoder",
        "blt_patcher", "deepseek_v4",
    }
)  # fmt: skip
#: model types whose rotation posenc's RoPE is not, with how: they are refused by :func:`rope_from_config`
#: (:func:`posenc.hf.install_rope` replaces only their tables, which are ordinary).
_OTHER_ROTATION: dict[str, str] = {
    "deepseek_v4": "rotates the last dims of each head ([nope | rope]); posenc's partial RoPE rotates the first "
    "rotary_dim dims",
    "nanochat": "rotates each pair by minus its angle (its rotate_half flips the signs); posenc rotates by plus",
}


def layer_types(config: Any) -> list[str] | None:
    """The layer types of a config with one RoPE per layer type (Gemma 3, OLMo 3: ``rope_parameters =
    {"full_attention": {...}, "sliding_attention": {...}}``) that have a RoPE; None for one RoPE per model."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    types = [k for k, v in params.items() if isinstance(v, Mapping)]
    used = getattr(config, "layer_types", None)
    if types and isinstance(used, list | tuple):  # transformers builds tables only for the types layers use
        types = [t for t in types if t in used] or types
    return sorted(types) or None


def rope_parameters(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """The flat RoPE dict of ``config`` (transformers 5 ``rope_parameters`` or 4.x ``rope_scaling``), or ``{}``;
    for a config with one RoPE per layer type, the one of ``layer_type``."""
    params = getattr(config, "rope_parameters", None)
    field = "rope_parameters"
    if params is None:
        params, field = getattr(config, "rope_scaling", None), "rope_scaling"
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(
            f"transformers config: {field} must be a dict (e.g. {{'rope_type': 'yarn', 'factor': 4.0}}) or None, "
            f"got {params!r} ({type(params).__name__})"
        )
    params = dict(params or {})
    types = layer_types(config)
    if types is not None:
        if layer_type not in types:
            raise UnsupportedRotary(
                "per-layer-type",
                f"this config has a different RoPE per layer type ({types}); got layer_type={layer_type!r}. "
                "Pass layer_type= to rope_from_config, and a dict keyed by layer type to install_rope",
            )
        params = dict(params[layer_type])
    elif layer_type is not None:
        raise ValueError(f"layer_type={layer_type!r} given, but this config has one RoPE for every layer")
    if params.get("mrope_section") is not None:
        raise UnsupportedRotary(
            "multimodal",
            "multimodal RoPE (mrope_section) rotates 3-D positions; posenc.hf supports 1-D RoPE only",
        )
    return params


def head_dim(config: Any) -> int:
    """``config.head_dim``, else ``hidden_size // num_attention_heads``."""
    try:
        size = getattr(config, "head_dim", None)
    except Exception as err:  # noqa: BLE001 -- transformers raises its own error for per-layer head sizes
        raise UnsupportedRotary(
            "per-layer-type", f"head_dim differs between layers in this config ({type(err).__name__}: {err})"
        ) from err
    if size is not None and size is not False and size != 0:  # (0: unset in some configs, as None)
        return check_int("head_dim", size, at_least=1, owner="transformers config")
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if hidden is None or heads is None:
        raise ValueError("config needs head_dim, or hidden_size and num_attention_heads, to size the RoPE")
    hidden = check_int("hidden_size", hidden, at_least=1, owner="transformers config")
    heads = check_int("num_attention_heads", heads, at_least=1, owner="transformers config")
    return hidden // heads


def rope_base(config: Any, params: Mapping[str, Any] | None = None) -> float:
    """The frequency base: ``rope_theta`` (in ``rope_parameters`` or on the config), ``rotary_emb_base``, 10000."""
    params = rope_parameters(config) if params is None else params
    for name, value in (
        ("rope_parameters['rope_theta']", params.get("rope_theta")),
        ("rope_theta", getattr(config, "rope_theta", None)),
        ("rotary_emb_base", getattr(config, "rotary_emb_base", None)),
    ):
        if value is not None:
            return float(
                check_param("transformers config", name, value, Bound(above=1.0, note="the RoPE base"))
            )
    return 10000.0


def rotary_size(config: Any, params: Mapping[str, Any] | None = None) -> int:
    """The number of rotated dims ``R`` of each head (``rotary_dim``, a partial factor, or the whole head)."""
    params = rope_parameters(config) if params is None else params
    dim = head_dim(config)
    # transformers 5 moves every rotated size into rope_parameters["partial_rotary_factor"]; a config that still
    # has a rotary_dim next to rope_parameters (MiniMax-M3) does not rotate by it. GPT-J and CodeGen have no
    # rope_parameters and rotate config.rotary_dim dims.
    explicit = (
        getattr(config, "rotary_dim", None) if getattr(config, "rope_parameters", None) is None else None
    )
    if explicit is not None:
        explicit = check_param("transformers config", "rotary_dim", explicit, _ROTARY_DIM)
        if not 0 < explicit <= dim:
            raise UnsupportedRotary(
                "rotary-size",
                f"config.rotary_dim={explicit} does not fit head_dim={dim}; expected 0 < rotary_dim <= {dim}",
            )
        return int(explicit)
    for name, value in (
        ("rope_parameters['partial_rotary_factor']", params.get("partial_rotary_factor")),
        ("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)),
        ("rotary_pct", getattr(config, "rotary_pct", None)),
    ):
        if value is not None:
            size = int(dim * check_param("transformers config", name, value, _SHARE))
            if not 0 < size <= dim or size % 2:
                raise UnsupportedRotary(
                    "rotary-size",
                    f"partial rotary factor {value} of head_dim {dim} gives {size} rotated dims; expected an even "
                    f"number in 1..{dim}: the config's sizes do not describe one RoPE per head",
                )
            return size
    return dim


def is_interleaved(config: Any) -> bool:
    """Whether the architecture rotates consecutive pairs ``(x[2i], x[2i+1])``."""
    return bool(getattr(config, "rope_interleave", False)) or (
        getattr(config, "model_type", None) in _INTERLEAVED_MODEL_TYPES
    )


def scaling_from_config(config: Any, scaling: RopeScaling | Mapping[str, Any] | None) -> RopeScaling | None:
    """``scaling`` (a dict in transformers' format, or a posenc object) completed as transformers would.

    For a dict, missing lengths come from the config exactly as transformers fills them: YaRN, Llama 3 and
    LongRoPE take ``original_max_position_embeddings`` from the config (``config.original_max_position_embeddings``
    first, as Phi-3 stores it, else ``max_position_embeddings``); dynamic NTK uses ``max_position_embeddings``;
    YaRN and LongRoPE without ``factor`` use ``max_position_embeddings / original_max_position_embeddings``.
    """
    if scaling is None or isinstance(scaling, RopeScaling):
        return scaling
    if not isinstance(scaling, Mapping):
        return parse_scaling(scaling)  # raises the TypeError
    params = {k: v for k, v in scaling.items() if v is not None and k not in ROPE_KEYS}
    kind = params.get("rope_type", params.get("type", "default"))
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is not None and kind in (*_NEEDS_ORIGINAL, "dynamic"):  # a length the scaling is built from
        max_pos = check_param("transformers config", "max_position_embeddings", max_pos, LENGTH)
    if kind in _NEEDS_ORIGINAL:
        stored = getattr(config, "original_max_position_embeddings", None)
        if stored is not None:
            params["original_max_position_embeddings"] = stored
        elif max_pos is not None:
            params.setdefault("original_max_position_embeddings", max_pos)
    if kind == "dynamic" and max_pos is not None:
        params["original_max_position_embeddings"] = (
            max_pos  # transformers scales from max_position_embeddings
        )
    if kind in ("yarn", "longrope") and "factor" not in params and max_pos is not None:
        original = params.get("original_max_position_embeddings")
        if original is not None:  # checked before it divides
            label = SCALINGS.get(kind).label
            params["factor"] = max_pos / check_param(
                label, "original_max_position_embeddings", original, LENGTH
            )
    return parse_scaling(params)


def rope_from_config(config: Any, layer_type: str | None = None, **options: Any) -> RoPE:
    """The :class:`posenc.RoPE` that a transformers config describes.

    Reads ``head_dim`` (or ``hidden_size / num_attention_heads``), the base and the rotated size from every place
    transformers 4.x and 5.x keep them (see the module docstring), the scaling from ``rope_parameters`` /
    ``rope_scaling``, and the pair layout (interleaved for GPT-J, CodeGen, Cohere, Llama 4, DeepSeek-V2 and
    configs with ``rope_interleave=True``; half, as Llama, otherwise).

    Args:
        config: a transformers ``PretrainedConfig`` (or any object with the same attributes).
        layer_type: for configs with one RoPE per layer type (Gemma 3: "full_attention", "sliding_attention").
        **options: more :class:`posenc.RoPE` options (``cache_len``, ``interleaved`` to override the layout).

    Raises:
        UnsupportedRotary: (a ValueError) cause ``rope-type``: a ``rope_type`` or parameters posenc does not
            implement (Gemma 4's "proportional", Mistral 4's ``llama_4_scaling_beta``); ``per-layer-type``,
            ``multimodal``, ``rotary-size``.
        ValueError: missing sizes.
    """
    if not hasattr(config, "__dict__") or isinstance(config, Mapping | type):
        hint = (
            " (a dict: build the config first, e.g. LlamaConfig(**d))" if isinstance(config, Mapping) else ""
        )
        raise TypeError(
            "rope_from_config: config must be a transformers config object (model.config, AutoConfig...), "
            f"got {type(config).__name__}{hint}"
        )
    if not hasattr(config, "hidden_size") and not hasattr(config, "head_dim") and hasattr(config, "config"):
        raise TypeError(
            f"rope_from_config: config must be a transformers config, got a {type(config).__name__} (a model?); "
            "pass its .config"
        )
    other = _OTHER_ROTATION.get(str(getattr(config, "model_type", None)))
    if other is not None:
        rope_parameters(config, layer_type)  # (its own refusals first: per layer type, multimodal)
        raise UnsupportedRotary("rotation", f"{config.model_type} {other}")
    return table_rope(config, layer_type, **options)


def table_rope(config: Any, layer_type: str | None = None, **options: Any) -> RoPE:
    """:func:`rope_from_config` for the rotary *tables* only (what :func:`posenc.hf.install_rope` replaces): which dims
    of a head the model rotates, and how, stays the model's own code, so any model type goes."""
    params = rope_parameters(config, layer_type)
    options.setdefault("interleaved", is_interleaved(config))
    try:
        scaling = scaling_from_config(config, params) if params else None
    except UnsupportedRotary:
        raise
    except ValueError as err:  # the model's own RoPE is one posenc cannot express: it cannot be reproduced
        raise UnsupportedRotary(
            "rope-type", f"the config's rope parameters {params} are not a RoPE posenc implements: {err}"
        ) from err
    return RoPE(
        head_dim(config),
        base=rope_base(config, params),
        rotary_dim=rotary_size(config, params),
        scaling=scaling,
        **options,
    )
