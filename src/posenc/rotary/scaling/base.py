"""The base of every RoPE scaling: parameter checks, the :class:`RopeScaling` dataclass and its registry."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from ...functional.rotary import phase_dtype
from ...registry import Registry
from ...validation import check_float, check_int

SeqLen = int | Tensor | None

#: Every scaling class with a ``rope_type``, registered when the class is defined; "default" means none.
SCALINGS: Registry[type[RopeScaling]] = Registry("rope_type", extra=("default",))


class Bound(NamedTuple):
    """What a numeric scaling parameter accepts: a finite number (or an integer) within the given bounds."""

    above: float | None = None
    at_least: float | None = None
    at_most: float | None = None
    integer: bool = False
    note: str = ""

    def accepts(self) -> str:
        """The accepted values in words, e.g. ``"a finite number >= 1 (the extension ratio)"``."""
        text = "an integer" if self.integer else "a finite number"
        if self.above is not None:
            text += f" > {self.above:g}"
        if self.at_least is not None:
            text += f" >= {self.at_least:g}"
        if self.at_most is not None:
            lower = self.above is not None or self.at_least is not None
            text += f"{' and' if lower else ''} <= {self.at_most:g}"
        return f"{text} ({self.note})" if self.note else text


#: ``factor`` of the methods that stretch the context (transformers warns below 1; posenc refuses).
FACTOR = Bound(at_least=1.0, note="the context extension ratio")
POSITIVE = Bound(above=0.0)
LENGTH = Bound(at_least=1, integer=True, note="a number of positions")


def check_param(owner: str, name: str, value: object, bound: Bound) -> float | int:
    """``value`` as an ``int`` (``bound.integer``) or ``float`` if ``bound`` accepts it: the kind and finiteness
    checked by :func:`posenc.validation.check_int` / :func:`~posenc.validation.check_float`, the message
    naming everything ``bound`` accepts.

    Raises:
        TypeError: not a real number (a string such as ``"4"``, None, a list, a tensor), a bool, or a non-integer
            where an integer goes; the message names ``owner`` and ``name``, says what was got and what is accepted.
        ValueError: NaN, infinity, or out of the bound (same message shape).
    """
    what = f"{owner}: {name} must be {bound.accepts()}"
    try:
        if isinstance(
            value, Tensor
        ):  # (check_float takes one-element tensors; a scaling stores plain numbers)
            raise TypeError
        out: float | int = check_int(name, value) if bound.integer else check_float(name, value)
    except TypeError:
        got = f"the bool {value!r}" if isinstance(value, bool) else f"{value!r} ({type(value).__name__})"
        raise TypeError(f"{what}, got {got}") from None
    except ValueError as err:  # NaN, infinity, or past the float range (10**400)
        try:
            got = str(float(value))  # type: ignore[arg-type]
        except OverflowError:
            got = str(err).split(", got ", 1)[-1]  # check_float's words for a number past the float range
        raise ValueError(f"{what}, got {got}") from None
    if (
        (bound.above is not None and not out > bound.above)
        or (bound.at_least is not None and not out >= bound.at_least)
        or (bound.at_most is not None and not out <= bound.at_most)
    ):
        raise ValueError(f"{what}, got {out!r}")
    return out


@dataclass(frozen=True)
class RopeScaling(ABC):
    """Base of the scaling dataclasses. ``rope_type`` names the method (transformers' names where it has one)."""

    rope_type: ClassVar[str] = ""
    #: The method's name in error messages ("YaRN scaling").
    label: ClassVar[str] = "RoPE scaling"
    #: What each numeric parameter accepts: :meth:`__post_init__` checks every one with :func:`check_param` (the
    #: one validator of every method's numbers) and stores it normalized; one whose default is None may be None.
    bounds: ClassVar[Mapping[str, Bound]] = {}
    #: True when the frequencies depend on the current length (then see :attr:`static_length`).
    length_dependent: ClassVar[bool] = False
    #: Whether transformers has this ``rope_type`` (a model can be built with it); NTK is posenc's.
    in_transformers: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("rope_type"):
            SCALINGS.add(cls.rope_type, cls)

    def __post_init__(self) -> None:
        defaults = {f.name: f.default for f in fields(self)}
        for name, bound in self.bounds.items():
            value = getattr(self, name)
            if value is None and defaults[name] is None:
                continue
            object.__setattr__(self, name, check_param(self.label, name, value, bound))
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
        """Raise ``ValueError``/``TypeError`` on parameters that do not fit together or with ``rotary_dim`` (when
        known). Each parameter on its own is checked on construction (:attr:`bounds`); methods override this."""
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
