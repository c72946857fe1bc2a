"""Rope parameters that transformers folds into a model outside its rotary module.

Some architectures read ``rope_parameters`` when the model is built and keep a number derived from them: the
DeepSeek family (DeepSeek-V2/V3, MiniCPM3, GLM-4-MoE-Lite, Mistral 4, ...) multiplies every attention's softmax
``scaling`` by ``mscale(factor, mscale_all_dim) ** 2`` for a YaRN with ``mscale_all_dim``. Swapping the rotary
module alone leaves that factor stale: a silent mismatch.

:func:`folded_attributes` finds every such number without knowing the architecture: it builds the model class
twice on the meta device (no memory, no weights), once from the model's config and once with the new rope
parameters, and compares every plain attribute (numbers, strings, tuples) of every module. The differing ones,
set to the second build's values, make the model equal to transformers with the new parameters. Rope-dependent
tensors (shapes differ) and modules that read ``rope_parameters`` while running are refused.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .errors import UnsupportedRotary

log = logging.getLogger(__name__)

Attribute = tuple[str, str]  # (module path, attribute name)
_PLAIN = (bool, int, float, str, tuple, type(None))
_RUNTIME_KEYS = ("rope_parameters", "rope_scaling")
#: runtime reads that install_rope never changes: the base and rotated size, and whether a layer type has a RoPE.
_HARMLESS_READS = re.compile(
    r"""rope_parameters(\[[^\]]+\])?(\[["'](rope_theta|partial_rotary_factor)["']\]|\.get\(["'](rope_theta|partial_rotary_factor)["'][^)]*\))"""
    r"|rope_parameters\[\w+\] is (not )?None"
)


def path_to(root: Any, target: Any, depth: int = 2) -> list[str] | None:
    """Attribute names leading from config ``root`` to sub-config ``target`` (``["text_config"]``), or None."""
    if root is target:
        return []
    if depth == 0:
        return None
    for key, value in vars(root).items():
        if hasattr(value, "to_dict") and not isinstance(value, type):
            rest = path_to(value, target, depth - 1)
            if rest is not None:
                return [key, *rest]
    return None


def with_rope(root: Any, config: Any, params: Mapping[str, Any] | None) -> Any:
    """A deep copy of ``root`` whose (sub-)config ``config`` has RoPE dict ``params`` (``rope_parameters`` in 5.x,
    ``rope_scaling`` in 4.x)."""
    path = path_to(root, config)
    if path is None:
        raise UnsupportedRotary(
            "model-build", "the rotary module's config is not the model's config nor one of its sub-configs"
        )
    new = copy.deepcopy(root)
    target = new
    for key in path:
        target = getattr(target, key)
    if getattr(config, "rope_parameters", None) is not None:
        target.rope_parameters = dict(params or {"rope_type": "default"})
    else:
        target.rope_scaling = None if params is None else dict(params)
    return new


def _plain_attributes(model: nn.Module, skip: tuple[str, ...]) -> Iterator[tuple[Attribute, Any]]:
    for path, module in model.named_modules():
        if any(path == s or path.startswith(s + ".") for s in skip):
            continue
        for key, value in vars(module).items():
            if not key.startswith("_") and key != "training" and isinstance(value, _PLAIN):
                yield (path, key), value


def _tensor_shapes(model: nn.Module, skip: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    items = list(model.named_parameters()) + list(model.named_buffers())
    return {
        name: tuple(t.shape)
        for name, t in items
        if isinstance(t, Tensor) and not any(name.startswith(s + ".") for s in skip)
    }


def _build_on_meta(model: nn.Module, config: Any) -> nn.Module:
    try:
        with torch.device("meta"):
            return type(model)(config)
    except Exception as err:  # noqa: BLE001 -- any failure to build means we cannot vouch for the swap
        raise UnsupportedRotary(
            "model-build",
            f"cannot tell whether {type(model).__name__} keeps rope parameters outside its rotary module: "
            f"building it on the meta device from its config failed ({type(err).__name__}: {err})",
        ) from err


def _runtime_readers(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    """Classes (outside the rotary modules) whose ``forward`` source reads rope parameters that can change."""
    found: set[str] = set()
    for path, module in model.named_modules():
        if any(path == s or path.startswith(s + ".") for s in skip):
            continue
        cls = type(module)
        if cls.__module__.startswith("torch.") or cls.__name__ in found:
            continue
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            continue
        source = _HARMLESS_READS.sub("", source)
        if any(key in source for key in _RUNTIME_KEYS):
            found.add(cls.__name__)
    return sorted(found)


def folded_attributes(
    model: nn.Module, root: Any, config: Any, params: Mapping[str, Any] | None, rotary_paths: tuple[str, ...]
) -> tuple[set[Attribute], dict[Attribute, Any]]:
    """``(changed, values)``: the plain attributes outside ``rotary_paths`` that transformers sets differently
    when ``model``'s class is built from ``root`` (its config) with rope dict ``params`` in ``config`` (``root``
    or a sub-config such as ``root.text_config``) instead of the one there, and the value of every plain
    attribute in the build with ``params``.

    Raises:
        UnsupportedRotary: ``model-build`` (the class cannot be rebuilt from its config on the meta device),
            ``folded-tensor`` (a parameter or buffer changes shape with the rope parameters) or
            ``runtime-config`` (a module's forward reads rope parameters from the config).
    """
    old = _build_on_meta(model, root)
    new = _build_on_meta(model, with_rope(root, config, params))
    old_shapes, new_shapes = _tensor_shapes(old, rotary_paths), _tensor_shapes(new, rotary_paths)
    resized = sorted(
        k for k in old_shapes.keys() | new_shapes.keys() if old_shapes.get(k) != new_shapes.get(k)
    )
    if resized:
        raise UnsupportedRotary(
            "folded-tensor",
            f"{type(model).__name__} sizes parameters or buffers from its rope parameters ({resized[:4]}); "
            "posenc.hf cannot change those in place",
        )
    before = dict(_plain_attributes(old, rotary_paths))
    after = dict(_plain_attributes(new, rotary_paths))
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    readers = _runtime_readers(model, rotary_paths)
    if readers:
        raise UnsupportedRotary(
            "runtime-config",
            f"{', '.join(readers)} read rope parameters from the config while running; posenc.hf leaves "
            "model.config unchanged, so those would not follow the new RoPE",
        )
    if changed:
        log.info("rope-dependent attributes outside the rotary module: %s", sorted(changed))
    return changed, after
