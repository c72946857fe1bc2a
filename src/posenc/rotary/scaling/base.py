"""The base of every RoPE scaling: parameter checks, the :class:`RopeScaling` dataclass and its registry."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...functional.rotary import phase_dtype
from ...registry import Registry

SeqLen = int | Tensor | None

#: Every scaling class with a ``rope_type``, registered when the class is defined; "default" means none.
SCALINGS: Registry[type[RopeScaling]] = Registry("rope_type", extra=("default",))


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


@dataclass(frozen=True)
class RopeScaling(ABC):
    """Base of the scaling dataclasses. ``rope_type`` names the method (transformers' names where it has one)."""

    rope_type: ClassVar[str] = ""
    #: True when the frequencies depend on the current length (then see :attr:`static_length`).
    length_dependent: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("rope_type"):
            SCALINGS.add(cls.rope_type, cls)

    def __post_init__(self) -> None:
        self.validate()

    @abstractmethod
    def inv_freq(self, rotary_dim: int, base: float, seq_len: SeqLen, device: torch.device) -> Tensor:
        """The rule: ``(R/2,)`` frequencies in the phase dtype for ``rotary_dim``, ``base`` and length ``seq_len``
        (``max(position) + 1`` of the call, an int or a 0-d tensor; None for the construction-time value)."""

    @classmethod
    def extension(cls, train_len: int, eval_len: int) -> RopeScaling | None:
        """This method configured to run a model trained at ``train_len`` on ``eval_len`` tokens without
        retraining (``posenc compare``'s ``rope+<method>`` rows), or None if it is not offered that way."""
        return None

    def validate(self, rotary_dim: int | None = None) -> None:
        """Raise ``ValueError``/``TypeError`` on missing or out-of-range parameters (``rotary_dim`` when known).

        The base accepts everything; methods with parameters override it."""
        return None

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


def _check_ntk_dim(owner: str, rotary_dim: int | None) -> None:
    if rotary_dim is not None and rotary_dim <= 2:
        raise ValueError(f"{owner} needs rotary_dim > 2 (the base exponent is R/(R-2)), got {rotary_dim}")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


def _exponents(rotary_dim: int, device: torch.device) -> Tensor:
    """``(P,)`` exponents ``2i / R`` in the phase dtype (the same arithmetic as ``rope_inv_freq``)."""
    return torch.arange(0, rotary_dim, 2, device=device, dtype=phase_dtype(device)) / rotary_dim


def _longer_than(seq_len: int | Tensor, limit: int, device: torch.device) -> Tensor:
    """0-d bool tensor ``seq_len > limit`` (traceable when ``seq_len`` is a tensor)."""
    return torch.as_tensor(seq_len, device=device) > limit


def _factor(owner: str, value: object) -> None:
    _number(owner, "factor", value, at_least=1.0)
