"""Encodings by name: ``posenc.build("rope", head_dim=64)``.

Each encoding module registers a builder with :func:`register`; a builder receives the :class:`Sizes` of the
model and the caller's options, and asks for the sizes it needs with :meth:`Sizes.require`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import PositionEncoding

Builder = Callable[..., PositionEncoding]
_BUILDERS: dict[str, Builder] = {}


@dataclass(frozen=True)
class Sizes:
    """Model sizes an encoding may need: ``dim`` (model width), ``heads``, ``head_dim``."""

    name: str
    dim: int | None = None
    heads: int | None = None
    head_dim: int | None = None

    def require(self, field: str) -> int:
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"encoding {self.name!r} needs {field}=...; pass it to posenc.build")
        return int(value)


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``builder(sizes: Sizes, **options)`` available as ``build(name, ...)``."""

    def deco(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"encoding name {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """Registered encoding names, sorted."""
    return sorted(_BUILDERS)


def build(
    name: str,
    *,
    dim: int | None = None,
    heads: int | None = None,
    head_dim: int | None = None,
    **options: Any,
) -> PositionEncoding:
    """Build an encoding by name; each takes the sizes it needs (``head_dim`` defaults to ``dim // heads``).

    Raises:
        ValueError: unknown name, a needed size missing, or ``dim`` not divisible by ``heads``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown encoding {name!r}; choose one of {', '.join(available())}")
    if head_dim is None and dim is not None and heads is not None:
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        head_dim = dim // heads
    return _BUILDERS[name](Sizes(name, dim, heads, head_dim), **options)


@register("none")
def _build_none(sizes: Sizes) -> PositionEncoding:
    from .base import NoPE

    return NoPE()
