"""Switch a loaded transformers model to a posenc RoPE, the whole model equal to transformers with that RoPE."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from ..rotary.rope import RoPE
from ..rotary.scaling import SCALINGS, RopeScaling, available_scalings
from .adapter import HFLayerTypeRotaryEmbedding, HFRotaryEmbedding, Match, match_layout
from .config import ROPE_KEYS, layer_types, rope_base, rope_parameters, scaling_from_config, table_rope
from .errors import UnsupportedRotary
from .folded import Attribute, folded_attributes, path_to

#: name of the model attribute where install_rope remembers the attributes it set (to undo them later).
_TOUCHED = "_posenc_rope_attributes"


def rotary_slots(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """Every ``(path, parent, name)`` holding a rotary embedding: ``rotary_emb`` modules, ``pos_emb`` ones called
    the same way (LFM2-MoE; not MusicFlamingo's, called with audio timestamps) and the items of ``rotary_embs``
    lists (Granite-SWA: one per base); raise on any other rotary module."""
    slots: list[tuple[str, nn.Module, str]] = []
    others: list[str] = []
    for parent_name, parent in model.named_modules():
        if any(parent_name == p or parent_name.startswith(p + ".") for p, _, _ in slots):
            continue  # inside a rotary module (posenc's per-layer-type adapter holds one per type)
        for name, child in parent.named_children():
            path = f"{parent_name}.{name}".lstrip(".")
            if isinstance(child, HFRotaryEmbedding) or type(child).__name__.endswith("RotaryEmbedding"):
                if (
                    name == "rotary_emb"
                    or (name == "pos_emb" and _takes_position_ids(child))
                    or (isinstance(parent, nn.ModuleList) and parent_name.endswith("rotary_embs"))
                ):
                    slots.append((path, parent, name))
                else:
                    others.append(path)
    if others:
        raise UnsupportedRotary(
            "several-rotary-modules",
            f"this model has rotary modules other than rotary_emb, pos_emb(x, position_ids) and rotary_embs[i] "
            f"({others}); posenc.hf "
            "does not know how the model uses them",
        )
    if not slots:
        raise UnsupportedRotary(
            "no-rotary-module",
            f"{type(model).__name__} has no `rotary_emb` module; posenc.hf supports transformers models whose "
            "decoder computes its rotary tables once, in a module called rotary_emb",
        )
    return slots


def _takes_position_ids(module: nn.Module) -> bool:
    """Whether ``module.forward`` is called as transformers' rotary_emb: ``(x, position_ids)``."""
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return False
    return names[:2] == ["x", "position_ids"]


def rope_config(rotary: nn.Module, root: Any) -> Any:
    """The config ``rotary`` was built from: its own ``config`` (a composite model's text config), else ``root``."""
    own = getattr(rotary, "config", None)
    return own if own is not None and hasattr(own, "to_dict") else root


Scaling = RopeScaling | Mapping[str, Any] | None


def _per_type(scaling: Scaling | Mapping[str, Scaling], types: list[str] | None) -> dict[str | None, Scaling]:
    """``{layer type: scaling}`` (``{None: scaling}`` for one RoPE per model); missing layer types get None."""
    if types is None:
        if isinstance(scaling, Mapping) and scaling and all(isinstance(v, Mapping) for v in scaling.values()):
            raise ValueError(
                f"scaling: a dict keyed by layer type ({sorted(scaling)}) is for models with one RoPE per layer "
                "type (Gemma 3, OLMo 3); this model has one RoPE for every layer: pass one scaling, e.g. "
                "{'rope_type': 'yarn', 'factor': 4.0}"
            )
        return {None: cast(Scaling, scaling)}
    if not isinstance(scaling, Mapping) or ("rope_type" in scaling or "type" in scaling):
        if scaling is None:
            return dict.fromkeys(types)
        raise UnsupportedRotary(
            "per-layer-type",
            f"this model has one RoPE per layer type ({types}); pass a dict keyed by layer type, e.g. "
            f"{{{types[0]!r}: {{'rope_type': 'yarn', 'factor': 4.0}}}} (layer types left out get plain RoPE)",
        )
    unknown = sorted(set(scaling) - set(types))
    if unknown:
        raise ValueError(f"scaling has layer types {unknown} that this model does not have; it has {types}")
    return {t: cast(Scaling, scaling.get(t)) for t in types}


def _new_parameters(config: Any, scalings: Mapping[str | None, RopeScaling | None]) -> dict[str, Any] | None:
    """The rope dict transformers would hold for ``scalings``: 5.x keeps the base (and partial factor) in it."""
    if getattr(config, "rope_parameters", None) is None:
        scaling = scalings[None]
        return None if scaling is None else scaling.to_dict()

    def one(layer_type: str | None) -> dict[str, Any]:
        old, scaling = rope_parameters(config, layer_type), scalings[layer_type]
        kept = {k: old[k] for k in ROPE_KEYS if k in old}
        return {**kept, **({"rope_type": "default"} if scaling is None else scaling.to_dict())}

    if None in scalings:
        return one(None)
    return {**config.rope_parameters, **{t: one(t) for t in scalings if t is not None}}


#: The :class:`posenc.RoPE` options :func:`install_rope` takes: how the tables are kept and computed, not what they are.
INSTALL_OPTIONS = RoPE.runtime_options


def install_rope(
    model: nn.Module, scaling: Scaling | Mapping[str, Scaling] = None, **options: Any
) -> RoPE | dict[str, RoPE]:
    """Switch a loaded transformers model to a posenc RoPE with ``scaling``, in place.

    The new RoPE keeps the model's base, ``head_dim`` and rotated size; ``scaling`` replaces whatever scaling the
    config had (None: plain RoPE). A dict in transformers' format is completed from the config as transformers
    would (see :func:`scaling_from_config`); its ``rope_theta`` and ``partial_rotary_factor``, if given, must be the
    model's. A :class:`posenc.RopeScaling` object is taken as given, nothing filled in or replaced from the config
    (transformers' dynamic NTK always scales from ``max_position_embeddings`` and Phi-3's LongRoPE from
    ``config.original_max_position_embeddings``, so an object with other lengths is another RoPE: pass the dict
    to get transformers' completion). The *whole* model then equals transformers' model built with that
    rope configuration: the rotary tables (float64 angles instead of transformers' float32 product), and every
    number transformers derives from the rope parameters elsewhere, such as DeepSeek's YaRN ``mscale`` in the
    attention's softmax scale (see :mod:`posenc.hf.folded`). Calling it again (with another scaling, or None on
    a checkpoint that ships a scaling) undoes the previous factors. ``model.config`` is left unchanged.

    The table layout (half, interleaved, ``R/2`` columns, complex ``freqs_cis``) is read from the model's own
    rotary module, which must agree with the config before anything is changed.

    Two differences from transformers are deliberate: posenc's tables stay float32 from float64 angles after
    ``model.to(torch.bfloat16)``, which rounds transformers' ``inv_freq`` buffer (the installed model equals
    transformers built in that dtype, ``from_pretrained(dtype=...)``, which keeps it float32); dynamic NTK
    recomputes the frequencies from each call's positions, where transformers keeps the largest length seen
    until a call falls below ``max_position_embeddings`` (equal call by call to a fresh transformers model).
    A GPT-J or CodeGen *built* in bfloat16 or float16 computed its frequencies in that dtype (an integer division
    that takes torch's default dtype) into a float32 table; that rounding is kept (``HFRotaryEmbedding.freq_dtype``),
    with any scaling, so ``install_rope(model)`` leaves its logits exactly as they were.

    Args:
        model: e.g. ``LlamaForCausalLM``, ``GPTNeoXForCausalLM``, ``DeepseekV3ForCausalLM``.
        scaling: a :class:`posenc.RopeScaling`, a transformers-style dict, or None. For a model with one RoPE per
            layer type (Gemma 3, OLMo 3): a dict ``{layer_type: scaling}``; layer types left out get plain RoPE.
        **options: :data:`INSTALL_OPTIONS` (``cache_len``, ``impl``) of :class:`posenc.RoPE`; others raise TypeError.

    Returns:
        The installed :class:`posenc.RoPE` (one module, shared by every replaced ``rotary_emb``), or
        ``{layer_type: RoPE}`` for a model with one RoPE per layer type.

    Raises:
        TypeError: ``model`` has no ``config``.
        UnsupportedRotary (a ValueError; ``.cause`` says which): the model cannot be made equal; nothing changed.
        ValueError: a bad scaling.
    """
    root = getattr(model, "config", None)
    if root is None:
        raise TypeError(f"install_rope needs a transformers model with a .config, got {type(model).__name__}")
    fixed = sorted(set(options) - set(INSTALL_OPTIONS))
    if (
        fixed
    ):  # (the layout, base and rotated size are the model's: another value made a RoPE unlike its model)
        raise TypeError(
            f"install_rope: {', '.join(fixed)} cannot be given: the model's config and code fix the base, the "
            f"rotated size and the layout; the options it takes are {', '.join(INSTALL_OPTIONS)}"
        )
    # Falcon with ALiBi: transformers builds rotary_emb but never reads it
    if getattr(root, "alibi", False) is True:
        raise UnsupportedRotary(
            "no-rotary-module",
            f"{type(model).__name__} uses ALiBi (config.alibi=True): its rotary_emb is built but its attention never "
            "reads it, so a RoPE installed there would change nothing",
        )
    slots = rotary_slots(model)
    groups: dict[int, tuple[Any, list[tuple[str, nn.Module, str]]]] = {}
    for slot in slots:  # rotary modules built from the same config share one posenc module
        config = rope_config(getattr(slot[1], slot[2]), root)
        groups.setdefault(id(config), (config, []))[1].append(slot)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    every: list[str | None] = [None]  # (one RoPE per model)
    bases = {rope_base(c, rope_parameters(c, t)) for c, _ in groups.values() for t in layer_types(c) or every}
    plans = [_plan(config, group, scaling, device, options, bases) for config, group in groups.values()]
    new = [(config, {key: rope.scaling for key, rope in ropes.items()}) for config, ropes, _ in plans]
    updates = _attribute_updates(model, root, new, tuple(path for path, _, _ in slots))
    for config, _, adapter in plans:
        adapter.config = (
            config  # what the rotary module was built from, for the next install (Granite-SWA reads it)
        )
        for _, parent, name in groups[id(config)][1]:
            setattr(parent, name, adapter)
    modules = dict(model.named_modules())
    for (path, key), value in updates.items():
        setattr(modules[path], key, value)
    object.__setattr__(model, _TOUCHED, set(updates))  # a plain attribute, not a submodule or buffer
    ropes = plans[0][1]
    return ropes[None] if None in ropes else {str(k): v for k, v in ropes.items()}


def _plan(
    config: Any,
    slots: list[tuple[str, nn.Module, str]],
    scaling: Scaling | Mapping[str, Scaling],
    device: torch.device,
    options: Mapping[str, Any],
    bases: set[float],
) -> tuple[Any, dict[str | None, RoPE], HFRotaryEmbedding | HFLayerTypeRotaryEmbedding]:
    """The new RoPEs and the adapter for the rotary modules ``slots`` built from ``config`` (checked first);
    ``bases``: every base the model's rotary configs hold."""
    types = layer_types(config)
    wanted = _per_type(scaling, types)
    ropes: dict[str | None, RoPE] = {}
    adapters: dict[str | None, HFRotaryEmbedding] = {}
    for key in wanted:
        current = table_rope(config, layer_type=key, **options)
        _check_kept(current, wanted[key], bases)
        match = _layout(slots, current.to(device), device, key)
        resolved = scaling_from_config(config, wanted[key])
        _check_original(wanted[key], resolved, rope_parameters(config, key))
        ropes[key] = current.with_scaling(resolved).to(device)
        adapters[key] = HFRotaryEmbedding(ropes[key], *match)
    adapter = adapters[None] if types is None else HFLayerTypeRotaryEmbedding(cast(dict[str, Any], adapters))
    return config, ropes, adapter


def _check_original(scaling: Scaling, resolved: RopeScaling | None, own: Mapping[str, Any]) -> None:
    """Refuse a dict whose ``original_max_position_embeddings`` the config replaces (as transformers does: Phi-3's
    ``config.original_max_position_embeddings``, dynamic NTK's ``max_position_embeddings``): the scaling would be
    built from another length than the one written. A dict of the config's own rope type holding the length of
    the config's own rope parameters (``own``) passes: transformers built the model from it the same way."""
    if not isinstance(scaling, Mapping) or scaling.get("original_max_position_embeddings") is None:
        return
    given = scaling["original_max_position_embeddings"]
    used = getattr(resolved, "original_max_position_embeddings", None)
    if used is None or given == used:
        return
    if _rope_type(scaling) == _rope_type(own) and given == own.get("original_max_position_embeddings"):
        return
    raise ValueError(
        f"scaling: original_max_position_embeddings={given!r} would be replaced by {used}, the length the "
        "model's config gives (as transformers does); give that length or leave the key out"
    )


def _rope_type(params: Mapping[str, Any]) -> object:
    return params.get("rope_type", params.get("type", "default"))


def _check_kept(rope: RoPE, scaling: Scaling, bases: set[float]) -> None:
    """Refuse a transformers-style dict whose ``rope_theta`` or ``partial_rotary_factor`` contradict the model's:
    install_rope keeps the base and the rotated size the model was trained with (a 5.x ``rope_parameters`` dict
    always holds them, so the model's own values pass: ``rope``'s, or any of the model's ``bases`` where rotary
    modules have bases of their own, as Granite's per-layer ``layer_rope_theta``)."""
    if not isinstance(scaling, Mapping):
        return
    theta, share = scaling.get("rope_theta"), scaling.get("partial_rotary_factor")
    if theta is not None and (not isinstance(theta, int | float) or float(theta) not in {rope.base, *bases}):
        raise ValueError(
            f"scaling: rope_theta={theta!r} differs from the model's base {rope.base:g}; install_rope keeps the "
            "model's base (its weights were trained with it): leave rope_theta out or give the model's value"
        )
    if share is not None and (
        not isinstance(share, int | float) or int(rope.head_dim * share) != rope.rotary_dim
    ):
        raise ValueError(
            f"scaling: partial_rotary_factor={share!r} differs from the model's rotated share "
            f"({rope.rotary_dim} of {rope.head_dim} dims); install_rope keeps the model's rotated size: leave "
            "partial_rotary_factor out or give the model's value"
        )


def _layout(
    slots: list[tuple[str, nn.Module, str]], rope: RoPE, device: torch.device, layer_type: str | None
) -> Match:
    """The one table layout (and frequency rounding and table dtype, see :class:`HFRotaryEmbedding`) of every
    rotary module in ``slots`` (for ``layer_type``)."""
    layouts = set()
    for _, parent, name in slots:
        module = getattr(parent, name)
        if isinstance(module, HFLayerTypeRotaryEmbedding):
            module = module.by_type[str(layer_type)]
        if isinstance(module, HFRotaryEmbedding):  # already posenc: its layout was checked when installed
            layouts.add(module.match)
        else:
            layouts.add(match_layout(module, rope, device, layer_type))
    if len(layouts) != 1:
        raise UnsupportedRotary(
            "several-rotary-modules", f"rotary_emb modules with different layouts: {layouts}"
        )
    return layouts.pop()


def _attribute_updates(
    model: nn.Module,
    root: Any,
    new: list[tuple[Any, dict[str | None, RopeScaling | None]]],
    rotary_paths: tuple[str, ...],
) -> dict[Attribute, Any]:
    """Rope-dependent attributes to set for the ``(config, {layer type: scaling})`` pairs ``new``, including those
    a previous install set (to undo them)."""
    touched: set[Attribute] = getattr(model, _TOUCHED, set())
    readable = [
        (c, s)
        for c, s in new
        if getattr(c, "rope_parameters", None) is not None or hasattr(c, "rope_scaling")
    ]
    if not readable:
        return {}  # nothing in the config for a model to read (GPT-J, CodeGen)
    as_built = all(
        {k: scaling_from_config(c, rope_parameters(c, k) or None) for k in s} == s for c, s in readable
    )
    if as_built and not touched:
        return {}  # the model already is what its config says
    foreign = sorted(
        {x.rope_type for _, s in readable for x in s.values() if x is not None and not x.in_transformers}
    )
    if foreign:
        raise UnsupportedRotary(
            "rope-type",
            f"transformers has no rope_type {foreign[0]!r}, and this model's config holds rope parameters that its "
            "modules may read: it cannot be built with that scaling to check them. Use one transformers has "
            f"({', '.join(n for n in available_scalings() if SCALINGS.get(n).in_transformers)})",
        )
    config, scalings = next(((c, s) for c, s in readable if path_to(root, c) is not None), readable[0])
    changed, values = folded_attributes(model, root, config, _new_parameters(config, scalings), rotary_paths)
    return {key: values.get(key) for key in changed | touched}


def apply_rope(
    model: nn.Module, scaling: Scaling | Mapping[str, Scaling] = None, **options: Any
) -> RoPE | dict[str, RoPE]:
    """Alias of :func:`install_rope` (the older name; ``posenc.functional.apply_rope`` rotates tensors)."""
    return install_rope(model, scaling, **options)
