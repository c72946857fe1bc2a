"""RoPE angles stay exact far from zero: within 1e-6 of float64 at position 1,000,003, scaled or not."""

from __future__ import annotations

import math

import pytest
import torch

import posenc
from posenc.functional import apply_rope_reference

POSITIONS = torch.tensor([4_099, 65_537, 1_000_003, 10_000_019])
SCALINGS = [None, posenc.YaRNScaling(8.0, 4096), posenc.Llama3Scaling(8.0, 8192), posenc.LinearScaling(4.0)]


def float64_angles(inv_freq: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The reference: the product in float64, reduced mod 2*pi in exact-enough float64."""
    return positions.double()[:, None] * inv_freq.double()[None, :]  # (S, P)


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: "none" if s is None else s.rope_type)
@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_cos_sin_and_angles_within_1e6_of_float64(scaling: posenc.RopeScaling | None, base: float) -> None:
    rope = posenc.RoPE(128, base=base, scaling=scaling, cache_len=16)
    cos, sin = rope.cos_sin(
        len(POSITIONS), POSITIONS.unsqueeze(0), torch.device("cpu")
    )  # (1, 1, S, P) float32
    cos, sin = cos[0, 0].double() / rope.attention_scale, sin[0, 0].double() / rope.attention_scale
    ref = float64_angles(rope.inv_freq, POSITIONS)
    assert (cos - ref.cos()).abs().max().item() <= 1e-6
    assert (sin - ref.sin()).abs().max().item() <= 1e-6
    # the angle recovered from the float32 tables, compared on the circle
    diff = torch.atan2(sin, cos) - ref
    wrapped = torch.remainder(diff + math.pi, 2 * math.pi) - math.pi
    assert wrapped.abs().max().item() <= 1e-6


def test_rotation_at_a_million_matches_float64_reference() -> None:
    rope = posenc.RoPE(64, base=500000.0, cache_len=16)
    q = torch.randn(1, 2, len(POSITIONS), 64)
    out, _ = rope(q, q, POSITIONS)
    ref = apply_rope_reference(q.double(), float64_angles(rope.inv_freq, POSITIONS))
    assert (out.double() - ref).abs().max().item() <= 1e-5 * q.abs().max().item()


def test_float32_product_would_not_pass() -> None:
    """What the test guards against: transformers' float32 ``position * inv_freq`` errs by ~1e-2 at a million."""
    rope = posenc.RoPE(128, cache_len=16)
    naive = (POSITIONS.float()[:, None] * rope.inv_freq.float()[None, :]).double()
    err = (naive.cos() - float64_angles(rope.inv_freq, POSITIONS).cos()).abs()
    assert err[2].max().item() > 1e-3  # position 1,000,003
