"""Rotary position embedding (RoPE) math: frequencies, phases and the rotation itself.

Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding". A vector is split into
``rotary_dim / 2`` pairs; pair ``i`` at position ``m`` is rotated by the angle ``m * theta_i`` with
``theta_i = base^(-2i / rotary_dim)``. Two pair layouts are in use:

* half (``interleaved=False``, GPT-NeoX, Llama in transformers): pair ``i`` is ``(x[i], x[i + r/2])``;
* interleaved (``interleaved=True``, the paper, GPT-J): pair ``i`` is ``(x[2i], x[2i + 1])``.

Shape key: ``B`` batch, ``H`` heads, ``S`` sequence, ``D`` head_dim, ``R`` rotary_dim (even, ``<= D``),
``P = R / 2`` pairs.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ..validation import check_bool, check_float, check_int


def phase_dtype(device: torch.device) -> torch.dtype:
    """The dtype used for phase math (angles) on ``device``: float64 wherever the device supports it."""
    if not isinstance(device, torch.device):
        raise TypeError(
            f"phase_dtype: device must be a torch.device, got {device!r} ({type(device).__name__})"
        )
    return torch.float32 if device.type == "mps" else torch.float64


def check_rotary_dim(rotary_dim: int, head_dim: int | None = None) -> int:
    """``rotary_dim`` as an ``int``: ``TypeError`` unless it is an integer (numpy and 0-d tensor integers too),
    ``ValueError`` unless it is a positive even number no larger than ``head_dim``."""
    rotary_dim = check_int("rotary_dim", rotary_dim)
    if head_dim is not None:
        head_dim = check_int("head_dim", head_dim)
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(
            f"rotary_dim must be a positive even integer (dimensions are rotated in pairs), got {rotary_dim!r}"
        )
    if head_dim is not None and rotary_dim > head_dim:
        raise ValueError(f"rotary_dim ({rotary_dim}) must not exceed head_dim ({head_dim})")
    return rotary_dim


def rope_inv_freq(
    rotary_dim: int,
    base: float = 10000.0,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Per-pair frequencies ``theta_i = base^(-2i / rotary_dim)``.

    Returns:
        ``(P,)`` tensor, float64 unless ``dtype`` says otherwise.
    """
    rotary_dim = check_rotary_dim(rotary_dim)
    if isinstance(base, bool) or not isinstance(base, (numbers.Real, Tensor)):
        raise TypeError(f"RoPE base must be a number, got {base!r}")
    if not isinstance(base, Tensor):
        check_float("base", base, owner="rope_inv_freq")  # finite (10**400 too: a ValueError, not overflow)
    elif base.is_meta or torch.compiler.is_compiling():
        pass  # no value to check (it was a float before it became a tensor)
    elif not bool(torch.isfinite(base).all()):  # (a tensor's comparison below syncs anyway)
        raise ValueError(f"RoPE base must be a finite number > 1, got {base}")
    if not isinstance(base, Tensor) or not (base.is_meta or torch.compiler.is_compiling()):
        if base <= 1.0:
            raise ValueError(f"RoPE base must be > 1, got {base}")
    dev = torch.device("cpu") if device is None else torch.device(device)
    dt = phase_dtype(dev) if dtype is None else dtype
    exponent = torch.arange(0, rotary_dim, 2, device=dev, dtype=dt) / rotary_dim
    return 1.0 / (base**exponent)


