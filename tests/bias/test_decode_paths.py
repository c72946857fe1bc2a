"""The per-token shortcuts of bias encodings: cached helpers are safe across autograd modes."""

from __future__ import annotations

import pytest
import torch

import posenc


@pytest.mark.parametrize("name", ["alibi", "kerple", "t5", "fire"])
def test_head_index_cached_in_inference_mode_still_trains(name: str) -> None:
    """The CPU head index is kept between calls; built first under ``inference_mode`` it must still be usable
    by a later call that autograd records (an inference tensor there would raise)."""
    torch.manual_seed(0)
    enc = posenc.build(name, heads=4)
    q = torch.randn(1, 4, 1, 8)
    q_pos, k_pos = torch.tensor([[5]]), torch.arange(6)[None]
    with torch.inference_mode():
        first = enc.score_bias(q, q_pos, k_pos)
    again = enc.score_bias(q, q_pos, k_pos)
    assert torch.equal(first, again)
    if any(p.requires_grad for p in enc.parameters()):
        again.sum().backward()
        assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
