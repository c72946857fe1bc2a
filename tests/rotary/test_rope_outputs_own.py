"""RoPE's outputs are tensors of their own (review s7): ``cos_sin`` returned views of the module's tables (an
in-place edit by the caller changed every later rotation, by up to 3.4), and small CPU calls returned the rotated
q and k as two views of one tensor (an in-place edit of q failed k's backward)."""

from __future__ import annotations

import pytest
import torch

import posenc


@pytest.mark.parametrize("positions", [None, torch.tensor([3]), torch.tensor([[1, 5, 9]])])
def test_cos_sin_are_copies(positions: torch.Tensor | None) -> None:
    rope = posenc.RoPE(8, cache_len=16)
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    before = rope(q, k)
    cos, sin = rope.cos_sin(3 if positions is None else positions.shape[-1], positions, "cpu")
    cos.mul_(2)
    sin.zero_()
    after = rope(q, k)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["auto", "reference", "compiled"])
def test_rotated_q_and_k_do_not_share_memory_and_take_in_place_edits(impl: str) -> None:
    rope = posenc.RoPE(8, impl=impl)
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    k = torch.randn(1, 2, 4, 8, requires_grad=True)
    qr, kr = rope(q, k)
    assert qr.untyped_storage().data_ptr() != kr.untyped_storage().data_ptr()
    w = torch.randn(8, 8)
    used = kr @ w
    qr.mul_(2)
    (used.sum() + qr.sum()).backward()
    assert q.grad is not None and k.grad is not None
