"""Kerple: ``-r1 log(1 + r2 |i - j|)`` and the power kernel, positive parameters."""

from __future__ import annotations

import pytest
import torch

import posenc


def test_log_kernel_formula_both_directions() -> None:
    enc = posenc.Kerple(3)
    with torch.no_grad():
        enc.r1.copy_(torch.tensor([0.5, 1.0, 2.0]))
        enc.r2.copy_(torch.tensor([0.1, 1.0, 3.0]))
    d = (torch.arange(2, 6)[:, None] - torch.arange(8)[None, :]).abs().float()  # queries at offset 2
    expected = -enc.r1.detach()[:, None, None] * torch.log(1 + enc.r2.detach()[:, None, None] * d)
    torch.testing.assert_close(enc.bias(4, 8, offset=2), expected)


def test_power_kernel_and_clamping() -> None:
    enc = posenc.build("kerple", heads=2, kind="power")
    with torch.no_grad():
        enc.r1.copy_(torch.tensor([-1.0, 1.0]))  # clamped to eps
        enc.r2.copy_(torch.tensor([0.5, 5.0]))  # clamped to 2
    d = torch.arange(6).float()
    bias = enc.bias(1, 6, offset=5)[:, 0].flip(-1)  # distances 0..5
    torch.testing.assert_close(bias, torch.stack((-1e-2 * d.sqrt(), -(d**2))))
    assert (enc.bias(4, 4) <= 0).all()


def test_gradients_and_errors() -> None:
    enc = posenc.Kerple(2)
    enc.bias(4, 4).sum().backward()
    assert enc.r1.grad is not None and enc.r2.grad is not None
    with pytest.raises(ValueError, match="kind"):
        posenc.Kerple(2, kind="exp")


def test_an_eps_past_float32_is_refused() -> None:
    """Kerple(eps=1e39) was built, then failed at the first call in clamp (fuzz #4)."""
    with pytest.raises(ValueError, match=r"Kerple: eps must be <= 3.40282e\+38, got 1e\+39"):
        posenc.Kerple(2, eps=1e39)
