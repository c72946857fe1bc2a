"""Encoding specs: a registered name with build options, as ``posenc compare`` and ``posenc tasks`` take them.

``alibi`` is the encoding as :func:`posenc.build` makes it; ``alibi:max_bias=4`` passes ``max_bias=4`` too, and
``shaw:max_distance=32:per_head=true`` two options. So variants of one encoding train side by side in one run,
under one configuration, and their rows sit beside the plain one's (the example: ALiBi's slopes at four heads,
README "compare").

In a list, ``all`` stands for every registered encoding (``--encodings all,alibi:max_bias=4``: the plain ten and one
variant). Grammar: ``name(:key=value)*``, ``key`` a Python identifier the encoding's constructor takes (not a model size:
``dim``, ``heads`` and ``head_dim`` come from the model), ``value`` one of ``true``/``false``, ``none``, an
integer, a float (``4.0``, ``1e-3``) or a word of letters, digits and ``._-``. The canonical text
(:attr:`EncodingSpec.text`) lists the options sorted by key, values as parsed (``max_bias=04``, ``4.0`` and ``4e0``
are ``max_bias=4``), and leaves out an option set to its default (``alibi:max_bias=8`` is ``alibi``): one model,
one name. It names the records, the rows, the
checkpoints (``:`` written ``@`` in file names, :attr:`EncodingSpec.stem`) and rebuilds the model
(:func:`posenc.experiments.build_model`). A spec's options override the encoding's own
``training_options`` (e.g. ``learned:max_len=256``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..registry import ENCODINGS, available, check_options, encoding_class, option_defaults
from ..validation import first_line
from .memory import check_training_memory, training_bytes

if TYPE_CHECKING:
    from .train import TrainConfig

#: Separates the name and the options in a spec; ``@`` stands for it in file names (:attr:`EncodingSpec.stem`).
SEP, FILE_SEP = ":", "@"
#: Sizes the model gives every encoding: not options of a spec.
SIZES = ("dim", "heads", "head_dim")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_WORD = re.compile(r"[A-Za-z0-9._-]+\Z")
_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")

Value = bool | int | float | str | None


@dataclass(frozen=True)
class EncodingSpec:
    """A registered encoding ``name`` and its ``options`` (sorted by key)."""

    name: str
    options: tuple[tuple[str, Value], ...] = ()

    @property
    def text(self) -> str:
        """The canonical spec, e.g. ``alibi:max_bias=4`` (just the name without options)."""
        return SEP.join([self.name, *(f"{k}={_shown(v)}" for k, v in self.options)])

    @property
    def stem(self) -> str:
        """:attr:`text` as a file or folder name: ``alibi@max_bias=4``."""
        return file_stem(self.text)

    def build_options(self) -> dict[str, Value]:
        """The options as keyword arguments for :func:`posenc.build`."""
        return dict(self.options)

    def __str__(self) -> str:
        return self.text


def parse_spec(text: object, what: str = "encoding") -> EncodingSpec:
    """Parse ``name(:key=value)*`` (see the module docstring), refusing what it cannot build.

    Raises:
        ValueError: not a string, an unknown name, a malformed or repeated option, a size given as an option,
            a value outside the grammar.
        TypeError: an option the encoding does not take (the options it takes are listed).
    """
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string such as 'alibi' or 'alibi:max_bias=4', got {text!r}")
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(
            f"{what} {text[:40]!r}...: a spec of {len(text)} characters; at most {MAX_SPEC_CHARS} (it names files)"
        )
    name, *parts = text.strip().split(SEP)
    name = name.strip()
    if name not in ENCODINGS:
        where = f"{what}: " if text.strip() == name and what.startswith("-") else ""
        where = where if text.strip() == name else f"{what} {text!r}: "
        raise ValueError(f"{where}unknown encoding {name!r}; choose from {', '.join(available())}")
    cls = encoding_class(name)
    options: dict[str, Value] = {}
    for part in parts:
        key, eq, raw = (s.strip() for s in part.partition("="))
        if not eq or not _KEY.match(key) or not raw:
            raise ValueError(
                f"{what} {text!r}: {part!r} is not an option; write {name}:key=value, e.g. alibi:max_bias=4"
            )
        if key in SIZES:
            raise ValueError(f"{what} {text!r}: {key} is a model size, set by the model, not an option")
        if key in options:
            raise ValueError(f"{what} {text!r}: option {key} given twice")
        options[key] = parse_value(raw, f"{what} {text!r}: {key}")
    try:
        check_options(name, cls, options)
    except TypeError as err:
        raise TypeError(f"{what} {text!r}: {str(err).split(': ', 1)[-1]}") from None
    defaults = option_defaults(cls)
    trained = set(
        cls.training_options(1)
    )  # set by training (learned: max_len=L): their defaults do not apply
    kept = {
        k: v for k, v in options.items() if k in trained or not _same_value(v, defaults.get(k, _NO_DEFAULT))
    }
    return EncodingSpec(name, tuple(sorted(kept.items())))


#: The longest spec accepted: it names a folder and files (with room for ``-s<seed>.pt`` and the like).
MAX_SPEC_CHARS = 120
_NO_DEFAULT = object()


def _same_value(value: Value, default: object) -> bool:
    """Whether an option's value is its default, so the spec means the same model without it (``alibi:max_bias=8``
    is ``alibi``). Bools and None only as themselves (``values=1`` is not ``values=True``: the encoding refuses
    it); numbers by value."""
    if isinstance(value, bool) or isinstance(default, bool) or value is None or default is None:
        return value is default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return value == default
    return isinstance(value, str) and isinstance(default, str) and value == default


def parse_value(raw: str, what: str) -> Value:
    """``true``/``false`` -> bool, ``none`` -> None, an integer -> int, a float -> float, a word -> str."""
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if len(raw) > 40:  # (int() of thousands of digits is refused by Python itself, with no word of the spec)
        raise ValueError(f"{what}={raw[:20]!r}...: a value of {len(raw)} characters; at most 40")
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        number = float(raw)
        if not math.isfinite(number):
            raise ValueError(f"{what}={raw!r}: out of the range of a float")
        # an integral float is that integer (4.0 is 4: one model, one record), where floats hold it exactly
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if _WORD.match(raw) and low not in ("nan", "inf", "-inf", "+inf", "infinity"):
        return raw
    raise ValueError(
        f"{what}={raw!r}: a value must be true, false, none, a number or a word of letters, digits and ._-"
    )


def _shown(value: Value) -> str:
    """A value in the canonical text: parsing it gives it back."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value).replace("e+", "e")  # (no "+": it separates a row's RoPE extension, rope+yarn)
    return str(value)


