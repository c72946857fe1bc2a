"""RoPE context extension: how the frequencies (and an attention temperature) change past the trained length.

Every method is a frozen dataclass holding its parameters (validated on construction, with a clear error;
its ``attention_factor_value()`` is the temperature) and one pure function of the same signature behind a
registry keyed by transformers' ``rope_type`` names (:func:`register_scaling`)::

    rule(scaling, rotary_dim, base, seq_len, device) -> inv_freq
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

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ..functional.rotary import phase_dtype, rope_inv_freq

__all__ = [
    "DynamicNTKScaling",
    "Llama3Scaling",
    "LinearScaling",
    "LongRoPEScaling",
    "NTKScaling",
    "RopeScaling",
    "YaRNScaling",
    "available_scalings",
    "parse_scaling",
    "register_scaling",
    "scaled_inv_freq",
]


# -- parameter checks -------------------------------------------------------------------------------------
def _number(
    owner: str, name: str, value: object, *, at_least: float | None = None, above: float | None = None
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{owner}: {name} must be a finite number, got {value!r}")
    if at_least is not None and value < at_least:
        raise ValueError(f"{owner}: {name} must be >= {at_least}, got {value}")
    if above is not None and value <= above:
        raise ValueError(f"{owner}: {name} must be > {above}, got {value}")


def _length(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer (a number of positions), got {value!r}")


def _factor(owner: str, value: object) -> None:
    _number(owner, "factor", value, at_least=1.0)


# -- the scaling types --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RopeScaling:
    """Base of the scaling dataclasses. ``rope_type`` names the method (transformers' names where it has one)."""

    rope_type: ClassVar[str] = ""
    #: True when the frequencies depend on the current length (then see :attr:`static_length`).
    length_dependent: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, rotary_dim: int | None = None) -> None:
        """Raise ``ValueError``/``TypeError`` on missing or out-of-range parameters (``rotary_dim`` when known)."""

    def attention_factor_value(self) -> float:
        """Factor folded into cos and sin (1 unless the method sets a temperature)."""
        return 1.0

    @property
    def static_length(self) -> int | None:
        """For length-dependent methods: the length up to which the frequencies equal the construction-time
        ones (``original_max_position_embeddings``); None for methods that never depend on the length."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """The transformers-style dict (``rope_type`` plus the parameters that are set)."""
        out: dict[str, Any] = {"rope_type": self.rope_type}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class LinearScaling(RopeScaling):
    """Position interpolation: every frequency divided by ``factor`` (Chen et al. 2023, arXiv:2306.15595)."""

    factor: float
    rope_type: ClassVar[str] = "linear"

    def validate(self, rotary_dim: int | None = None) -> None:
        _factor("linear scaling", self.factor)


@dataclass(frozen=True)
class NTKScaling(RopeScaling):
    """NTK-aware scaling: the base becomes ``base * factor^(R/(R-2))``, so the lowest frequency is interpolated
    by ``factor`` and the highest is kept (bloc97, 2023; the static form of transformers' "dynamic")."""

    factor: float
    rope_type: ClassVar[str] = "ntk"

    def validate(self, rotary_dim: int | None = None) -> None:
        _factor("NTK scaling", self.factor)
        _check_ntk_dim("NTK scaling", rotary_dim)


@dataclass(frozen=True)
class DynamicNTKScaling(RopeScaling):
    """Dynamic NTK: the NTK base recomputed for the current length ``L = max(position) + 1``.

    ``base * (factor * L / L0 - (factor - 1))^(R/(R-2))`` for ``L > L0``; no scaling up to ``L0 =
    original_max_position_embeddings`` (transformers reads ``config.max_position_embeddings`` for ``L0``).
    With a KV cache, keys keep the frequencies of the step that rotated them (as in transformers).
    """

    factor: float
    original_max_position_embeddings: int
    rope_type: ClassVar[str] = "dynamic"
    length_dependent: ClassVar[bool] = True

    def validate(self, rotary_dim: int | None = None) -> None:
        _factor("dynamic NTK scaling", self.factor)
        _length(
            "dynamic NTK scaling", "original_max_position_embeddings", self.original_max_position_embeddings
        )
        _check_ntk_dim("dynamic NTK scaling", rotary_dim)

    @property
    def static_length(self) -> int | None:
        return self.original_max_position_embeddings


@dataclass(frozen=True)
class YaRNScaling(RopeScaling):
    """YaRN (Peng et al. 2023, arXiv:2309.00071): interpolate the frequencies that turn fewer than
    ``beta_slow`` times over the original length, keep those turning more than ``beta_fast`` times, ramp
    linearly between; scale cos and sin by ``attention_factor`` (default ``0.1 ln(factor) + 1``, or
    ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)`` when both are set, as DeepSeek does).

    ``truncate`` rounds the ramp ends outwards to whole dimensions (transformers' default).
    """

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    rope_type: ClassVar[str] = "yarn"

    def validate(self, rotary_dim: int | None = None) -> None:
        owner = "YaRN scaling"
        _factor(owner, self.factor)
        _length(owner, "original_max_position_embeddings", self.original_max_position_embeddings)
        _number(owner, "beta_slow", self.beta_slow, above=0.0)
        _number(owner, "beta_fast", self.beta_fast, above=0.0)
        if self.beta_fast < self.beta_slow:
            raise ValueError(
                f"{owner}: beta_fast ({self.beta_fast}) must be >= beta_slow ({self.beta_slow}); beta_fast counts "
                "the rotations above which frequencies are kept, beta_slow those below which they are interpolated"
            )
        if self.attention_factor is not None:
            _number(owner, "attention_factor", self.attention_factor, above=0.0)
        for name in ("mscale", "mscale_all_dim"):
            if getattr(self, name) is not None:
                _number(owner, name, getattr(self, name))
        if not isinstance(self.truncate, bool):
            raise TypeError(f"{owner}: truncate must be a bool, got {self.truncate!r}")

    def attention_factor_value(self) -> float:
        if self.attention_factor is not None:
            return float(self.attention_factor)
        if self.mscale and self.mscale_all_dim:  # transformers uses the ratio only when both are non-zero
            return _yarn_mscale(self.factor, self.mscale) / _yarn_mscale(self.factor, self.mscale_all_dim)
        return _yarn_mscale(self.factor)


@dataclass(frozen=True)
class Llama3Scaling(RopeScaling):
    """Llama 3.1 scaling: wavelengths above ``L0 / low_freq_factor`` are interpolated by ``factor``, those below
    ``L0 / high_freq_factor`` kept, and a smooth blend between (Meta, "The Llama 3 Herd of Models", 2024)."""

    factor: float
    original_max_position_embeddings: int
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    rope_type: ClassVar[str] = "llama3"

    def validate(self, rotary_dim: int | None = None) -> None:
        owner = "Llama 3 scaling"
        _factor(owner, self.factor)
        _length(owner, "original_max_position_embeddings", self.original_max_position_embeddings)
        _number(owner, "low_freq_factor", self.low_freq_factor, above=0.0)
        _number(owner, "high_freq_factor", self.high_freq_factor, above=0.0)
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"{owner}: high_freq_factor ({self.high_freq_factor}) must be > low_freq_factor "
                f"({self.low_freq_factor})"
            )


