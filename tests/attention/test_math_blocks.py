"""``math`` without gradients attends a block of queries at a time past ``MATH_BLOCK_BYTES`` (Shaw, which needs the
weights, took an ``(H, 16L, 16L)`` tensor per layer at evaluation: ~70 GB at 16L = 32,768). Blocks must give what
the whole call gives, for every encoding, mask, cache offset and layout (review s7)."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc import Attention, KVCache
from posenc.attention import backends
from posenc.attention.memory import call_bytes

NAMES = ["none", "rope", "alibi", "t5", "kerple", "fire", "shaw", "xpos"]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Query rows of each unblocked call (``_math``), and blocks of about 3 query rows at the shapes below."""
    seen: list[int] = []
    real = backends._math

    def spy(q: torch.Tensor, *args: object) -> torch.Tensor:
        seen.append(q.shape[-2])
        return real(q, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(backends, "_math", spy)
    return seen


def whole_and_blocks(
    monkeypatch: pytest.MonkeyPatch, run: object, block_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    monkeypatch.setattr(backends, "MATH_BLOCK_BYTES", 1 << 60)
    whole = run()  # type: ignore[operator]
    monkeypatch.setattr(backends, "MATH_BLOCK_BYTES", block_bytes)
    return whole, run()  # type: ignore[operator]


def layer(name: str, causal: bool = True, kv_heads: int = 2, dtype: torch.dtype = torch.float32) -> Attention:
    torch.manual_seed(0)
    enc = posenc.build(name, heads=4, head_dim=8)
    return Attention(32, 4, kv_heads=kv_heads, position=enc, backend="math", causal=causal).to(dtype).eval()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [True, False])
def test_blocks_equal_the_whole_call(
    name: str, causal: bool, monkeypatch: pytest.MonkeyPatch, calls: list[int]
) -> None:
    if not causal and name in ("xpos", "t5"):
        pytest.skip("causal only (T5: unless built bidirectional)")
    attn, x = layer(name, causal), torch.randn(2, 13, 32)
    with torch.no_grad():
        whole, blocks = whole_and_blocks(monkeypatch, lambda: attn(x), 2 * 4 * 13 * 4 * 3)
    assert calls[0] == 13 and calls[1:] == [3, 3, 3, 3, 1]
    torch.testing.assert_close(blocks, whole, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["shaw", "alibi", "fire"])
def test_blocks_in_float64_agree_to_float64_rounding(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    attn, x = layer(name, dtype=torch.float64), torch.randn(1, 17, 32, dtype=torch.float64)
    with torch.no_grad():
        whole, blocks = whole_and_blocks(monkeypatch, lambda: attn(x), 4 * 17 * 8 * 2)
    torch.testing.assert_close(blocks, whole, atol=1e-13, rtol=1e-12)


@pytest.mark.parametrize("name", ["shaw", "alibi", "rope"])
def test_blocks_with_a_cache_a_padding_mask_and_explicit_positions(
    name: str, monkeypatch: pytest.MonkeyPatch, calls: list[int]
) -> None:
    """Queries after 6 cached keys (K > Q: each block sees ``end + K - Q`` keys), per-row positions, a mask that
    hides row 1's first keys: each block takes its rows of the mask and of the positions."""
    attn = layer(name)
    first, second = torch.randn(2, 6, 32), torch.randn(2, 9, 32)
    keep = torch.ones(2, 15, dtype=torch.bool)
    keep[1, :4] = False
    positions = torch.arange(6, 15).expand(2, 9) + torch.tensor([[0], [100]])

    def run() -> torch.Tensor:
        cache = KVCache()
        attn(first, cache=cache, positions=torch.arange(6).expand(2, 6) + torch.tensor([[0], [100]]))
        return attn(second, cache=cache, positions=positions, mask=keep)

    with torch.no_grad():
        whole, blocks = whole_and_blocks(monkeypatch, run, 2 * 4 * 15 * 4 * 2)
    assert 2 in calls  # (the second call in blocks of two queries)
    torch.testing.assert_close(blocks, whole, atol=2e-6, rtol=1e-5)


def test_a_full_4d_mask_is_sliced_by_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    attn, x = layer("shaw", causal=False), torch.randn(2, 11, 32)
    torch.manual_seed(1)
    keep = torch.rand(2, 1, 11, 11) > 0.3
    keep[0, 0, 4] = False  # a row that sees nothing: 0, in blocks too
    with torch.no_grad():
        whole, blocks = whole_and_blocks(monkeypatch, lambda: attn(x, mask=keep), 2 * 4 * 11 * 4 * 3)
    assert (
        whole[0, 4].abs().max() == 0 == blocks[0, 4].abs().max()
    )  # (no projection bias: a zero row stays 0)
    torch.testing.assert_close(blocks, whole, atol=2e-6, rtol=1e-5)


def test_no_blocks_where_gradients_are_wanted(monkeypatch: pytest.MonkeyPatch, calls: list[int]) -> None:
    monkeypatch.setattr(backends, "MATH_BLOCK_BYTES", 64)
    attn, x = layer("shaw"), torch.randn(1, 9, 32, requires_grad=True)
    attn(x).sum().backward()
    assert calls == [9]
    with torch.no_grad():
        attn(x)
    assert calls[1:] == [1] * 9


def test_the_memory_estimate_counts_one_block() -> None:
    attn = layer("shaw")
    cpu = torch.device("cpu")

    def need(q: int, grad: bool = False) -> int:
        return call_bytes(attn, 1, q, q, dtype=torch.float32, device=cpu, grad=grad, masked=False)

    rows = backends.MATH_BLOCK_BYTES // (4 * 32768 * 4)
    assert need(32768) == 32768 * rows * (need(64) // 64**2)  # one block of rows, not the whole square
    assert need(32768, grad=True) == need(64, grad=True) // 64**2 * 32768**2  # (training: every row is kept)
    assert need(32768) < 2**31
