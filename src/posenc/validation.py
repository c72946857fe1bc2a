"""Argument checks for the public boundary: one message shape everywhere.

Each check names the argument (and its owner), says what it got and what it accepts, and raises
``TypeError`` for a value of the wrong kind (``heads=2.7``, ``interleaved="no"``, a bool where a number goes) or
``ValueError`` for one out of range (NaN, infinity, zero where a positive number goes). Checks return the value
normalized (``int`` or ``float``), so a constructor can write ``self.base = check_float(...)``.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Callable, Mapping

import torch
from torch import Tensor


def _label(owner: str | None, name: str) -> str:
    return f"{owner}: {name}" if owner else name


def first_line(err: BaseException) -> str:
    """``err``'s message on one line: its first non-empty line (torch's may add C++ frames; a compiler's runs on),
    with the next one when the first only announces it (dynamo's ``backend='inductor' raised:``), or the
    exception's type name when it has no message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def check_int(name: str, value: object, *, at_least: int | None = None, owner: str | None = None) -> int:
    """``value`` as an ``int`` (an integer, not a bool, not a float like 2.7), at least ``at_least`` if given."""
    what = _label(owner, name)
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got the bool {value!r}")
    try:
        out = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})") from None
    if at_least is not None and out < at_least:
        raise ValueError(f"{what} must be an integer >= {at_least}, got {out}")
    return out


def host_memory() -> int | None:
    """This machine's physical memory in bytes, None when unknown (not a POSIX system)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # the name is unknown there
        return None


def device_memory(device: torch.device) -> int | None:
    """The device's total memory in bytes (CUDA: the card's; CPU: physical memory), None when unknown (meta and
    other devices)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    if device.type == "cpu":
        return host_memory()
    return None


#: The most bytes a table built at construction may take where the machine's memory is unknown (1 TiB).
TABLE_BYTES_UNKNOWN_MEMORY = 2**40


def _table_limit() -> tuple[int, str]:
    """The most bytes a construction-time table may take, and where that limit comes from: half the host's memory
    when modules are built on the CPU; no limit under ``with torch.device("meta")`` (nothing is allocated) or
    another default device (its own memory, which the allocator there checks)."""
    if torch.get_default_device().type != "cpu":
        return 2**127, "not built on the CPU"
    total = host_memory()
    if total is None:
        return TABLE_BYTES_UNKNOWN_MEMORY, "the limit where memory is unknown"
    return total // 2, "half of this machine's memory"


def check_table_size(
    owner: str, name: str, value: int, table_bytes: Callable[[int], int], what: str, *, at_least: int = 0
) -> None:
    """Refuse, before allocating, an argument ``name=value`` whose tables (``what``, e.g. "(2k+1, D) key and
    value tables") would take ``table_bytes(value)`` bytes, more than half this machine's memory (the allocator
    would fail with its own message, or the system would kill the process). The error names the size and the
    largest ``value`` that fits; ``table_bytes`` must grow with its argument. ``at_least``: the smallest valid
    ``value``, assumed to fit (:func:`check_table_sizes` picks an argument for which it does)."""
    limit, where = _table_limit()
    need = table_bytes(value)
    if need <= limit:
        return
    lo, hi = at_least, value  # table_bytes(lo) fits or lo == at_least; table_bytes(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if table_bytes(mid) <= limit else (lo, mid)
    raise ValueError(
        f"{owner}: {name}={value} would take {need / 2**30:,.1f} GiB for {what}, more than the "
        f"{limit / 2**30:,.1f} GiB ({where}) its tables may take; {name} takes at most {lo:,} here"
    )


def check_table_sizes(
    owner: str,
    sizes: Mapping[str, tuple[int, int]],
    table_bytes: Callable[[Mapping[str, int]], int],
    what: str,
) -> None:
    """:func:`check_table_size` for tables that grow with several arguments: ``sizes`` maps each name to
    ``(value, smallest valid value)`` and ``table_bytes`` takes ``{name: value}``. The error blames the first
    argument (in ``sizes``' order) that alone can bring the tables under the limit, with the largest value it
    takes given the others, or names them all when none can."""
    values = {name: value for name, (value, _) in sizes.items()}
    limit, where = _table_limit()
    need = table_bytes(values)
    if need <= limit:
        return
    for name, (value, smallest) in sizes.items():

        def alone(v: int, name: str = name) -> int:
            return table_bytes({**values, name: v})

        if alone(smallest) <= limit:
            check_table_size(owner, name, value, alone, what, at_least=smallest)
    given = ", ".join(f"{name}={value}" for name, value in values.items())
    raise ValueError(
        f"{owner}: {given} would take {need / 2**30:,.1f} GiB for {what}, more than the "
        f"{limit / 2**30:,.1f} GiB ({where}) its tables may take; make them smaller"
    )


