"""CPU ``flex`` runs causal calls at bucketed lengths: many lengths, few compiles, the same answers."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc.attention import BACKENDS
from posenc.attention.flex import BLOCK, cpu_bucket, pads_to_bucket
from posenc.attention.inputs import AttentionInputs

BIAS = posenc.available(family="bias")  # every encoding whose score_mod runs in flex


def test_buckets_are_block_multiples_at_most_an_eighth_longer_and_eight_per_octave() -> None:
    for n in range(1, 20_000):
        b = cpu_bucket(n)
        assert b >= n and b % BLOCK == 0 and b - n < max(BLOCK, n / 8)
        assert cpu_bucket(b) == b  # a bucket runs as it is
    shapes = [len({cpu_bucket(n) for n in range(1, 2**k)}) for k in range(10, 16)]  # lengths below 2^k
    assert shapes == [8, 16, 24, 32, 40, 48]  # eight more per octave


def _ctx(
    n: int, k: int | None = None, causal: bool = True, keep: torch.Tensor | None = None
) -> AttentionInputs:
    pos = torch.arange(n)[None]
    kpos = pos if k is None else torch.arange(k)[None]
    return AttentionInputs(posenc.ALiBi(2), pos, kpos, keep, causal)


def test_calls_whose_padded_keys_can_be_hidden_are_padded() -> None:
    q = torch.zeros(1, 2, 130, 8)
    keep = torch.ones(1, 1, 1, 130, dtype=torch.bool)
    assert pads_to_bucket(q, q, _ctx(130))
    assert pads_to_bucket(q, q, _ctx(130, keep=keep))
    assert pads_to_bucket(q, q, _ctx(130, causal=False, keep=keep))  # the keep-mask hides the padded keys
    k = torch.zeros(1, 2, 140, 8)
    assert pads_to_bucket(q, k, _ctx(130, 140))  # queries at a cache offset: the shift is kept
    assert not pads_to_bucket(q[:, :, :128], q[:, :, :128], _ctx(128))  # a bucket already
    assert not pads_to_bucket(q, q, _ctx(130, causal=False))  # nothing would hide the padded keys


def flex_matches_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionInputs) -> None:
    with torch.no_grad():
        out = BACKENDS.get("flex")(q, k, v, ctx)
        ref = BACKENDS.get("math")(q, k, v, ctx)
    assert out.shape == q.shape  # (B, H, Q, D): the padded rows dropped
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", BIAS)
def test_lengths_of_one_bucket_share_one_compiled_kernel_and_match_math(name: str) -> None:
    torch.manual_seed(0)
    enc = posenc.build(name, dim=16, heads=2).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.rand_like(p) * 0.3)  # off the initialization, so every term counts
    counters = torch._dynamo.utils.counters
    before = counters["stats"]["unique_graphs"]
    for n, start in ((130, 0), (200, 1000), (256, 7)):  # buckets: 256 each
        q, k, v = (torch.randn(2, 2, n, 8) for _ in range(3))
        pos = torch.arange(start, start + n)[None].expand(2, n).clone()
        pos[1] += 37  # per-row positions
        flex_matches_math(q, k, v, AttentionInputs(enc, pos, pos, None, True))
    assert counters["stats"]["unique_graphs"] - before <= 1  # one compile (none if an earlier test made it)


@pytest.mark.parametrize("name", BIAS)
def test_prefills_into_cache_slots_share_one_compiled_kernel_and_match_math(name: str) -> None:
    """A generate prefill: S prompt tokens (left padding in one row) into S + 20 slots, the unwritten slots and
    the padding hidden by the keep-mask; prompts of 130 and 200 tokens run at one shape."""
    torch.manual_seed(1)
    enc = posenc.build(name, dim=16, heads=2).eval()
    counters = torch._dynamo.utils.counters
    before = counters["stats"]["unique_graphs"]
    for s in (130, 200):
        slots = s + 20
        q = torch.randn(2, 2, s, 8)
        k, v = torch.randn(2, 1, slots, 8), torch.randn(2, 1, slots, 8)  # GQA: one key head
        q_pos = torch.arange(s)[None].repeat(2, 1)
        q_pos[1] = (q_pos[1] - 5).clamp(min=0)  # row 1: five padding tokens first
        k_pos = torch.cat((q_pos, torch.zeros(2, 20, dtype=torch.long)), dim=-1)  # unwritten slots
        keep = (
            torch.arange(slots)[None, None, None, :] <= torch.arange(s)[None, None, :, None]
        )  # written by then
        keep = keep & (torch.arange(slots) >= torch.tensor([[0], [5]]))[:, None, None, :]  # (2, 1, S, slots)
        flex_matches_math(q, k, v, AttentionInputs(enc, q_pos, k_pos, keep, True))
    assert counters["stats"]["unique_graphs"] - before <= 1