def canonical(text: str, what: str = "encoding") -> str:
    """:attr:`EncodingSpec.text` of ``text``."""
    return parse_spec(text, what).text


def file_stem(text: str) -> str:
    """A spec (or a table row of one) as a file or folder name: ``alibi:max_bias=4`` -> ``alibi@max_bias=4``."""
    return text.replace(SEP, FILE_SEP)


def spec_of_stem(stem: str) -> str:
    """The spec text a file name (:attr:`EncodingSpec.stem`) stands for."""
    return stem.replace(FILE_SEP, SEP)


#: The entry of a list of specs that stands for every registered encoding (``all,alibi:max_bias=4``).
ALL = "all"


def _new_variant(text: str, what: str) -> str:
    """:func:`canonical`, refusing options that choose how the encoding computes, not what (``rope:impl=...``,
    ``cache_len``: every value trains the same model, under a second name). Only where a user names models to
    train: names read back from an earlier run's files keep loading."""
    spec = parse_spec(text, what)
    runtime = [k for k, _ in spec.options if k in encoding_class(spec.name).runtime_options]
    if runtime:
        raise ValueError(
            f"{what} {text!r}: {runtime[0]} chooses how {spec.name} computes, not what (every value trains the "
            "same model), so it makes no variant; leave it out"
        )
    return spec.text


def check_specs(specs: list[str], what: str = "encodings") -> list[str]:
    """A user's list of specs, canonical: each parsed, :data:`ALL` expanded in place to :func:`posenc.available`,
    not empty, none twice (``alibi:max_bias=4`` and ``alibi:max_bias=04`` are one; so are ``all`` and ``rope``)."""
    if not specs:
        raise ValueError(f"no {what} given; choose from {', '.join(available())}")
    out: list[str] = []
    for s in specs:
        out += available() if isinstance(s, str) and s.strip() == ALL else [_new_variant(s, what)]
    twice = sorted({s for s in out if out.count(s) > 1})
    if twice:
        inside = f" ({ALL} holds every registered encoding)" if ALL in [str(s).strip() for s in specs] else ""
        raise ValueError(f"{what} listed twice{inside}: {', '.join(twice)}")
    return out


def variants_note(names: list[str]) -> str | None:
    """The reports' sentence on rows with options (``alibi:max_bias=4``) among ``names``; None without any."""
    variants = [n for n in names if SEP in n]
    if not variants:
        return None
    return (
        f"`{variants[0]}`"
        + (" and the other rows with options are" if len(variants) > 1 else " is")
        + " the encoding before the colon built with the options after it (`posenc.build(name, ..., key=value)`, "
        "over its training options), trained and scored exactly as the others."
    )


