"""What a KV cache keeps of its caller's tensors (review s7): its own copy of the positions (a caller that
advanced its positions tensor in place for the next chunk changed the cached keys' positions: bias encodings
then attended at wrong distances, off by up to 0.23), and writes that never break backward (with the key and
value projections frozen and the queries trained, a preallocated cache wrote in place over keys the previous
step had saved)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import posenc
from posenc import Attention, KVCache
from posenc.attention.static_cache import StaticKVCache
from posenc.models import TransformerLM


def _layer(name: str) -> Attention:
    torch.manual_seed(0)
    enc = posenc.build(name, heads=2, head_dim=8)
    return Attention(16, 2, position=enc, backend="math").eval()


@pytest.mark.parametrize("name", ["alibi", "t5", "kerple", "fire", "shaw", "rope"])
@pytest.mark.parametrize("max_len", [None, 10])
@pytest.mark.parametrize("grad", [False, True])
def test_positions_advanced_in_place_do_not_move_cached_keys(
    name: str, max_len: int | None, grad: bool
) -> None:
    attn, x = _layer(name), torch.randn(1, 6, 16)
    with torch.set_grad_enabled(grad):
        full = attn(x)[:, 3:]
        cache, pos = KVCache(max_len=max_len), torch.arange(3).unsqueeze(0)
        attn(x[:, :3], positions=pos, cache=cache)
        pos += 3  # the next chunk's positions, in the same tensor
        out = attn(x[:, 3:], positions=pos, cache=cache)
    assert cache.positions is not None and cache.positions[0, :6].tolist() == [0, 1, 2, 3, 4, 5]
    torch.testing.assert_close(out, full, atol=1e-6, rtol=1e-5)


def test_a_model_decoding_with_one_positions_tensor() -> None:
    torch.manual_seed(0)
    model = TransformerLM("alibi", dim=16, depth=2, heads=2).eval()
    tokens = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        full = model(tokens)[:, -1]
        caches, pos = model.new_caches(), torch.arange(4).unsqueeze(0)
        model(tokens[:, :4], positions=pos, caches=caches)
        pos.fill_(4)[:, 1:] = -1  # reused in place, as a loop's buffer
        last = model(tokens[:, 4:], positions=pos[:, :1], caches=caches)[:, -1]
    torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-5)


CACHES: dict[str, Callable[[], KVCache]] = {
    "growing": KVCache,
    "preallocated": lambda: KVCache(max_len=4),
    "static": lambda: StaticKVCache(4),
}


@pytest.mark.parametrize("name", ["rope", "alibi", "none"])
@pytest.mark.parametrize("kind", list(CACHES))
def test_backward_through_steps_with_frozen_key_and_value_projections(name: str, kind: str) -> None:
    """Only the queries train (LoRA on q, prefix tuning): the keys are still saved for q's gradient."""
    torch.manual_seed(0)
    attn = Attention(16, 2, position=posenc.build(name, heads=2, head_dim=8), backend="math")
    for p in (*attn.k_proj.parameters(), *attn.v_proj.parameters()):
        p.requires_grad_(False)
    x = torch.randn(1, 2, 16)
    cache, outs = CACHES[kind](), []
    for i in range(2):
        options = {}
        if isinstance(cache, StaticKVCache):
            options = {
                "positions": torch.tensor([i]),
                "mask": cache.keep_mask(torch.ones(1, 4, dtype=torch.bool), 1),
            }
        outs.append(attn(x[:, i : i + 1], cache=cache, **options))
    sum(o.sum() for o in outs).backward()
    want = torch.autograd.grad(attn(x)[:, 1].sum() + attn(x)[:, 0].sum(), attn.q_proj.weight)[0]
    assert attn.q_proj.weight.grad is not None
    torch.testing.assert_close(attn.q_proj.weight.grad, want, atol=1e-5, rtol=1e-5)
