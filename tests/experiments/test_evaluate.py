"""Evaluation: windowed perplexity against a slow reference, n/a past a learned table, RoPE extension swaps."""

from __future__ import annotations

import math
import re

import pytest
import torch

from posenc.experiments.dist import World
from posenc.experiments.evaluate import (
    eval_lengths,
    extension_perplexities,
    perplexities,
    perplexity,
    rope_extensions,
    rope_scaled,
    spread_blocks,
    supports_rope_extension,
    window_nll,
)
from posenc.experiments.train import TrainConfig, build_model
from posenc.rotary import RoPE

TINY = TrainConfig(dim=16, depth=2, heads=2, train_len=8, batch_size=4, steps=4)


def _tokens(n: int = 300) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)


def _reference_nll(model: torch.nn.Module, tokens: torch.Tensor, length: int, n_tokens: int) -> float:
    """One window at a time; every target scored with an explicit log-softmax over the vocabulary."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, n_tokens, length):
            window = tokens[start : start + length + 1].long()
            logp = model(window[None, :-1])[0].double().log_softmax(-1)  # (Lv, V)
            for t in range(length):
                total -= float(logp[t, window[t + 1]])
    return total


@pytest.mark.parametrize("name", ["none", "rope", "sinusoidal"])
@pytest.mark.parametrize("length", [8, 32])
def test_window_nll_matches_the_reference(name: str, length: int) -> None:
    model = build_model(name, TINY).eval()
    tokens = _tokens()
    nll, count = window_nll(model, tokens, length, 64, batch_tokens=40)
    assert count == 64
    assert nll == pytest.approx(_reference_nll(model, tokens, length, 64), rel=1e-5)


def test_windows_need_whole_lengths_and_enough_text() -> None:
    model = build_model("none", TINY).eval()
    with pytest.raises(ValueError, match="divide"):
        window_nll(model, _tokens(), 24, 64)
    with pytest.raises(ValueError, match="held-out bytes"):
        window_nll(model, _tokens(50), 8, 64)


def test_learned_is_na_beyond_its_table() -> None:
    model = build_model("learned", TINY)
    out = perplexities(model, _tokens(), eval_lengths(8, (1, 2, 4)), 64)
    assert out[8] is not None and out[16] is None and out[32] is None


def test_perplexity_of_uniform_guess_is_vocab_size() -> None:
    assert perplexity(64 * math.log(256), 64) == pytest.approx(256)
    assert perplexity(float("nan"), 4) == math.inf


def test_rope_scaled_swaps_and_restores() -> None:
    model = build_model("rope", TINY).eval()
    assert supports_rope_extension(model) and not supports_rope_extension(build_model("none", TINY))
    before = [b.attn.position for b in model.blocks]
    tokens = _tokens()
    plain, _ = window_nll(model, tokens, 32, 64)
    with rope_scaled(model, {"rope_type": "linear", "factor": 1.0}) as m:
        assert all(
            isinstance(b.attn.position, RoPE) and b.attn.position is not p
            for b, p in zip(m.blocks, before, strict=True)
        )
        same, _ = window_nll(m, tokens, 32, 64)
    x = torch.randn(1, 32, TINY.dim)
    with torch.no_grad():
        attn_plain = model.blocks[0].attn(x)
        with rope_scaled(model, {"rope_type": "linear", "factor": 4.0}) as m:
            attn_scaled = m.blocks[0].attn(x)
            assert m.blocks[0].attn.position.scaling is not None
    assert [b.attn.position for b in model.blocks] == before
    for name, found in [("alibi", "ALiBi"), ("sinusoidal", "Sinusoidal (on the embeddings)")]:
        with pytest.raises(
            TypeError, match=rf"context extension needs RoPE layers, found {re.escape(found)}$"
        ):
            rope_scaled(build_model(name, TINY), {"rope_type": "linear", "factor": 2.0})
    assert same == pytest.approx(plain, rel=1e-6)
    assert not torch.allclose(attn_plain, attn_scaled)
    torch.testing.assert_close(model.blocks[0].attn(x).detach(), attn_plain)


def test_extension_methods_are_detected_and_run() -> None:
    methods = rope_extensions()
    assert set(methods) <= {"linear", "ntk", "dynamic", "yarn"}
    if not methods:
        pytest.skip("posenc.rotary.scaling has no extension methods")
    model = build_model("rope", TINY).eval()
    lengths = eval_lengths(8, (1, 2, 4))
    plain = perplexities(model, _tokens(), lengths, 64)
    for method in methods:
        out = extension_perplexities(model, method, _tokens(), lengths, 8, 64, plain=plain)
        assert out[8] == plain[8] and all(v is not None and math.isfinite(v) for v in out.values())


class _Bigram(torch.nn.Module):
    """Logits that depend only on the input byte: the NLL of a target is a function of (previous byte, target),
    so a sum over windows equals the sum over the scored bytes whatever the windows, if each is scored once."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.randn(256, 256, generator=torch.Generator().manual_seed(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, S, 256)
        return self.table[x]


