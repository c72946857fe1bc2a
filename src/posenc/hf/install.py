"""Switch a loaded transformers model to a posenc RoPE, the whole model equal to transformers with that RoPE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..rotary.rope import RoPE
from ..rotary.scaling import RopeScaling
from .adapter import HFRotaryEmbedding, match_layout
from .config import ROPE_KEYS, rope_from_config, rope_parameters, scaling_from_config
from .errors import UnsupportedRotary
from .folded import Attribute, folded_attributes

#: name of the model attribute where install_rope remembers the attributes it set (to undo them later).
_TOUCHED = "_posenc_rope_attributes"


def rotary_slots(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """Every ``(path, parent, "rotary_emb")`` holding a rotary embedding; raise on any other rotary module."""
    slots: list[tuple[str, nn.Module, str]] = []
    others: list[str] = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            path = f"{parent_name}.{name}".lstrip(".")
            if isinstance(child, HFRotaryEmbedding) or type(child).__name__.endswith("RotaryEmbedding"):
                if name == "rotary_emb":
                    slots.append((path, parent, name))
                else:
                    others.append(path)
    if others:
        raise UnsupportedRotary(
            "several-rotary-modules",
            f"this model has rotary modules other than rotary_emb ({others}), e.g. separate "
            "local and global RoPEs; posenc.hf supports models with one RoPE",
        )
    if not slots:
        raise UnsupportedRotary(
            "no-rotary-module",
            f"{type(model).__name__} has no `rotary_emb` module; posenc.hf supports transformers models whose "
            "decoder computes its rotary tables once, in a module called rotary_emb",
        )
    return slots


def rope_config(rotary: nn.Module, root: Any) -> Any:
    """The config ``rotary`` was built from: its own ``config`` (a composite model's text config), else ``root``."""
    own = getattr(rotary, "config", None)
    return own if own is not None and hasattr(own, "to_dict") else root


def _new_parameters(config: Any, scaling: RopeScaling | None) -> dict[str, Any] | None:
    """The rope dict transformers would hold for ``scaling``: 5.x keeps the base (and partial factor) in it."""
    if getattr(config, "rope_parameters", None) is None:
        return None if scaling is None else scaling.to_dict()
    old = rope_parameters(config)
    kept = {k: old[k] for k in ROPE_KEYS if k in old}
    return {**kept, **({"rope_type": "default"} if scaling is None else scaling.to_dict())}


def install_rope(
    model: nn.Module, scaling: RopeScaling | Mapping[str, Any] | None = None, **options: Any
) -> RoPE:
    """Switch a loaded transformers model to a posenc RoPE with ``scaling``, in place.

    The new RoPE keeps the model's base, ``head_dim`` and rotated size; ``scaling`` replaces whatever scaling the
    config had (None: plain RoPE). A dict in transformers' format is completed from the config as transformers
    would (see :func:`scaling_from_config`). The *whole* model then equals transformers' model built with that
    rope configuration: the rotary tables (float64 angles instead of transformers' float32 product), and every
    number transformers derives from the rope parameters elsewhere, such as DeepSeek's YaRN ``mscale`` in the
    attention's softmax scale (see :mod:`posenc.hf.folded`). Calling it again (with another scaling, or None on
    a checkpoint that ships a scaling) undoes the previous factors. ``model.config`` is left unchanged.

    The table layout (half, interleaved, ``R/2`` columns, complex ``freqs_cis``) is read from the model's own
    rotary module, which must agree with the config before anything is changed.

    Args:
        model: e.g. ``LlamaForCausalLM``, ``GPTNeoXForCausalLM``, ``DeepseekV3ForCausalLM``.
        scaling: a :class:`posenc.RopeScaling`, a transformers-style dict, or None.
        **options: more :class:`posenc.RoPE` options (``cache_len``).

    Returns:
        The installed :class:`posenc.RoPE` (one module, shared by every replaced ``rotary_emb``).

    Raises:
        TypeError: ``model`` has no ``config``.
        UnsupportedRotary (a ValueError; ``.cause`` says which): the model cannot be made equal; nothing changed.
        ValueError: a bad scaling.
    """
    root = getattr(model, "config", None)
    if root is None:
        raise TypeError(f"install_rope needs a transformers model with a .config, got {type(model).__name__}")
    slots = rotary_slots(model)
    config = rope_config(getattr(slots[0][1], slots[0][2]), root)
    current = rope_from_config(config, **options)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    layouts = set()
    for _, parent, name in slots:
        module = getattr(parent, name)
        if isinstance(module, HFRotaryEmbedding):  # already posenc: its layout was checked when installed
            layouts.add((module.layout, module.order))
        else:
            layouts.add(match_layout(module, current.to(device), device))
    if len(layouts) != 1:
        raise UnsupportedRotary(
            "several-rotary-modules", f"rotary_emb modules with different layouts: {layouts}"
        )
    layout, order = layouts.pop()
    new_scaling = scaling_from_config(config, scaling)
    rope = RoPE(
        current.head_dim,
        base=current.base,
        rotary_dim=current.rotary_dim,
        interleaved=current.interleaved,
        scaling=new_scaling,
        **{k: v for k, v in options.items() if k != "interleaved"},
    ).to(device)
    updates = _attribute_updates(model, root, config, new_scaling, tuple(path for path, _, _ in slots))
    adapter = HFRotaryEmbedding(rope, layout, order)
    adapter.config = config  # what the rotary module was built from, for the next install
    for _, parent, name in slots:
        setattr(parent, name, adapter)
    modules = dict(model.named_modules())
    for (path, key), value in updates.items():
        setattr(modules[path], key, value)
    object.__setattr__(model, _TOUCHED, set(updates))  # a plain attribute, not a submodule or buffer
    return rope


def _attribute_updates(
    model: nn.Module, root: Any, config: Any, scaling: RopeScaling | None, rotary_paths: tuple[str, ...]
) -> dict[Attribute, Any]:
    """Rope-dependent attributes to set for ``scaling``, including those a previous install set (to undo them)."""
    touched: set[Attribute] = getattr(model, _TOUCHED, set())
    if getattr(config, "rope_parameters", None) is None and not hasattr(config, "rope_scaling"):
        return {}  # nothing in the config for a model to read (GPT-J, CodeGen)
    if scaling_from_config(config, rope_parameters(config) or None) == scaling and not touched:
        return {}  # the model already is what its config says
    changed, values = folded_attributes(model, root, config, _new_parameters(config, scaling), rotary_paths)
    return {key: values.get(key) for key in changed | touched}


def apply_rope(
    model: nn.Module, scaling: RopeScaling | Mapping[str, Any] | None = None, **options: Any
) -> RoPE:
    """Alias of :func:`install_rope` (the older name; ``posenc.functional.apply_rope`` rotates tensors)."""
    return install_rope(model, scaling, **options)
