"""Hugging Face transformers interop (the ``posenc[hf]`` extra): RoPE from a config, RoPE into a model.

* :func:`rope_from_config`: the :class:`posenc.RoPE` a transformers config describes (``rope_theta``,
  ``partial_rotary_factor``, ``head_dim``, ``rope_parameters`` in transformers 5 or ``rope_scaling`` in 4.x,
  every ``rope_type`` posenc knows).
* :func:`apply_rope`: swap a loaded Llama-family model's rotary embedding for a posenc RoPE with a given
  scaling (YaRN, Llama 3, LongRoPE, ...), without retraining. Angles are then float64 (exact to float32 rounding up to position 2**31)
  instead of transformers' float32 product.

transformers is not imported here: configs and models are used through their attributes, so this module
works with any version that has ``model.config`` and a ``rotary_emb`` module called as
``rotary_emb(hidden_states, position_ids) -> (cos, sin)`` with ``(B, S, R)`` half-layout tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .rotary.rope import RoPE
from .rotary.scaling import RopeScaling, parse_scaling

__all__ = ["HFRotaryEmbedding", "apply_rope", "rope_from_config", "scaling_from_config"]

#: rope types whose original length transformers defaults to ``max_position_embeddings``.
_NEEDS_ORIGINAL = ("yarn", "llama3", "longrope")


def _rope_parameters(config: Any) -> dict[str, Any]:
    """The flat RoPE dict of ``config`` (transformers 5 ``rope_parameters`` or 4.x ``rope_scaling``)."""
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = getattr(config, "rope_scaling", None)
    params = dict(params or {})
    nested = sorted(k for k, v in params.items() if isinstance(v, Mapping))
    if nested:
        raise ValueError(
            f"this config has a different RoPE per layer type ({nested}); posenc.hf handles one RoPE per model. "
            "Build each with posenc.RoPE(..., scaling=config.rope_parameters[layer_type])"
        )
    if params.get("mrope_section") is not None:
        raise ValueError(
            "multimodal RoPE (mrope_section) rotates 3-D positions; posenc.hf supports 1-D RoPE only"
        )
    return params


def _head_dim(config: Any) -> int:
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if not hidden or not heads:
        raise ValueError("config needs head_dim, or hidden_size and num_attention_heads, to size the RoPE")
    return int(hidden) // int(heads)


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
    params = {
        k: v for k, v in scaling.items() if v is not None and k not in ("rope_theta", "partial_rotary_factor")
    }
    kind = params.get("rope_type", params.get("type", "default"))
    max_pos = getattr(config, "max_position_embeddings", None)
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
        if original:
            params["factor"] = max_pos / original
    return parse_scaling(params)


def rope_from_config(config: Any, **options: Any) -> RoPE:
    """The :class:`posenc.RoPE` (half layout, as transformers' Llama family) that a transformers config describes.

    Args:
        config: a transformers ``PretrainedConfig`` (or any object with the same attributes).
        **options: more :class:`posenc.RoPE` options (``cache_len``).

    Raises:
        ValueError: a ``rope_type`` posenc does not implement, per-layer-type or multimodal RoPE, or missing sizes.
    """
    params = _rope_parameters(config)
    head_dim = _head_dim(config)
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    partial = params.get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None) or 1.0
    rotary_dim = int(head_dim * partial)
    scaling = scaling_from_config(config, params) if params else None
    return RoPE(head_dim, base=float(theta), rotary_dim=rotary_dim, scaling=scaling, **options)


class HFRotaryEmbedding(nn.Module):
    """A posenc :class:`RoPE` behind transformers' rotary-embedding interface.

    ``forward(x, position_ids)`` with ``x: (B, S, ...)`` and ``position_ids: (B, S)`` returns ``(cos, sin)``,
    each ``(B, S, R)`` in ``x``'s dtype, the two halves repeated (transformers' ``rotate_half`` layout), the
    attention factor folded in.
    """

    def __init__(self, rope: RoPE) -> None:
        super().__init__()
        if rope.interleaved:
            raise ValueError(
                "transformers' Llama family pairs (x[i], x[i + R/2]); pass a RoPE with interleaved=False"
            )
        self.rope = rope

    @property
    def attention_scaling(self) -> float:
        return self.rope.attention_scale

    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = self.rope.cos_sin(position_ids.shape[-1], position_ids, x.device)  # (1|B, 1, S, P)
        if cos.dim() == 4:
            cos, sin = cos.squeeze(-3), sin.squeeze(-3)  # (1|B, S, P)
        return torch.cat((cos, cos), dim=-1).to(x.dtype), torch.cat((sin, sin), dim=-1).to(x.dtype)


def _rotary_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every ``(parent, "rotary_emb")`` holding a rotary embedding; raise on any other rotary module."""
    slots: list[tuple[nn.Module, str]] = []
    others: list[str] = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if type(child).__name__.endswith("RotaryEmbedding"):
                if name == "rotary_emb":
                    slots.append((parent, name))
                else:
                    others.append(f"{parent_name}.{name}".lstrip("."))
    if others:
        raise ValueError(
            f"this model has rotary modules other than rotary_emb ({others}), e.g. separate local "
            "and global RoPEs; posenc.hf.apply_rope supports models with one RoPE (Llama, Mistral, Qwen2, Phi-3)"
        )
    if not slots:
        raise ValueError(
            f"{type(model).__name__} has no `rotary_emb` module; posenc.hf.apply_rope supports Llama-family "
            "transformers models, whose decoder computes (cos, sin) once in model.rotary_emb"
        )
    return slots


