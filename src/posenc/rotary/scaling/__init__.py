"""RoPE context extension: how the frequencies (and an attention temperature) change past the trained length.

Every method is a frozen :class:`RopeScaling` dataclass holding its parameters (validated on construction, with
a clear error), its rule as a method and its temperature; defining the subclass with a new ``rope_type`` (one of
transformers' names where it has one) registers it in :data:`SCALINGS`, and dicts with that ``rope_type`` parse::

    scaling.inv_freq(rotary_dim, base, seq_len, device) -> inv_freq
    scaling.attention_factor_value() -> attention_factor
    scaled_inv_freq(scaling, rotary_dim, base, seq_len, device) -> (inv_freq, attention_factor)

``inv_freq`` is ``(R/2,)`` in the phase dtype (float64 wherever the device has it) and ``attention_factor``
multiplies cos and sin, hence both q and k (YaRN's temperature). ``seq_len`` is the length the frequencies
are for (``max(position) + 1``, as in transformers); None means "at construction", i.e. the original length.
It may be a 0-d tensor: the length-dependent methods use only tensor ops on it (``torch.where``), so they
trace without graph breaks, but their output then depends on the data.

Methods (``rope_type`` in brackets):

* :class:`LinearScaling` ("linear"): position interpolation, ``theta_i / s`` (Chen et al. 2023).
* :class:`NTKScaling` ("ntk"): NTK-aware base change ``base * s^(R/(R-2))`` (bloc97 2023). posenc only:
  transformers has just the dynamic form.
* :class:`DynamicNTKScaling` ("dynamic"): the NTK base recomputed from the current length ``L``,
  ``s' = s*L/L0 - (s-1)``; identical to no scaling up to ``L0``.
* :class:`YaRNScaling` ("yarn"): NTK-by-parts ramp between ``beta_slow`` and ``beta_fast`` rotations plus the
  temperature ``0.1 ln(s) + 1`` (or the DeepSeek ``mscale`` ratio) (Peng et al. 2023).
* :class:`Llama3Scaling` ("llama3"): wavelength bands, interpolate long ones, keep short ones, smooth between
  (Meta 2024, Llama 3.1).
* :class:`LongRoPEScaling` ("longrope"): per-frequency rescale factors, short list up to the original length
  and long list beyond, temperature ``sqrt(1 + ln s / ln L0)`` (Ding et al. 2024).

A transformers-style dict (``{"rope_type": "yarn", "factor": 4.0, ...}``) converts with :func:`parse_scaling`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any

import torch
from torch import Tensor

from ...functional.rotary import check_rotary_dim, rope_inv_freq
from ...validation import check_float
from .base import FACTOR, LENGTH, POSITIVE, SCALINGS, Bound, RopeScaling, check_param
from .methods import (
    DYNAMIC_FACTOR,
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    LongRoPEScaling,
    NTKScaling,
    YaRNScaling,
)

__all__ = [
    "DYNAMIC_FACTOR",
    "FACTOR",
    "LENGTH",
    "POSITIVE",
    "SCALINGS",
    "Bound",
    "DynamicNTKScaling",
    "Llama3Scaling",
    "LinearScaling",
    "LongRoPEScaling",
    "NTKScaling",
    "RopeScaling",
    "YaRNScaling",
    "available_scalings",
    "check_param",
    "extension_scalings",
    "parse_scaling",
    "scaled_inv_freq",
]


def available_scalings() -> list[str]:
    """Registered ``rope_type`` names (plus "default", meaning no scaling, accepted by :func:`parse_scaling`)."""
    return SCALINGS.names()


def scaled_inv_freq(
    scaling: RopeScaling | None,
    rotary_dim: int,
    base: float,
    seq_len: int | Tensor | None = None,
    device: torch.device | None = None,
) -> tuple[Tensor, float]:
    """``(inv_freq, attention_factor)`` of ``scaling`` for ``rotary_dim`` dims, ``base`` and length ``seq_len``.

    Args:
        scaling: a :class:`RopeScaling`, or None for plain RoPE.
        rotary_dim: ``R``, even.
        base: the RoPE base ``theta``.
        seq_len: ``max(position) + 1`` of the call (int or 0-d tensor); None for the construction-time value.
        device: where ``inv_freq`` lives.

    Returns:
        ``(P,)`` inverse frequencies in the phase dtype and the factor that multiplies cos and sin.
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    if scaling is None:
        return rope_inv_freq(rotary_dim, base, device=dev), 1.0
    if not isinstance(scaling, RopeScaling):
        raise TypeError(f"scaling must be a posenc RopeScaling or None, got {type(scaling).__name__}")
    check_rotary_dim(rotary_dim)
    base = check_float("base", base, above=1, owner="scaled_inv_freq")  # the scalings divide by ln(base)
    scaling.validate(rotary_dim)
    return scaling.inv_freq(rotary_dim, base, seq_len, dev), scaling.attention_factor_value()