def check_buildable(
    names: list[str],
    train: TrainConfig,
    device: torch.device | str | None = "cpu",
    flag: str = "--encodings",
    passes: Sequence[tuple[int, int]] = (),
) -> None:
    """Build each encoding's model once (one layer) and run it on one window of ``L`` bytes on ``device``, so one
    that cannot take these sizes (rope with an odd head size), options (``alibi:max_bias=-1``, ``xpos:gamma=1e300``)
    or length (``learned:max_len=64`` at L = 128), or that gives non-finite outputs (``fire:init_c=1e300``), is
    refused before any model trains, not after the others have: one ``ValueError`` naming it, whatever the encoding
    raised (but running out of memory, which is re-raised). Two specs that build the same model at this L
    (``learned`` and ``learned:max_len=128``) are refused too. ``device=None``: build only, on the CPU (a caller
    that does not yet know its device, e.g. one rank of several before the process group). On a CPU the run's
    memory is checked first (:func:`check_training_memory`), its evaluation's forward passes ``(batch, length)``
    in ``passes``."""
    from dataclasses import replace

    from .train import build_model, encoding_options

    if device is not None and torch.device(device).type == "cpu":
        check_training_memory(train, names, passes)
    small = replace(train, depth=1)
    seen: dict[tuple[str, str], str] = {}
    for name in names:
        options = {k: _number(v) for k, v in encoding_options(name, small).items()}
        try:
            model = build_model(name, small).eval()
            built = model.encodings()  # (an absolute encoding is the input one, after the layers' NoPE)
            same = seen.setdefault(_built_as(built[-1] if built[-1].is_absolute else built[0], options), name)
            if same != name:
                raise _SameModel(
                    f"{flag}: {same} and {name} build the same model at L = {train.train_len}; keep one"
                )
            _check_extensions(model, small.train_len)
            if device is None:
                continue
            model = model.to(device)
            limit = model.max_length  # (below PROBE_LEN the forward at L refuses in the encoding's own words)
            if limit is not None and small.train_len > max(limit, PROBE_LEN):
                raise ValueError(f"it takes positions below {limit} only, and L = {small.train_len}")
            probe = min(
                small.train_len, PROBE_LEN
            )  # (a huge L is the data's to refuse, not an n^2 forward's)
            with torch.no_grad():
                out = model(torch.zeros(1, probe, dtype=torch.long, device=device))
            if not bool(torch.isfinite(out).all()):
                raise ValueError("its output at L is not finite (NaN or infinity) from the start")
        except _SameModel:
            raise
        except (ValueError, TypeError, ArithmeticError, RuntimeError) as err:
            if (
                isinstance(err, torch.OutOfMemoryError)
                or "out of memory" in str(err)
                or "allocate" in str(err)
            ):
                raise
            t, why = train, first_line(err)
            if SEP in name:
                raise ValueError(f"{flag} {name}: {why}") from None
            raise ValueError(
                f"{name} cannot be trained at dim {t.dim} with {t.heads} heads (head size {t.dim // t.heads}): "
                f"{why}; choose other sizes, or leave {name} out of {flag}"
            ) from None


def _check_extensions(model: torch.nn.Module, train_len: int) -> None:
    """Build the ``rope+<method>`` rows' encodings of a RoPE model (the extension to ``16 L``), so one a method
    cannot take (dynamic NTK at ``rotary_dim=2``) is refused before training, not after it (its checkpoint
    was lost: the rows are evaluated before it is saved)."""
    from .evaluate import rope_extensions, supports_rope_extension

    if not supports_rope_extension(model):  # type: ignore[arg-type]
        return
    first = model.layer_encodings()[0]  # type: ignore[operator]
    for method, scaling in rope_extensions().items():
        try:
            first.with_scaling(scaling.extension(train_len, 16 * train_len))
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"its rope+{method} row (inference-time {method}) cannot be built: {first_line(err)}"
            ) from None


#: The longest window :func:`check_buildable` runs a model on (its length limit is checked at any ``L``).
PROBE_LEN = 4096


class _SameModel(ValueError):
    """Two specs that build one model (raised as it is, not reworded as a build failure)."""


def _built_as(encoding: torch.nn.Module, options: dict[str, object]) -> tuple[str, str]:
    """What an encoding was built as: its class and each constructor argument as the module holds it after its own
    defaults resolved (``rope``'s ``rotary_dim=None`` is ``head_dim``), or as given where it keeps no attribute of
    that name. Two specs with the same are one model (``rope`` and ``rope:rotary_dim=32`` at head size 32)."""
    import inspect

    params = [p for p in inspect.signature(type(encoding).__init__).parameters if p != "self"]
    held = {
        p: repr(getattr(encoding, p)) if hasattr(encoding, p) else repr(options.get(p, "-")) for p in params
    }
    return type(encoding).__name__, repr(sorted(held.items()))


def _number(value: object) -> object:
    """Numbers as floats (``1e16`` and ``10000000000000000`` build one model), anything else as it is."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def spec_order(names: list[str] | set[str]) -> list[str]:
    """``names`` (spec texts) in :func:`posenc.available` order of their encodings, each plain encoding before its
    variants (sorted); names that are not specs of a registered encoding last, sorted."""
    rank = {n: i for i, n in enumerate(available())}

    def key(text: str) -> tuple[int, int, str]:
        base, _, rest = text.partition(SEP)
        return (rank.get(base, len(rank)), bool(rest), text)

    return sorted(names, key=key)


def base_name(text: str) -> str:
    """The encoding of a spec or of a table row: ``alibi:max_bias=4`` and ``rope:base=500+yarn`` -> their name."""
    return text.split("+", 1)[0].split(SEP, 1)[0]


__all__ = [
    "check_buildable",
    "ALL",
    "EncodingSpec",
    "base_name",
    "canonical",
    "file_stem",
    "check_specs",
    "parse_spec",
    "parse_value",
    "spec_of_stem",
    "spec_order",
    "variants_note",
    "check_training_memory",
    "training_bytes",
]
