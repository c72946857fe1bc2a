"""The torch.compile-generated RoPE kernel against the reference ``apply_rope``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc.functional import apply_rope, apply_rope_reference, rope_angles, rope_cos_sin, rope_inv_freq
from posenc.kernels import rope_qk
from posenc.kernels.compiled import rotate_pairs


@given(
    half_rot=st.integers(1, 6),
    extra=st.integers(0, 3),
    seq=st.integers(1, 5),
    interleaved=st.booleans(),
    per_batch=st.booleans(),
)
def test_rotate_pairs_is_the_rotation(
    half_rot: int, extra: int, seq: int, interleaved: bool, per_batch: bool
) -> None:
    """The math the kernel is compiled from, run eagerly, equals the complex-number definition."""
    rot, dim = 2 * half_rot, 2 * half_rot + extra
    x = torch.randn(2, 3, seq, dim)
    positions = torch.randint(0, 10_000, (2, seq)) if per_batch else torch.arange(seq)
    inv_freq = rope_inv_freq(rot)
    cos, sin = rope_cos_sin(positions, inv_freq)
    angles = rope_angles(positions, inv_freq)
    if per_batch:
        cos, sin, angles = cos.unsqueeze(1), sin.unsqueeze(1), angles.unsqueeze(1)
    got = rotate_pairs(x, cos, sin, interleaved)
    torch.testing.assert_close(got, apply_rope_reference(x, angles, interleaved), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, apply_rope(x, cos, sin, interleaved), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "interleaved", "rot", "per_batch"),
    [(torch.float32, False, 16, False), (torch.float32, True, 10, True), (torch.bfloat16, False, 16, True)],
)
def test_compiled_forward_and_grad_match_reference(
    dtype: torch.dtype, interleaved: bool, rot: int, per_batch: bool
) -> None:
    b, h, g, s, d = 2, 4, 2, 6, 16
    q = torch.randn(b, s, h, d, dtype=dtype).transpose(1, 2).requires_grad_()  # strided, as in Attention
    k = torch.randn(b, s, g, d, dtype=dtype).transpose(1, 2).requires_grad_()
    positions = torch.randint(0, 4096, (b, s)) if per_batch else torch.arange(s) + 7
    cos, sin = rope_cos_sin(positions, rope_inv_freq(rot))
    if per_batch:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    out = rope_qk(q, k, cos, sin, interleaved, impl="compiled")
    ref = (apply_rope(q, cos, sin, interleaved), apply_rope(k, cos, sin, interleaved))
    grads = (torch.randn_like(out[0]), torch.randn_like(out[1]))
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    got_all = (*out, *torch.autograd.grad(out, (q, k), grads))
    want_all = (*ref, *torch.autograd.grad(ref, (q, k), grads))
    for got, want in zip(got_all, want_all, strict=True):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("interleaved", [False, True])
def test_float64_input_is_rotated_in_float64(interleaved: bool) -> None:
    """rotate_pairs: "math in float32 (float64 for float64 input)". The math the kernel is compiled from equals
    the float64 reference to float64 rounding (float32 math is off by about 1e-7 here). Run eagerly: compiling a
    float64 variant costs seconds, and the compiled kernel is this function."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 64, 16, dtype=torch.float64)
    angles = rope_angles(torch.arange(64) * 997, rope_inv_freq(12)).double()  # (S, 6): 4 dims pass through
    cos, sin = angles.cos(), angles.sin()
    got = rotate_pairs(x, cos, sin, interleaved)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, apply_rope(x, cos, sin, interleaved), rtol=0, atol=1e-13)
