"""The RoPE context-extension methods: one frozen dataclass each, holding its parameters (checked on
construction), its rule (:meth:`inv_freq`), its temperature (:meth:`attention_factor_value`) and, where it is
used to stretch a trained model at inference time, its configuration for that (:meth:`extension`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...functional.rotary import rope_inv_freq
from .base import (
    FACTOR,
    LENGTH,
    POSITIVE,
    Bound,
    RopeScaling,
    SeqLen,
    _check_ntk_dim,
    _exponents,
    _longer_than,
    _yarn_mscale,
    check_param,
)

#: Dynamic NTK adapts its frequencies to each input by itself; as an inference-time extension it gets one fixed
#: setting for every length, the factor 2 commonly used with transformers (``{"type": "dynamic", "factor": 2.0}``).
DYNAMIC_FACTOR = 2.0


#: YaRN's ``mscale`` and ``mscale_all_dim``: the temperature ``0.1 * mscale * ln(factor) + 1`` is then >= 1, so
#: DeepSeek's ratio of two is finite and positive (a negative one reaches 0 or below); 0 means unset (transformers
#: uses the ratio only when both are non-zero).
_MSCALE = Bound(
    at_least=0.0, note="0 means unset, as in transformers; a negative one can take the temperature to 0"
)


def _stretch(owner: str, train_len: int, eval_len: int) -> float:
    """The factor that stretches ``train_len`` to ``eval_len`` (at least 1), both checked as lengths."""
    train = check_param(f"{owner} extension", "train_len", train_len, LENGTH)
    return max(1.0, check_param(f"{owner} extension", "eval_len", eval_len, LENGTH) / train)


@dataclass(frozen=True)
class LinearScaling(RopeScaling):
    """Position interpolation: every frequency divided by ``factor`` (Chen et al. 2023, arXiv:2306.15595)."""

    factor: float
    rope_type: ClassVar[str] = "linear"
    label: ClassVar[str] = "linear scaling"
    bounds: ClassVar[Mapping[str, Bound]] = {"factor": FACTOR}

    @classmethod
    def extension(cls, train_len: int, eval_len: int) -> LinearScaling:
        return cls(_stretch(cls.label, train_len, eval_len))

    def inv_freq(self, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
        return rope_inv_freq(rotary_dim, base, device=device) / self.factor


@dataclass(frozen=True)
class NTKScaling(RopeScaling):
    """NTK-aware scaling: the base becomes ``base * factor^(R/(R-2))``, so the lowest frequency is interpolated
    by ``factor`` and the highest is kept (bloc97, 2023; the static form of transformers' "dynamic")."""

    factor: float
    rope_type: ClassVar[str] = "ntk"
    label: ClassVar[str] = "NTK scaling"
    in_transformers: ClassVar[bool] = False
    bounds: ClassVar[Mapping[str, Bound]] = {"factor": FACTOR}

    def validate(self, rotary_dim: int | None = None) -> None:
        _check_ntk_dim(self.label, rotary_dim)

    @classmethod
    def extension(cls, train_len: int, eval_len: int) -> NTKScaling:
        return cls(_stretch(cls.label, train_len, eval_len))

    def inv_freq(self, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
        exponent = rotary_dim / (rotary_dim - 2)
        try:
            scaled = base * self.factor**exponent
        except OverflowError:
            scaled = math.inf
        if not math.isfinite(scaled):
            raise ValueError(
                f"{self.label}: factor {self.factor} takes the base {base} * factor^{exponent:g} past the float "
                "range; the factor must be far smaller"
            )
        return rope_inv_freq(rotary_dim, scaled, device=device)


@dataclass(frozen=True)
class DynamicNTKScaling(RopeScaling):
    """Dynamic NTK: the NTK base recomputed for the current length ``L = max(position) + 1``.

    ``base * (factor * L / L0 - (factor - 1))^(R/(R-2))`` for ``L > L0``; no scaling up to ``L0 =
    original_max_position_embeddings`` (transformers reads ``config.max_position_embeddings`` for ``L0``).
    With a KV cache, keys keep the frequencies of the step that rotated them (as in transformers).

    ``L`` is one number per call: in a batch, the frequencies follow the longest row (the largest position of
    every row), as transformers' ``dynamic_rope_update`` does, so a left-padded short row is rotated with the
    long row's frequencies; decode rows separately for row-exact results.
    """

    factor: float
    original_max_position_embeddings: int
    rope_type: ClassVar[str] = "dynamic"
    label: ClassVar[str] = "dynamic NTK scaling"
    bounds: ClassVar[Mapping[str, Bound]] = {"factor": FACTOR, "original_max_position_embeddings": LENGTH}
    length_dependent: ClassVar[bool] = True

    def validate(self, rotary_dim: int | None = None) -> None:
        _check_ntk_dim(self.label, rotary_dim)

    @property
    def static_length(self) -> int | None:
        return self.original_max_position_embeddings

    @classmethod
    def extension(cls, train_len: int, eval_len: int) -> DynamicNTKScaling:
        return cls(DYNAMIC_FACTOR, train_len)

    def inv_freq(self, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
        plain = rope_inv_freq(rotary_dim, base, device=device)
        if seq_len is None:
            return plain
        length = torch.as_tensor(seq_len, device=device, dtype=plain.dtype)
        ratio = self.factor * length / self.original_max_position_embeddings - (self.factor - 1.0)
        scaled_base = base * ratio.clamp_min(1.0) ** (rotary_dim / (rotary_dim - 2))
        scaled = 1.0 / scaled_base ** _exponents(rotary_dim, device)
        return torch.where(
            _longer_than(seq_len, self.original_max_position_embeddings, device), scaled, plain
        )


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
    label: ClassVar[str] = "YaRN scaling"
    bounds: ClassVar[Mapping[str, Bound]] = {
        "factor": FACTOR,
        "original_max_position_embeddings": LENGTH,
        "beta_fast": POSITIVE,
        "beta_slow": POSITIVE,
        "attention_factor": POSITIVE,
        "mscale": _MSCALE,
        "mscale_all_dim": _MSCALE,
    }

    def validate(self, rotary_dim: int | None = None) -> None:
        owner = self.label
        if self.beta_fast < self.beta_slow:
            raise ValueError(
                f"{owner}: beta_fast ({self.beta_fast}) must be >= beta_slow ({self.beta_slow}); beta_fast counts "
                "the rotations above which frequencies are kept, beta_slow those below which they are interpolated"
            )
        for name in ("beta_fast", "beta_slow"):  # the ramp takes ln(L0 / (2 pi beta)): finite and > 0 only
            try:
                ratio = self.original_max_position_embeddings / (getattr(self, name) * 2 * math.pi)
            except OverflowError:
                ratio = math.inf
            if not (math.isfinite(ratio) and ratio > 0):
                raise ValueError(
                    f"{owner}: {name}={getattr(self, name)} with original_max_position_embeddings="
                    f"{self.original_max_position_embeddings} puts ln(L0 / (2 pi {name})) out of the float range; "
                    f"{name} counts rotations over L0 (32 and 1 by default)"
                )
        if not isinstance(self.truncate, bool):
            raise TypeError(f"{owner}: truncate must be a bool, got {self.truncate!r}")

    def attention_factor_value(self) -> float:
        if self.attention_factor is not None:
            return float(self.attention_factor)
        if self.mscale and self.mscale_all_dim:  # transformers uses the ratio only when both are non-zero
            return _yarn_mscale(self.factor, self.mscale) / _yarn_mscale(self.factor, self.mscale_all_dim)
        return _yarn_mscale(self.factor)

    @classmethod
    def extension(cls, train_len: int, eval_len: int) -> YaRNScaling:
        return cls(_stretch(cls.label, train_len, eval_len), train_len)

    def inv_freq(self, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
        def correction_dim(
            rotations: float,
        ) -> float:  # the dim whose frequency turns `rotations` times over L0
            return (
                rotary_dim
                * math.log(self.original_max_position_embeddings / (rotations * 2 * math.pi))
                / (2 * math.log(base))
            )

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, rotary_dim - 1)
        if low == high:
            high += 0.001  # as transformers: avoid dividing by zero
        plain = rope_inv_freq(rotary_dim, base, device=device)  # (P,)
        ramp = ((torch.arange(rotary_dim // 2, device=device, dtype=plain.dtype) - low) / (high - low)).clamp(
            0, 1
        )
        return plain / self.factor * ramp + plain * (1.0 - ramp)  # ramp 0: keep (extrapolate), 1: interpolate


@dataclass(frozen=True)
class Llama3Scaling(RopeScaling):
    """Llama 3.1 scaling: wavelengths above ``L0 / low_freq_factor`` are interpolated by ``factor``, those below
    ``L0 / high_freq_factor`` kept, and a smooth blend between (Meta, "The Llama 3 Herd of Models", 2024)."""

    factor: float
    original_max_position_embeddings: int
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    rope_type: ClassVar[str] = "llama3"
    label: ClassVar[str] = "Llama 3 scaling"
    bounds: ClassVar[Mapping[str, Bound]] = {
        "factor": FACTOR,
        "original_max_position_embeddings": LENGTH,
        "low_freq_factor": POSITIVE,
        "high_freq_factor": POSITIVE,
    }

    def validate(self, rotary_dim: int | None = None) -> None:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"{self.label}: high_freq_factor ({self.high_freq_factor}) must be > low_freq_factor "
                f"({self.low_freq_factor})"
            )

    def inv_freq(self, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
        plain = rope_inv_freq(rotary_dim, base, device=device)
        old = self.original_max_position_embeddings
        wavelen = 2 * math.pi / plain
        long_wave, short_wave = wavelen > old / self.low_freq_factor, wavelen < old / self.high_freq_factor
        smooth = (old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blended = (1.0 - smooth) * plain / self.factor + smooth * plain
        return torch.where(long_wave, plain / self.factor, torch.where(short_wave, plain, blended))


@dataclass(frozen=True)
class LongRoPEScaling(RopeScaling):
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753; Phi-3): frequency ``i`` divided by ``short_factor[i]`` up to
    ``original_max_position_embeddings`` and by ``long_factor[i]`` beyond (the switch looks at the current length
    ``max(position) + 1``), cos and sin scaled by ``attention_factor``, default
    ``sqrt(1 + ln(factor) / ln(L0))`` (1 when ``factor <= 1``).

    ``factor`` is the extension ratio ``max_position_embeddings / original_max_position_embeddings``; give it or
    ``attention_factor`` (deriving the temperature from ``factor > 1`` needs ``L0 >= 2``). Both lists have
    ``rotary_dim / 2`` entries.

    The short/long switch is one per call: in a batch, the frequencies follow the longest row (the largest
    position of every row), as transformers' ``dynamic_rope_update`` does, so a short row batched with a long
    one takes the long factors; decode rows separately for row-exact results.
    """

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    factor: float | None = None
    attention_factor: float | None = None
    rope_type: ClassVar[str] = "longrope"
    label: ClassVar[str] = "LongRoPE scaling"
    bounds: ClassVar[Mapping[str, Bound]] = {
        "original_max_position_embeddings": LENGTH,
        "factor": POSITIVE,
        "attention_factor": POSITIVE,
    }
    length_dependent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError(
                    f"{self.label}: {name} must be a list of finite numbers > 0 (one per frequency), got {value!r}"
                )
            entries = tuple(check_param(self.label, f"{name}[{i}]", v, POSITIVE) for i, v in enumerate(value))
            object.__setattr__(self, name, entries)
        super().__post_init__()

    def validate(self, rotary_dim: int | None = None) -> None:
        owner = self.label
        for name in ("short_factor", "long_factor"):
            values = getattr(self, name)
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
        if self.attention_factor is None and self.factor is not None and self.factor > 1.0:
            if self.original_max_position_embeddings < 2:  # the temperature divides by ln(L0)
                raise ValueError(
                    f"{owner}: original_max_position_embeddings must be >= 2 when the temperature comes from factor "
                    f"(sqrt(1 + ln(factor) / ln(L0)) divides by ln(L0), 0 at L0 = 1), got "
                    f"{self.original_max_position_embeddings}; give attention_factor, or the real original length"
                )

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

    def inv_freq(self, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
        plain = rope_inv_freq(rotary_dim, base, device=device)
        short = plain / torch.tensor(self.short_factor, device=device, dtype=plain.dtype)
        if seq_len is None:
            return short
        long = plain / torch.tensor(self.long_factor, device=device, dtype=plain.dtype)
        return torch.where(_longer_than(seq_len, self.original_max_position_embeddings, device), long, short)