#: Keys of a transformers ``rope_parameters`` dict that describe the RoPE itself, not its scaling.
_ROPE_KEYS = ("rope_theta", "partial_rotary_factor")
_PARTIAL = Bound(above=0.0, at_most=1.0, note="the rotated share of the head")


def parse_scaling(
    spec: RopeScaling | Mapping[str, Any] | None,
    *,
    base: float | None = None,
    head_dim: int | None = None,
    rotary_dim: int | None = None,
) -> RopeScaling | None:
    """A :class:`RopeScaling` (or None for none) from itself or a transformers-style dict.

    The dict is transformers' ``rope_scaling`` / ``rope_parameters`` format: ``rope_type`` (or the legacy
    ``type``), then the method's parameters; keys set to None count as absent. ``rope_theta`` and
    ``partial_rotary_factor`` describe the RoPE, not the scaling: they are checked against ``base`` and
    ``rotary_dim / head_dim`` when those are given, and must agree.

    Raises:
        ValueError: unknown ``rope_type``, unknown keys, missing or out-of-range parameters, or a
            ``rope_theta`` / ``partial_rotary_factor`` that contradicts the RoPE.
        TypeError: ``spec`` is neither.
    """
    if spec is None or isinstance(spec, RopeScaling):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"scaling must be a posenc RopeScaling (e.g. posenc.YaRNScaling(...)), a transformers-style dict "
            f"{{'rope_type': ..., ...}} or None, got {type(spec).__name__}"
        )
    params = {k: v for k, v in spec.items() if v is not None}
    kind = params.pop("rope_type", params.pop("type", None))
    params.pop("type", None)
    if kind is None:
        raise ValueError(
            f"scaling dict needs a 'rope_type' (one of default, {', '.join(available_scalings())})"
        )
    _check_rope_keys(params, base, head_dim, rotary_dim)
    SCALINGS.check(kind)
    if kind == "default":
        if params:
            raise ValueError(f"rope_type 'default' takes no scaling parameters, got {sorted(params)}")
        return None
    cls = SCALINGS.get(kind)
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"rope_type {kind!r} does not take {unknown}; its parameters are {sorted(allowed)}")
    required = sorted(
        f.name
        for f in fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in params
    )
    if required:
        hint = ""
        if "original_max_position_embeddings" in required:
            hint = (
                " (transformers fills original_max_position_embeddings from config.max_position_embeddings: "
                "use posenc.hf.rope_from_config(config), or add the key)"
            )
        raise ValueError(f"rope_type {kind!r} needs {required}; got {sorted(params)}{hint}")
    return cls(**params)


def _check_rope_keys(
    params: dict[str, Any], base: float | None, head_dim: int | None, rotary_dim: int | None
) -> None:
    theta = params.pop(_ROPE_KEYS[0], None)
    if theta is not None:
        theta = check_param("scaling dict", "rope_theta", theta, Bound(above=1.0, note="the RoPE base"))
    if theta is not None and base is not None and theta != float(base):
        raise ValueError(
            f"scaling dict says rope_theta={theta} but the RoPE has base={base}; pass base={theta}"
        )
    partial = params.pop(_ROPE_KEYS[1], None)
    if partial is not None:
        partial = check_param("scaling dict", "partial_rotary_factor", partial, _PARTIAL)
    if partial is not None and head_dim is not None and rotary_dim is not None:
        if int(head_dim * partial) != rotary_dim:
            raise ValueError(
                f"scaling dict says partial_rotary_factor={partial} (rotary_dim {int(head_dim * partial)}) but the "
                f"RoPE has rotary_dim={rotary_dim} of head_dim={head_dim}"
            )


def extension_scalings() -> list[str]:
    """The ``rope_type`` names offered for inference-time context extension (those with an ``extension``)."""
    return [n for n, cls in SCALINGS.items() if cls.extension.__func__ is not RopeScaling.extension.__func__]  # type: ignore[attr-defined]
