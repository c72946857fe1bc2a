"""flex_kernel's cache key (flex.py) is the device type and the structure of *every* callable the
kernel is given: the score_mod (a bound method's owner type included) and the block mask's mask_mod."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import posenc
from posenc.attention import flex


class _A:
    def mod(self, score: torch.Tensor, b: Any, h: Any, q: Any, kv: Any) -> torch.Tensor:
        return score


class _B(_A):  # the same code object, another owner type
    pass


def test_a_bound_methods_owner_type_is_part_of_its_structure() -> None:
    assert flex.structure(_A().mod) == flex.structure(_A().mod)
    assert flex.structure(_A().mod) != flex.structure(_B().mod)
    cpu = torch.device("cpu")
    assert flex.flex_kernel(cpu, _A().mod) is flex.flex_kernel(cpu, _A().mod)
    assert flex.flex_kernel(cpu, _A().mod) is not flex.flex_kernel(cpu, _B().mod)


def test_each_device_type_gets_its_own_kernel() -> None:
    """torch.compile is lazy: no CUDA needed to ask for the CUDA kernel (CPU's is compiled with static shapes)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert flex.flex_kernel(cpu, None) is not flex.flex_kernel(cuda, None)
    assert flex.flex_kernel(cuda, None) is flex.flex_kernel(cuda, None)


def test_the_block_masks_mask_mod_is_passed_to_the_kernel_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """flex_attention_backend asks flex_kernel with the score_mod *and* the block mask's mask_mod."""
    seen: list[tuple[object, ...]] = []
    real = flex.flex_kernel

    def spy(device: torch.device, *callables: object) -> Any:
        seen.append(callables)
        return real(device, *callables)

    monkeypatch.setattr(flex, "flex_kernel", spy)
    attn = posenc.Attention(16, 4, position=posenc.build("alibi", heads=4), backend="flex").eval()
    x = torch.randn(1, 128, 16)  # a bucket length: no padding
    mask = torch.ones(1, 128, dtype=torch.bool)
    mask[0, :3] = False
    with torch.no_grad():
        attn(x, mask=mask)
    assert seen and len(seen[-1]) == 2 and callable(seen[-1][1])
    causal_only = flex.build_block_mask(128, 128, True, None, torch.device("cpu"))
    assert flex.structure(seen[-1][1]) != flex.structure(causal_only.mask_mod)
