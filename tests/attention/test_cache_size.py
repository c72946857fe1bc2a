"""The first write of a KVCache / StaticKVCache refuses buffers that do not fit in the machine, counting every
batch row and the values' own width (not the keys'). The machine's memory is monkeypatched to 64 MiB, so
nothing large is allocated: the refused caches would take just over 64 MiB, the accepted ones under 32 MiB."""

from __future__ import annotations

import pytest
import torch

import posenc
import posenc.validation
from posenc.attention.static_cache import StaticKVCache

MACHINE = 64 << 20


def _cache(static: bool, max_len: int) -> posenc.KVCache:
    return StaticKVCache(max_len) if static else posenc.KVCache(max_len=max_len)


@pytest.mark.parametrize("static", [False, True])
def test_every_batch_row_is_counted(static: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(posenc.validation, "host_memory", lambda: MACHINE)
    batch, heads, dim = 16, 2, 8
    per_slot = batch * (2 * heads * dim * 4 + 8)  # keys, values (float32) and an int64 position per row
    too_many = MACHINE // per_slot + 1  # one batch row would take 4 MiB of it
    k = torch.randn(batch, heads, 1, dim)
    owner = "StaticKVCache" if static else "KVCache"
    with pytest.raises(ValueError, match=rf"{owner}\(max_len={too_many}\): .*would take"):
        _cache(static, too_many).update(k, k, torch.zeros(batch, 1, dtype=torch.long))
    _cache(static, (MACHINE // 2) // per_slot).update(k, k, torch.zeros(batch, 1, dtype=torch.long))


@pytest.mark.parametrize("static", [False, True])
def test_values_wider_than_keys_are_counted_at_their_width(
    static: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(posenc.validation, "host_memory", lambda: MACHINE)
    k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 512)
    per_slot = 2 * 8 * 4 + 2 * 512 * 4 + 8
    too_many = MACHINE // per_slot + 1  # counted at the keys' width it would take 2 MiB
    with pytest.raises(ValueError, match=rf"\(max_len={too_many}\): .*would take"):
        _cache(static, too_many).update(k, v, torch.zeros(1, 1, dtype=torch.long))
    _cache(static, (MACHINE // 2) // per_slot).update(k, v, torch.zeros(1, 1, dtype=torch.long))