def _check_faithful(original: nn.Module, reference: HFRotaryEmbedding, device: torch.device) -> None:
    """Raise unless ``reference`` reproduces ``original``'s (cos, sin): the config was read right."""
    buffer = getattr(original, "inv_freq", None)
    dtype = buffer.dtype if isinstance(buffer, Tensor) and buffer.is_floating_point() else torch.float32
    x = torch.zeros(1, 8, 1, device=device)
    pos = torch.arange(8, device=device).unsqueeze(0)  # (1, 8)
    with torch.no_grad():
        got, want = reference(x, pos), original(x, pos)
    tol = max(1e-5, 64 * torch.finfo(dtype).eps)
    for a, b, what in zip(got, want, ("cos", "sin"), strict=True):
        if a.shape != b.shape or (a - b.to(a.dtype)).abs().max().item() > tol:
            raise ValueError(
                f"{type(original).__name__} does not compute the {what} table of a half-layout RoPE built from this "
                "config (different layout or an unsupported variant); posenc.hf.apply_rope cannot replace it faithfully"
            )


def apply_rope(
    model: nn.Module, scaling: RopeScaling | Mapping[str, Any] | None = None, **options: Any
) -> RoPE:
    """Switch a loaded Llama-family transformers model to a posenc RoPE with ``scaling``, in place.

    The new RoPE keeps the model's ``rope_theta``, ``head_dim`` and ``partial_rotary_factor``; ``scaling``
    replaces whatever scaling the config had (None: plain RoPE). A dict in transformers' format is completed
    from the config as transformers would (see :func:`scaling_from_config`), so
    ``apply_rope(model, {"rope_type": "yarn", "factor": 4.0})`` equals loading the weights into a model whose
    config has that ``rope_scaling``. ``model.config`` is left unchanged: call this again after reloading.

    Args:
        model: e.g. ``LlamaForCausalLM``; its ``config`` and its ``rotary_emb`` module are used.
        scaling: a :class:`posenc.RopeScaling`, a transformers-style dict, or None.
        **options: more :class:`posenc.RoPE` options (``cache_len``).

    Returns:
        The installed :class:`posenc.RoPE` (one module, shared by every replaced ``rotary_emb``).

    Raises:
        TypeError: ``model`` has no ``config``.
        ValueError: no single ``rotary_emb`` to replace, a config posenc cannot read (see
            :func:`rope_from_config`), an existing rotary module posenc cannot reproduce, or a bad scaling.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"apply_rope needs a transformers model with a .config, got {type(model).__name__}")
    slots = _rotary_slots(model)
    current = rope_from_config(config, **options)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    for parent, name in slots:
        if not isinstance(getattr(parent, name), HFRotaryEmbedding):  # already posenc: nothing to verify
            _check_faithful(getattr(parent, name), HFRotaryEmbedding(current.to(device)), device)
    rope = RoPE(
        current.head_dim,
        base=current.base,
        rotary_dim=current.rotary_dim,
        scaling=scaling_from_config(config, scaling),
        **options,
    ).to(device)
    adapter = HFRotaryEmbedding(rope)
    for parent, name in slots:
        setattr(parent, name, adapter)
    return rope