def rope_angles(positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Angles ``m * theta_i`` computed in float64 (float32 on devices without it), reduced mod 2*pi.

    Args:
        positions: ``(S,)`` or ``(B, S)`` integer (or float, for interpolated) positions.
        inv_freq: ``(P,)`` frequencies.

    Returns:
        ``(..., S, P)`` angles in the phase dtype, in ``[-pi, pi)`` so that a float32 cos/sin afterwards stays
        exact to float32 rounding (within 2e-7 for |position| <= 2**31, see ``ROPE_MAX_POSITION``).
    """
    dt = phase_dtype(inv_freq.device)
    angles = positions.to(dt).unsqueeze(-1) * inv_freq.to(dt)
    two_pi = 2.0 * torch.pi
    return torch.remainder(angles + torch.pi, two_pi) - torch.pi


def rope_cos_sin(
    positions: Tensor, inv_freq: Tensor, *, scale: float = 1.0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """cos and sin tables for ``positions``: ``(..., S, P)`` each, in ``dtype`` (float32 by default).

    ``scale`` multiplies both (YaRN's attention temperature folds in here): a finite number. ``dtype``: a
    floating-point dtype.
    """
    if scale != 1.0 and not (isinstance(scale, float) and math.isfinite(scale)):  # (1.0: no call, per token)
        check_float("scale", scale, owner="rope_cos_sin")
    if not dtype.is_floating_point:
        raise TypeError(f"rope_cos_sin: dtype must be a floating-point dtype, got {dtype}")
    angles = rope_angles(positions, inv_freq)
    cos, sin = angles.cos(), angles.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype), sin.to(dtype)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate the first ``R = 2 * cos.shape[-1]`` dims of ``x`` by the angles behind ``cos``/``sin``.

    The rotation is done in float32 (float64 for float64 input); the result has ``x``'s dtype. Dims past
    ``R`` pass through unchanged (partial rotary).

    Args:
        x: ``(B, H, S, D)`` (any leading dims) queries or keys.
        cos: ``(..., S, P)`` broadcastable to ``(B, H, S, P)``, e.g. ``(S, P)`` or ``(B, 1, S, P)``.
        sin: same shape as ``cos``.
        interleaved: pair layout, see the module docstring.

    Returns:
        Tensor shaped like ``x``.
    """
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"apply_rope: x must be a floating-point tensor (..., S, D), got {got}")
    if interleaved is not False and interleaved is not True:
        check_bool("interleaved", interleaved, owner="apply_rope")
    if x.dim() == 0:
        raise ValueError("apply_rope: x must be (..., S, D), got a 0-d tensor")
    if cos.shape != sin.shape:
        raise ValueError(
            f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    rot = 2 * cos.shape[-1]
    if rot > x.shape[-1]:
        raise ValueError(f"cos/sin cover {rot} rotary dims but x has only {x.shape[-1]} (last dim)")
    dt = _compute_dtype(x)
    xr, rest = x[..., :rot].to(dt), x[..., rot:]
    c, s = cos.to(dt), sin.to(dt)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]  # (..., S, P) each
        out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)  # (..., S, R)
    else:
        x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]  # (..., S, P) each
        out = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)  # (..., S, R)
    out = out.to(x.dtype)
    _check_shape("apply_rope", out.shape[:-1], x, cos)
    return out if rest.shape[-1] == 0 else torch.cat((out, rest), dim=-1)


def _check_shape(owner: str, got: torch.Size, x: Tensor, table: Tensor) -> None:
    """Refuse tables that broadcast ``x`` to another shape (more positions or rows than ``x`` has): the result
    must be shaped like ``x``. A check after the arithmetic costs a shape comparison, not a broadcast."""
    if got != x.shape[:-1]:
        raise ValueError(
            f"{owner}: tables of shape {tuple(table.shape)} do not fit x of shape {tuple(x.shape)} (the result would "
            f"be {(*got, x.shape[-1])}); their leading dims must broadcast to x's, e.g. (S, R/2) or (B, 1, S, R/2) "
            "for x (B, H, S, D)"
        )


