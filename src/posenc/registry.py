"""Names to things, with one set of rules: :class:`Registry`; and encodings by name, ``posenc.build``.

Every name -> thing map in posenc is a :class:`Registry` (encodings, RoPE scalings, attention backends, RoPE
kernels, benchmark suites): adding a taken name raises, :meth:`Registry.names` lists the choices, and an
unknown name gets one error message that lists them.

Encodings register themselves: a :class:`posenc.PositionEncoding` subclass that sets the class attribute
``name`` is added to :data:`ENCODINGS` when it is defined, and :func:`build` constructs it from the model sizes it
asks for (``sizes = ("heads",)``, ...) and the caller's options, with the constructor's own defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from torch import nn

if TYPE_CHECKING:
    from .base import PositionEncoding

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> item map for one ``kind`` of thing ("encoding", "attention backend", ...).

    Args:
        kind: what the items are, for error messages.
        extra: names accepted by callers besides the registered ones (e.g. "auto"), listed in errors.
    """

    def __init__(self, kind: str, extra: tuple[str, ...] = ()) -> None:
        self.kind, self.extra = kind, extra
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        """Register ``item`` under ``name``; a taken name raises unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} name {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def remove(self, name: str) -> None:
        """Forget ``name`` (for tests that register something temporary)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def choices(self) -> str:
        """The accepted names as one string, for messages."""
        return ", ".join([*self.extra, *self.names()])

    def check(self, name: object, what: str | None = None) -> str:
        """Return ``name`` if registered (or one of ``extra``), else raise the one error of this registry."""
        if isinstance(name, str) and (name in self._items or name in self.extra):
            return name
        raise ValueError(f"unknown {what or self.kind} {name!r}; choose one of {self.choices()}")

    def get(self, name: object, what: str | None = None) -> T:
        """The item under ``name`` (``ValueError`` listing the choices if there is none)."""
        self.check(name, what)
        if name in self.extra and name not in self._items:
            raise ValueError(
                f"{name!r} is not a {self.kind} by itself; choose one of {', '.join(self.names())}"
            )
        return self._items[name]  # type: ignore[index]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def items(self) -> list[tuple[str, T]]:
        """``(name, item)`` pairs, sorted by name."""
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Sizes:
    """Model sizes an encoding may need: ``dim`` (model width), ``heads``, ``head_dim``."""

    name: str
    dim: int | None = None
    heads: int | None = None
    head_dim: int | None = None

    def require(self, field: str) -> int:
        """The size ``field``, or a ``ValueError`` saying the encoding needs it."""
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"encoding {self.name!r} needs {field}=...; pass it to posenc.build")
        from .validation import check_int

        return check_int(field, value, at_least=1, owner=f"build({self.name!r})")


#: Every encoding class with a ``name``, registered when the class is defined.
ENCODINGS: Registry[type[PositionEncoding]] = Registry("encoding")
#: The order families are listed in (``available``), from no position information to learned biases.
FAMILIES: tuple[str, ...] = ("none", "absolute", "relative", "rotary", "bias")


def available(family: str | None = None) -> list[str]:
    """Registered encoding names, by family (in :data:`FAMILIES` order) then name; only ``family`` if given."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown encoding family {family!r}; choose one of {', '.join(FAMILIES)}")
    rank = {f: i for i, f in enumerate(FAMILIES)}
    classes = ENCODINGS.items()
    chosen = [(n, c) for n, c in classes if family is None or c.family == family]
    return [n for n, c in sorted(chosen, key=lambda nc: (rank.get(nc[1].family, len(rank)), nc[0]))]


def encoding_class(name: str) -> type[PositionEncoding]:
    """The class registered as ``name`` (``ValueError`` listing the choices if none)."""
    return ENCODINGS.get(name)


def build(
    name: str,
    *,
    dim: int | None = None,
    heads: int | None = None,
    head_dim: int | None = None,
    **options: Any,
) -> PositionEncoding:
    """Build an encoding by name; each takes the sizes it needs (``head_dim`` defaults to ``dim // heads``).

    ``options`` go to the class's constructor, whose defaults apply to everything not given.

    Raises:
        ValueError: unknown name, a needed size missing, or ``dim`` not divisible by ``heads``.
    """
    cls = encoding_class(name)
    from .validation import check_int

    for field, value in (("dim", dim), ("heads", heads), ("head_dim", head_dim)):
        if value is not None:
            check_int(field, value, at_least=1, owner=f"build({name!r})")
    if head_dim is None and dim is not None and heads is not None:
        if heads <= 0 or dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        head_dim = dim // heads
    check_options(name, cls, options)
    return cls.from_sizes(Sizes(name, dim, heads, head_dim), **options)


def encoding_options(cls: type[PositionEncoding]) -> list[str]:
    """The keyword options ``build`` passes on to ``cls`` (its constructor's and ``from_sizes``' parameters, not
    the sizes), or ``["*"]`` when either takes any keyword it is not written to forward."""
    names: list[str] = []
    for fn, skip in ((cls.__init__, {"self", *cls.sizes}), (cls.from_sizes, {"cls", "sizes"})):
        if fn is nn.Module.__init__:
            continue  # (NoPE: no constructor of its own, no options)
        params = inspect.signature(fn).parameters.values()
        if fn is cls.__init__ and any(p.kind is p.VAR_KEYWORD for p in params):
            return ["*"]
        names += [p.name for p in params if p.kind in _KEYWORD and p.name not in skip and p.name not in names]
    return names


_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def option_defaults(cls: type[PositionEncoding]) -> dict[str, Any]:
    """The default of every keyword option of ``cls``'s constructor and ``from_sizes`` that has one (the options
    of :func:`encoding_options`, with the sizes' defaults if any)."""
    out: dict[str, Any] = {}
    for fn in (cls.__init__, cls.from_sizes):
        if fn is nn.Module.__init__:
            continue
        params = inspect.signature(fn).parameters.values()
        out.update({p.name: p.default for p in params if p.default is not inspect.Parameter.empty})
    return out


def check_options(name: str, cls: type[PositionEncoding], options: dict[str, Any]) -> None:
    """``TypeError`` naming the options ``cls`` does not take and listing those it does (Python's own error named
    one option and listed none, or came from deep inside ``from_sizes``)."""
    accepted = encoding_options(cls)
    unknown = [k for k in options if k not in accepted]
    if unknown and accepted != ["*"]:
        takes = ", ".join(accepted) if accepted else "no options"
        raise TypeError(
            f"build({name!r}): unknown option(s) {', '.join(map(repr, unknown))}; it takes {takes}"
        )


__all__ = ["ENCODINGS", "FAMILIES", "Registry", "Sizes", "available", "build", "encoding_class"]