#: The seeds ``torch.manual_seed`` accepts, inclusive (a negative one is taken modulo 2**64).
TORCH_SEEDS: tuple[int, int] = (-(2**63), 2**64 - 1)


def check_seed(
    name: str,
    value: object,
    *,
    low: int = TORCH_SEEDS[0],
    high: int = TORCH_SEEDS[1],
    owner: str | None = None,
) -> int:
    """``value`` as an ``int`` seed in ``[low, high]`` (default: what ``torch.manual_seed`` accepts; training
    takes ``[0, 2**32)``), refused with a message naming the range instead of torch's overflow error."""
    out = check_int(name, value, owner=owner)
    if not low <= out <= high:
        raise ValueError(
            f"{_label(owner, name)} must be an integer in [{_bound(low)}, {_bound(high)}], got {out}"
        )
    return out


def _bound(n: int) -> str:
    """``n`` as a power of two where it is one of the seed limits (``2**32 - 1``, ``-2**63``), else in digits."""
    for k in (32, 63, 64):
        if n == 2**k - 1:
            return f"2**{k} - 1"
        if n == -(2**k):
            return f"-2**{k}"
    return str(n)


def check_float(
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    owner: str | None = None,
) -> float:
    """``value`` as a finite ``float`` (ints accepted, bools and NaN / infinity refused) within the given bounds."""
    what = _label(owner, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if not (isinstance(value, Tensor) and value.numel() == 1 and value.dtype.is_floating_point):
            raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
        if value.is_meta:  # (no value to read)
            raise ValueError(f"{what} must be a number, got a tensor on the meta device (it holds no value)")
    try:
        out = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int past the float range, such as 10**400
        raise ValueError(
            f"{what} must be a finite number, got {_huge(value)}, too large for a float (floats end near 1.8e308)"
        ) from None
    if not math.isfinite(out):
        raise ValueError(f"{what} must be a finite number, got {out}")
    if above is not None and not out > above:
        raise ValueError(f"{what} must be > {above:g}, got {out:g}")
    if at_least is not None and not out >= at_least:
        raise ValueError(f"{what} must be >= {at_least:g}, got {out:g}")
    if below is not None and not out < below:
        raise ValueError(f"{what} must be < {below:g}, got {out:g}")
    if at_most is not None and not out <= at_most:
        raise ValueError(f"{what} must be <= {at_most:g}, got {out:g}")
    return out


def _huge(value: object) -> str:
    """A number past the float range, named by its size (its digits could run to thousands)."""
    try:
        return f"an integer of {abs(operator.index(value)).bit_length()} bits"  # type: ignore[arg-type]
    except TypeError:
        return f"a {type(value).__name__}"


#: float32's largest finite value and smallest normal one: bounds for settings stored in, or added to, float32.
F32_MAX = float(torch.finfo(torch.float32).max)
F32_TINY = float(torch.finfo(torch.float32).tiny)


def check_bool(name: str, value: object, *, owner: str | None = None) -> bool:
    """``value`` as a bool if it is one (a Python or numpy bool; ``"no"``, 0 or None are refused: a truthy string
    must not mean True)."""
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # numpy.bool_
        return bool(value)
    raise TypeError(f"{_label(owner, name)} must be True or False, got {value!r}")


def check_rotatable(owner: str, head_dim: int, q: Tensor, k: Tensor) -> None:
    """Queries and keys a rotation accepts: floating-point (not integer, bool or complex) ``q: (B, H, S, D)`` and
    ``k: (B', Hkv, S, D)`` with ``D == head_dim`` and the same ``S``, on one device. Shapes only (Python ints):
    no device sync, nothing that breaks a ``fullgraph`` trace."""
    for label, t in (("q", q), ("k", k)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{owner}: {label} must be a tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(
                f"{owner}: {label} must be a floating-point tensor (float32, bfloat16, ...), got {t.dtype}"
            )
        if t.dim() != 4:
            raise ValueError(
                f"{owner}: {label} must be (batch, heads, seq, head_dim), 4 dims, got shape {tuple(t.shape)}"
            )
    if q.shape[-1] != head_dim or k.shape[-1] != head_dim:
        raise ValueError(f"{owner} built for head_dim={head_dim}, got q {q.shape[-1]} and k {k.shape[-1]}")
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"{owner}: q and k must hold the same number of tokens (seq, dim 2) to rotate at the same positions, "
            f"got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if not (q.is_cpu and k.is_cpu) and q.device != k.device:  # (is_cpu: no device objects on the hot path)
        raise ValueError(f"{owner}: q is on {q.device} but k on {k.device}; put them on one device")


def check_positions(
    owner: str,
    positions: Tensor | None,
    seq_len: int,
    batch: int | None = None,
    key_batch: int | None = None,
    *,
    meta: bool | None = None,
) -> None:
    """Explicit positions a rotation accepts: an integer tensor ``(S,)`` or ``(1|B, S)`` with ``S == seq_len``
    and ``B == batch`` (bool positions are refused: True would silently mean position 1). ``key_batch``: the
    keys' batch when it differs from the queries' ``batch``; rows of positions must then be 1 (more would
    broadcast one of them to the other's batch). ``meta``: whether the inputs are on the meta device; positions
    there, for inputs with values, are refused (positions on another real device are moved to the inputs')."""
    if positions is None:
        return
    if not isinstance(positions, Tensor):
        raise TypeError(f"{owner}: positions must be an integer tensor, got {type(positions).__name__}")
    if positions.dtype == torch.bool or positions.dtype.is_floating_point or positions.dtype.is_complex:
        raise TypeError(f"{owner}: positions must be an integer tensor, got {positions.dtype}")
    if positions.is_meta and meta is False:
        raise ValueError(
            f"{owner}: positions are on the meta device (shapes only, no values) but the inputs are not; "
            "give positions on the inputs' device"
        )
    if key_batch is not None and batch is not None and key_batch != batch:
        if positions.dim() == 2 and positions.shape[0] != 1:
            raise ValueError(
                f"{owner}: q has batch {batch} and k batch {key_batch}, so positions must be (seq,) or (1, seq), "
                f"got {tuple(positions.shape)}"
            )
    dims_ok = positions.dim() in (1, 2)  # (first: a 0-d tensor has no shape[-1] to compare)
    rows_ok = dims_ok and (positions.dim() == 1 or batch is None or positions.shape[0] in (1, batch))
    if not dims_ok or positions.shape[-1] != seq_len or not rows_ok:
        want = "batch" if batch is None else "1" if batch == 1 else f"1 or {batch}"
        raise ValueError(
            f"{owner}: positions must be (seq,) or ({want}, seq) with seq={seq_len}, got {tuple(positions.shape)}"
        )


def check_module_device(owner: str, label: str, t: Tensor, module_meta: bool) -> None:
    """Refuse an input ``t`` on the meta device for a module with real tables, or the reverse: torch's own error
    ("Tensor on device cpu is not on the expected device meta!") named neither. Host flags only: no sync."""
    if t.is_meta != module_meta:
        where = "meta" if module_meta else "a real device"
        raise ValueError(
            f"{owner}: {label} is on {t.device} but the module's tables are on {where}; move one to the "
            "other's device (module.to(...) or to_empty(...) for a module built on meta)"
        )


def check_hidden(owner: str, x: object, dim: int) -> int:
    """Hidden states an absolute encoding adds to: a floating-point tensor ``(..., S, dim)``.

    Returns the rows per-row positions ``(B, S)`` must have: ``x.shape[-3]`` (the batch next to ``S``), or 1 for a
    2-D ``x (S, dim)``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{owner}: x must be a floating-point tensor (..., seq, {dim}), got {got}")
    if x.dim() < 2 or x.shape[-1] != dim:
        raise ValueError(f"{owner}: x must be (..., seq, {dim}), got {tuple(x.shape)}")
    return x.shape[-3] if x.dim() > 2 else 1


def as_index_positions(positions: Tensor | None) -> Tensor | None:
    """Checked integer positions in a dtype that tensor indexing reads as positions: int64 and int32 as they are,
    others as int64 (torch takes a uint8 index as a boolean mask, and refuses int16 and unsigned ones in
    indexing or ``aminmax``)."""
    if positions is None or positions.dtype in (torch.int64, torch.int32):
        return positions
    return positions.long()


#: RoPE's angles ``m * theta`` are float64 products: their error grows like ``|m| * 2^-53``. Up to this bound
#: the float32 cos/sin tables are within 2e-7 of the exact values (measured: 3e-8 up to 10^8, 1.4e-7 at 2^31);
#: beyond it the error grows (1e-6 at 10^10, 1e-4 at 10^12, 6e-2 at 10^15), so positions there are refused.
ROPE_MAX_POSITION = 2**31


def check_position_range(
    positions: Tensor | None,
    seq_len: int,
    owner: str = "RoPE",
    span: tuple[int, int] | None = None,
    hint: str = (
        "use smaller positions (attention depends only on differences, so subtracting a common offset "
        "changes nothing)"
    ),
) -> None:
    """Refuse positions with ``|p| > ROPE_MAX_POSITION``, without a device sync on the per-token path.

    Default positions ``0 .. seq_len-1`` are checked on the host; explicit positions only when the check costs
    no device synchronization: they live on the CPU, or their dtype cannot hold such values (int32 and
    narrower). int64 positions on an accelerator, and positions under ``torch.compile``, are not checked.
    ``span``: the positions' ``(min, max)`` when the caller already has it on the host
    (:func:`posenc.functional.tables.host_span`).
    """
    limit = ROPE_MAX_POSITION
    if positions is None:
        if seq_len - 1 > limit:
            raise ValueError(f"{owner}: {seq_len} positions reach past {limit}, the largest it takes")
        return
    if positions.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        return  # |p| <= 2^31 by the dtype
    if span is None:
        if not positions.is_cpu or positions.numel() == 0 or torch.compiler.is_compiling():
            return
        lo, hi = torch.aminmax(positions)
        span = int(lo), int(hi)
    far = max(-span[0], span[1])
    if far > limit:
        raise ValueError(
            f"{owner}: position {far if far == span[1] else -far} is too far from 0: angles are computed in "
            f"float64 and stay within 2e-7 of exact only for |position| <= 2**31; {hint}"
        )


def wide_positions(q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Integer positions narrower than int64 as int64, so that their differences never wrap around (uint8
    ``5 - 7`` is 254, int32 ``2**31 - 1 - (-2**31)`` is -1); int64 and floating-point ones as they are."""
    return _wide(q_pos), _wide(k_pos)


def _wide(pos: Tensor) -> Tensor:
    keep = pos.dtype is torch.int64 or pos.dtype is torch.bool or pos.is_floating_point() or pos.is_complex()
    return pos if keep else pos.long()  # (bool stays bool: the callers refuse it, not read as 0 and 1)


def distance_positions(owner: str, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Positions an encoding reads ``k - q`` from: :func:`wide_positions`, then :func:`check_distances`."""
    q_pos, k_pos = wide_positions(q_pos, k_pos)
    check_distances(owner, q_pos, k_pos)
    return q_pos, k_pos


def check_distances(owner: str, q_pos: Tensor, k_pos: Tensor) -> None:
    """Refuse int64 positions whose key-query distances ``k - q`` overflow int64, where checking costs no device
    sync (CPU tensors in eager mode: a read of a lone position, one ``aminmax`` of more; accelerators and tracing
    are not checked). Narrower integers are widened first (:func:`wide_positions`): their distances fit.

    Encodings that read ``k - q`` (the bias encodings, Shaw) compute it in int64: past its range the difference
    wraps around (positions ``-2**62`` and ``2**62`` gave Kerple and FIRE NaN outputs, ALiBi a bias of the wrong
    sign), silently. About 3 us a call on a CPU (a decode step inside a :class:`posenc.DecodeSession` skips it:
    its positions are promised in ``[0, slots)``)."""
    if q_pos.dtype is not torch.int64 or k_pos.dtype is not torch.int64:
        return  # (narrower integers: widened by the callers; others: refused by the callers' own checks)
    if not (q_pos.is_cpu and k_pos.is_cpu) or torch.compiler.is_compiling():
        return
    if not q_pos.numel() or not k_pos.numel():
        return
    (q_lo, q_hi), (k_lo, k_hi) = _span(q_pos), _span(k_pos)
    far = max(k_hi - q_lo, q_hi - k_lo)
    if far > _INT64_TOP:
        raise ValueError(
            f"{owner}: positions {q_lo}..{q_hi} (queries) and {k_lo}..{k_hi} (keys) are up to {far} apart, past "
            f"what int64 holds ({_INT64_TOP}): the distances k - q would wrap around; use smaller positions "
            "(attention depends only on differences, so subtracting a common offset changes nothing)"
        )


_INT64_TOP = 2**63 - 1


def _span(t: Tensor) -> tuple[int, int]:
    """``(min, max)`` of a non-empty CPU integer tensor as Python ints."""
    if t.numel() == 1:
        p = int(t.reshape(()).item())
        return p, p
    lo, hi = torch.aminmax(t)
    return int(lo), int(hi)


__all__ = [
    "F32_MAX",
    "check_distances",
    "distance_positions",
    "wide_positions",
    "F32_TINY",
    "first_line",
    "ROPE_MAX_POSITION",
    "check_bool",
    "check_float",
    "check_int",
    "check_position_range",
    "check_table_size",
    "check_table_sizes",
    "host_memory",
    "as_index_positions",
    "check_hidden",
    "check_module_device",
    "check_positions",
    "check_rotatable",
]