class _LocalRanks(World):
    """A rank of a world whose all-reduce is done by the test (sums each rank's share itself)."""

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t


def test_every_length_and_rank_split_scores_bytes_1_to_n_once() -> None:
    """The documented evaluation: at every length, and over ranks, the targets are bytes 1..n_tokens, each
    scored once (byte 0 is only context), and the perplexity is exp of their mean NLL. A rank past the last
    window scores nothing: it raised ``arange``'s 'upper bound and lower bound inconsistent' before, so
    ``torchrun --nproc_per_node 4 -m posenc compare --quick`` (2 windows at 16L) crashed."""
    model, tokens, n = _Bigram(), _tokens(), 64
    logp = model.table.double().log_softmax(-1)
    expected = -float(sum(logp[tokens[j - 1].long(), tokens[j].long()] for j in range(1, n + 1)))
    for length in (1, 8, 16, 32, 64):
        nll, count = window_nll(model, tokens, length, n, batch_tokens=24)
        assert count == n and nll == pytest.approx(expected, rel=1e-6), length
        shares = [window_nll(model, tokens, length, n, world=_LocalRanks(r, 3))[0] for r in range(3)]
        assert sum(shares) == pytest.approx(expected, rel=1e-6), length
    assert perplexity(expected, n) == pytest.approx(math.exp(expected / n))


def test_spread_blocks_sample_the_whole_text_without_overlap() -> None:
    """Blocks start at byte 0 and end at the last byte, evenly spaced; their scored bytes (all but each block's
    first) never overlap, down to blocks packed end to end; too little text is refused."""
    tokens = torch.arange(1000) % 251
    blocks = spread_blocks(tokens, 64, 4)
    assert blocks.shape == (4, 65)
    starts = [int(b[0]) for b in blocks]  # tokens[i] = i for i < 251: the first block at 0
    assert starts[0] == 0 and torch.equal(blocks[-1], tokens[-65:])
    for width, count, n in [(64, 4, 1000), (8, 5, 41), (16, 3, 49), (1, 7, 8), (32, 1, 33)]:
        text = torch.arange(n)
        got = spread_blocks(text, width, count)
        scored = got[:, 1:].flatten().tolist()
        assert len(set(scored)) == count * width and got[0, 0] == 0 and got[-1, -1] == n - 1
        assert all(torch.equal(row, text[row[0] : row[0] + width + 1]) for row in got)
    with pytest.raises(ValueError, match="cannot hold 5 blocks"):
        spread_blocks(torch.arange(40), 8, 5)
    with pytest.raises(ValueError, match="count >= 1"):
        spread_blocks(tokens, 8, 0)


def test_window_nll_on_blocks_scores_every_block_target_once() -> None:
    """On ``(R, W + 1)`` blocks every length and rank split scores each block's bytes 1..W once, predicted from
    that block's bytes only; one block of the first bytes is the 1-D call; mis-sized blocks are refused."""
    model, tokens = _Bigram(), _tokens(600)
    blocks = spread_blocks(tokens, 32, 3)
    logp = model.table.double().log_softmax(-1)
    expected = -float(sum(logp[b[j - 1].long(), b[j].long()] for b in blocks for j in range(1, 33)))
    for length in (1, 8, 16, 32):
        nll, count = window_nll(model, blocks, length, 96, batch_tokens=24)
        assert count == 96 and nll == pytest.approx(expected, rel=1e-6), length
        shares = [window_nll(model, blocks, length, 96, world=_LocalRanks(r, 4))[0] for r in range(4)]
        assert sum(shares) == pytest.approx(expected, rel=1e-6), length
    first = window_nll(model, tokens[:65].unsqueeze(0), 16, 64)
    assert first == window_nll(model, tokens, 16, 64)
    with pytest.raises(ValueError, match="R \\* W == n_tokens"):
        window_nll(model, blocks, 8, 64)
    with pytest.raises(ValueError, match="divide the block width"):
        window_nll(model, spread_blocks(tokens, 24, 2), 16, 48)