@dataclass(frozen=True)
class LongRoPEScaling(RopeScaling):
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753; Phi-3): frequency ``i`` divided by ``short_factor[i]`` up to
    ``original_max_position_embeddings`` and by ``long_factor[i]`` beyond (the switch looks at the current length
    ``max(position) + 1``), cos and sin scaled by ``attention_factor``, default
    ``sqrt(1 + ln(factor) / ln(L0))`` (1 when ``factor <= 1``).

    ``factor`` is the extension ratio ``max_position_embeddings / original_max_position_embeddings``; give it or
    ``attention_factor``. Both lists have ``rotary_dim / 2`` entries.
    """

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    factor: float | None = None
    attention_factor: float | None = None
    rope_type: ClassVar[str] = "longrope"
    length_dependent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError(f"LongRoPE scaling: {name} must be a list of numbers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        super().__post_init__()

    def validate(self, rotary_dim: int | None = None) -> None:
        owner = "LongRoPE scaling"
        _length(owner, "original_max_position_embeddings", self.original_max_position_embeddings)
        for name in ("short_factor", "long_factor"):
            values = getattr(self, name)
            for v in values:
                _number(owner, f"every entry of {name}", v, above=0.0)
            if rotary_dim is not None and len(values) != rotary_dim // 2:
                raise ValueError(
                    f"{owner}: {name} must have rotary_dim/2 = {rotary_dim // 2} entries (one per frequency), "
                    f"got {len(values)}"
                )
        if self.factor is None and self.attention_factor is None:
            raise ValueError(
                f"{owner}: give factor (max_position_embeddings / original_max_position_embeddings) or "
                "attention_factor; posenc.hf.rope_from_config derives factor from a transformers config"
            )
        if self.factor is not None:
            _number(owner, "factor", self.factor, above=0.0)
        if self.attention_factor is not None:
            _number(owner, "attention_factor", self.attention_factor, above=0.0)

    def attention_factor_value(self) -> float:
        if self.attention_factor is not None:
            return float(self.attention_factor)
        assert self.factor is not None  # validate() guarantees one of the two
        if self.factor <= 1.0:
            return 1.0
        return math.sqrt(1.0 + math.log(self.factor) / math.log(self.original_max_position_embeddings))

    @property
    def static_length(self) -> int | None:
        return self.original_max_position_embeddings


def _check_ntk_dim(owner: str, rotary_dim: int | None) -> None:
    if rotary_dim is not None and rotary_dim <= 2:
        raise ValueError(f"{owner} needs rotary_dim > 2 (the base exponent is R/(R-2)), got {rotary_dim}")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


# -- the rules: one pure function per method --------------------------------------------------------------
SeqLen = int | Tensor | None
Rule = Callable[[Any, int, float, SeqLen, torch.device], Tensor]
S = TypeVar("S", bound=RopeScaling)
_RULES: dict[str, tuple[type[RopeScaling], Rule]] = {}


def register_scaling(
    cls: type[S],
) -> Callable[[Callable[[S, int, float, SeqLen, torch.device], Tensor]], Rule]:
    """Decorator: make ``fn(scaling, rotary_dim, base, seq_len, device) -> inv_freq`` the rule of ``cls``.

    ``cls`` is a frozen :class:`RopeScaling` dataclass with a new ``rope_type``; its ``validate`` and
    ``attention_factor_value`` supply the checks and the temperature. Dicts with that ``rope_type`` then parse too.
    """

    def deco(fn: Callable[[S, int, float, SeqLen, torch.device], Tensor]) -> Rule:
        if cls.rope_type in _RULES:
            raise ValueError(f"RoPE scaling {cls.rope_type!r} is already registered")
        _RULES[cls.rope_type] = (cls, fn)
        return fn

    return deco


def _exponents(rotary_dim: int, device: torch.device) -> Tensor:
    """``(P,)`` exponents ``2i / R`` in the phase dtype (the same arithmetic as ``rope_inv_freq``)."""
    return torch.arange(0, rotary_dim, 2, device=device, dtype=phase_dtype(device)) / rotary_dim


def _longer_than(seq_len: int | Tensor, limit: int, device: torch.device) -> Tensor:
    """0-d bool tensor ``seq_len > limit`` (traceable when ``seq_len`` is a tensor)."""
    return torch.as_tensor(seq_len, device=device) > limit


@register_scaling(LinearScaling)
def _linear(s: LinearScaling, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
    return rope_inv_freq(rotary_dim, base, device=device) / s.factor


@register_scaling(NTKScaling)
def _ntk(s: NTKScaling, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
    return rope_inv_freq(rotary_dim, base * s.factor ** (rotary_dim / (rotary_dim - 2)), device=device)


@register_scaling(DynamicNTKScaling)
def _dynamic(
    s: DynamicNTKScaling, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device
) -> Tensor:
    plain = rope_inv_freq(rotary_dim, base, device=device)
    if seq_len is None:
        return plain
    length = torch.as_tensor(seq_len, device=device, dtype=plain.dtype)
    ratio = s.factor * length / s.original_max_position_embeddings - (s.factor - 1.0)
    scaled_base = base * ratio.clamp_min(1.0) ** (rotary_dim / (rotary_dim - 2))
    scaled = 1.0 / scaled_base ** _exponents(rotary_dim, device)
    return torch.where(_longer_than(seq_len, s.original_max_position_embeddings, device), scaled, plain)


@register_scaling(YaRNScaling)
def _yarn(s: YaRNScaling, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
    def correction_dim(rotations: float) -> float:  # the dim whose frequency turns `rotations` times over L0
        return (
            rotary_dim
            * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi))
            / (2 * math.log(base))
        )

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid dividing by zero
    plain = rope_inv_freq(rotary_dim, base, device=device)  # (P,)
    ramp = ((torch.arange(rotary_dim // 2, device=device, dtype=plain.dtype) - low) / (high - low)).clamp(
        0, 1
    )
    return plain / s.factor * ramp + plain * (1.0 - ramp)  # ramp 0: keep (extrapolate), 1: interpolate


@register_scaling(Llama3Scaling)
def _llama3(s: Llama3Scaling, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
    plain = rope_inv_freq(rotary_dim, base, device=device)
    old = s.original_max_position_embeddings
    wavelen = 2 * math.pi / plain
    long_wave, short_wave = wavelen > old / s.low_freq_factor, wavelen < old / s.high_freq_factor
    smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1.0 - smooth) * plain / s.factor + smooth * plain
    return torch.where(long_wave, plain / s.factor, torch.where(short_wave, plain, blended))


@register_scaling(LongRoPEScaling)
def _longrope(
    s: LongRoPEScaling, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device
) -> Tensor:
    plain = rope_inv_freq(rotary_dim, base, device=device)
    short = plain / torch.tensor(s.short_factor, device=device, dtype=plain.dtype)
    if seq_len is None:
        return short
    long = plain / torch.tensor(s.long_factor, device=device, dtype=plain.dtype)
    return torch.where(_longer_than(seq_len, s.original_max_position_embeddings, device), long, short)


# -- public entry points ----------------------------------------------------------------------------------
def available_scalings() -> list[str]:
    """Registered ``rope_type`` names (plus "default", meaning no scaling, accepted by :func:`parse_scaling`)."""
    return sorted(_RULES)


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
    if type(scaling).rope_type not in _RULES:
        raise TypeError(
            f"no RoPE scaling rule for {type(scaling).__name__}; choose one of {available_scalings()}"
        )
    scaling.validate(rotary_dim)
    _, fn = _RULES[type(scaling).rope_type]
    return fn(scaling, rotary_dim, float(base), seq_len, dev), scaling.attention_factor_value()


#: Keys of a transformers ``rope_parameters`` dict that describe the RoPE itself, not its scaling.
_ROPE_KEYS = ("rope_theta", "partial_rotary_factor")


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
    if kind == "default":
        if params:
            raise ValueError(f"rope_type 'default' takes no scaling parameters, got {sorted(params)}")
        return None
    if kind not in _RULES:
        raise ValueError(
            f"unknown rope_type {kind!r}; posenc supports default, {', '.join(available_scalings())}"
        )
    cls, _ = _RULES[kind]
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
    if theta is not None and base is not None and float(theta) != float(base):
        raise ValueError(
            f"scaling dict says rope_theta={theta} but the RoPE has base={base}; pass base={theta}"
        )
    partial = params.pop(_ROPE_KEYS[1], None)
    if partial is not None and head_dim is not None and rotary_dim is not None:
        if int(head_dim * partial) != rotary_dim:
            raise ValueError(
                f"scaling dict says partial_rotary_factor={partial} (rotary_dim {int(head_dim * partial)}) but the "
                f"RoPE has rotary_dim={rotary_dim} of head_dim={head_dim}"
            )
