"""Absolute position tables.

Vaswani et al. 2017, "Attention Is All You Need", section 3.5:
``PE[p, 2i] = sin(p / base^(2i/dim))`` and ``PE[p, 2i+1] = cos(p / base^(2i/dim))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import check_float, check_int
from .rotary import phase_dtype


def sinusoidal_table(
    positions: Tensor, dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The sinusoidal encoding of ``positions``, computed in float64 (any position, no precomputed limit).

    Args:
        positions: ``(S,)`` or ``(B, S)`` positions.
        dim: model width; odd widths give the last even index its sine.
        base: wavelength base (> 0), 10000 in the paper.
        dtype: the table's dtype (the angles are float64 whatever it is, float32 on MPS).

    Returns:
        ``(..., S, dim)`` in ``dtype``: even dims sine, odd dims cosine, interleaved as in the paper.
    """
    dim = check_int("dim", dim, at_least=1, owner="sinusoidal_table")
    base = check_float("base", base, above=0, owner="sinusoidal_table")
    dt = phase_dtype(positions.device)
    even = torch.arange(0, dim, 2, device=positions.device, dtype=dt)  # (ceil(dim/2),) = 2i
    inv_freq = base ** (-even / dim)
    angles = positions.to(dt).unsqueeze(-1) * inv_freq  # (..., S, ceil(dim/2))
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., S, 2*ceil(dim/2))
    return table[..., :dim].to(dtype)