def rope_full_tables(cos: Tensor, sin: Tensor, interleaved: bool = False) -> tuple[Tensor, Tensor]:
    """Full-width tables for :func:`apply_rope_full`: ``(..., P)`` cos/sin -> ``(..., R)`` ``cos_full``, ``sin_rot``.

    ``cos_full`` holds each pair's cosine on both members; ``sin_rot`` its sine with the sign of the rotation
    folded in (``-sin`` on the first member, ``+sin`` on the second), in the pair layout of ``interleaved``.
    """
    if interleaved:
        return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope_full(x: Tensor, cos_full: Tensor, sin_rot: Tensor, interleaved: bool = False) -> Tensor:
    """:func:`apply_rope` for ``R = D`` in four elementwise passes: ``x * cos_full + swap(x) * sin_rot``.

    ``swap`` exchanges the members of each pair (a roll by ``P`` for the half layout, a flip of each pair for
    the interleaved one). Every output element is the same IEEE sum of the same two products as in
    :func:`apply_rope` (``a*c - b*s == a*c + b*(-s)`` exactly), so the results are bitwise equal. In eager
    mode on more than one position it is the fastest of the three forms (forward and backward: the pair
    form's sum over a dimension of two is a slow reduction there).

    Args:
        x: ``(..., S, D)``; cos_full, sin_rot: ``(..., S, D)`` broadcastable, from :func:`rope_full_tables`.
    """
    if cos_full.shape[-1] != x.shape[-1]:
        raise ValueError(f"full-width tables cover {cos_full.shape[-1]} dims but x has {x.shape[-1]}")
    dt = _compute_dtype(x)
    xr = x if x.dtype == dt else x.to(dt)
    if cos_full.dtype != dt:
        cos_full, sin_rot = cos_full.to(dt), sin_rot.to(dt)
    if interleaved:
        swapped = xr.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    else:
        swapped = xr.roll(x.shape[-1] // 2, dims=-1)  # (x2, x1)
    out = xr * cos_full + swapped * sin_rot
    _check_shape("apply_rope_full", out.shape[:-1], x, cos_full)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def rope_pair_tables(cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Each pair's rotation matrix ``[[cos, -sin], [sin, cos]]``, laid out for :func:`apply_rope_pairs`.

    Args:
        cos, sin: ``(..., P)``.

    Returns:
        ``(..., 2, 2, P)`` indexed ``[i, j, p]`` for the half layout, ``(..., P, 2, 2)`` indexed ``[p, i, j]`` for
        the interleaved one: output member ``i`` of pair ``p`` is ``sum_j m[i, j] * x_j``. As much memory as
        the cos and sin tables of full width.
    """
    if interleaved:
        return torch.stack((torch.stack((cos, -sin), dim=-1), torch.stack((sin, cos), dim=-1)), dim=-2)
    return torch.stack((torch.stack((cos, -sin), dim=-2), torch.stack((sin, cos), dim=-2)), dim=-3)


def apply_rope_pairs(x: Tensor, m: Tensor, interleaved: bool = False) -> Tensor:
    """:func:`apply_rope` for ``R = D`` in two elementwise passes: a product with each pair's matrix, then a sum.

    Every output element is the same IEEE sum of the same two products as in :func:`apply_rope`
    (``a*c - b*s == a*c + b*(-s)`` exactly, and a sum of two terms is one addition), so the results are
    bitwise equal; only the number of calls drops (two instead of six), which is what a one-token decode
    step pays for. In eager mode on many positions :func:`apply_rope_full` is faster (the sum here is a
    reduction kernel), and so is :func:`apply_rope` under ``torch.compile``: inductor's CPU backend turns the
    sum over a dimension of two into scalar loops.

    Args:
        x: ``(..., S, D)``.
        m: from :func:`rope_pair_tables`: ``(..., S, 2, 2, D/2)`` (half layout) or ``(..., S, D/2, 2, 2)``
            (interleaved), broadcastable against ``x``; one position's ``(2, 2, D/2)`` serves any ``S``.
    """
    if 2 * m.shape[-3 if interleaved else -1] != x.shape[-1]:
        raise ValueError(
            f"pair tables cover {2 * m.shape[-3 if interleaved else -1]} dims but x has {x.shape[-1]}"
        )
    dt = _compute_dtype(x)
    out = pair_matvec(x if x.dtype == dt else x.to(dt), m if m.dtype == dt else m.to(dt), interleaved)
    _check_shape("apply_rope_pairs", out.shape[:-1], x, m)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def pair_matvec(x: Tensor, m: Tensor, interleaved: bool) -> Tensor:
    """Each pair of ``x`` times its 2x2 matrix in ``m`` (a product, then a sum over the pair's members): the
    arithmetic of :func:`apply_rope_pairs`, unchecked (``x`` and ``m`` of one dtype, shapes that fit)."""
    # the pair's two products added as one sum ``a + b``, as the reference does (``.sum`` starts from +0.0: a
    # -0.0 result came out +0.0)
    if interleaved:
        a, b = (x.unflatten(-1, (x.shape[-1] // 2, 1, 2)) * m).unbind(
            -1
        )  # (..., S, P, 2, 2) -> 2 x (..., S, P, 2)
    else:
        a, b = (x.unflatten(-1, (1, 2, x.shape[-1] // 2)) * m).unbind(
            -2
        )  # (..., S, 2, 2, P) -> 2 x (..., S, 2, P)
    return (a + b).flatten(-2)  # (..., S, D)


def apply_rope_reference(x: Tensor, angles: Tensor, interleaved: bool = False) -> Tensor:
    """The obvious definition, for tests: multiply each pair, seen as a complex number, by ``e^(i*angle)``.

    Args:
        x: ``(..., S, D)``.
        angles: ``(..., S, P)`` broadcastable, any real dtype.
    """
    rot = 2 * angles.shape[-1]
    xr = x[..., :rot].to(torch.float64, copy=True)  # (a copy: a view at an odd offset has no complex view)
    if interleaved:
        pairs = xr.reshape(*xr.shape[:-1], rot // 2, 2)  # (..., S, P, 2): (x[2i], x[2i+1])
    else:
        pairs = torch.stack((xr[..., : rot // 2], xr[..., rot // 2 :]), dim=-1)  # (..., S, P, 2)
    z = torch.view_as_complex(pairs.contiguous()) * torch.polar(
        torch.ones_like(angles, dtype=torch.float64), angles.to(torch.float64)
    )
    out = torch.view_as_real(z)  # (..., S, P, 2)
    out = out.flatten(-2) if interleaved else torch.cat((out[..., 0], out[..., 1]), dim=-1)
    _check_shape("apply_rope_reference", out.shape[:-1], x, angles)
    return torch.cat((out.to(x.dtype), x[..., rot:]), dim=-1)


def interleaved_permutation(rotary_dim: int, head_dim: int | None = None) -> Tensor:
    """Index ``perm`` with ``half_layout_vector = interleaved_layout_vector[perm]`` (dims past R fixed)."""
    check_rotary_dim(rotary_dim, head_dim)
    perm = torch.cat((torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2)))
    if head_dim is not None:
        perm = torch.cat((perm, torch.arange(rotary_dim, head_dim)))
    return perm
