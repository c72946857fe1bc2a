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


@pytest.mark.parametrize("batch", [1, 3])
def test_fire_one_query_path_equals_the_formula(batch: int) -> None:
    """FIRE's one-query branch of ``pairwise`` (a decode step) against the elementwise formula."""
    torch.manual_seed(0)
    fire = posenc.FIRE(4, init_threshold=8.0)
    k_pos = torch.arange(20).expand(batch, -1) + torch.arange(batch)[:, None] * 7  # (B, K), per-row offsets
    q_pos = k_pos[:, -1:]  # (B, 1), past the threshold for later rows
    got = fire.pairwise(q_pos, k_pos)  # (B, H, 1, K)
    want = fire.pairwise_reference(q_pos, k_pos)
    assert got.shape == (batch, 4, 1, 20)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    both = fire.pairwise(torch.cat((q_pos - 1, q_pos), dim=1), k_pos)  # two queries: the general branch
    torch.testing.assert_close(both[:, :, 1:], got, atol=1e-6, rtol=1e-6)
