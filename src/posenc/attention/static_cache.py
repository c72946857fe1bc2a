"""A key/value cache of fixed shape whose write position is a tensor: one graph for every decode step."""

from __future__ import annotations

import torch
from torch import Tensor

from .cache import KVCache, check_same_stream


class StaticKVCache(KVCache):
    """Preallocated keys, values and key positions for ``max_len`` slots, written at a tensor index.

    :class:`posenc.KVCache` keeps its length as a Python int and hands attention only the filled part, so
    every step has new shapes and a new int: under ``torch.compile`` each step would recompile. Here the
    shapes never change and the write position ``index`` is a 0-d tensor advanced in place, so a compiled
    decode step (and a CUDA graph) serves every step, as in gpt-fast's static cache.

    The price: attention always sees all ``max_len`` slots, so the caller must pass

    * explicit ``positions`` for the new tokens (``len(cache)`` is the slot count, not the tokens written);
    * a keep-mask ``(B, 1, Q, max_len)`` that hides unwritten slots and, within a chunk, later slots (see
      :meth:`keep_mask`); the usual causal rule by index cannot, since keys are not the last ``Q`` slots.

    :func:`posenc.models.generate.generate` does both.

    Shapes: ``k, v: (B, Hkv, max_len, D)``, ``positions: (B, max_len)``, ``index: ()`` long.
    """

    def __init__(self, max_len: int) -> None:
        super().__init__(max_len)
        self.max_len: int = max_len
        self.index: Tensor | None = None  # next slot to write, on the cache's device

    def __len__(self) -> int:
        """Key slots handed to attention (always ``max_len``; the filled count lives on the device)."""
        return self.max_len

    def update(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write ``k, v: (B, Hkv, S, D)`` at slots ``index .. index+S-1``; return every slot and position."""
        if self.k is None or self.v is None or self.positions is None or self.index is None:
            b, g, _, d = k.shape
            self.k = k.new_zeros(b, g, self.max_len, d)
            self.v = v.new_zeros(b, v.shape[1], self.max_len, v.shape[-1])
            self.positions = positions.new_zeros(b, self.max_len)
            self.index = torch.zeros((), dtype=torch.long, device=k.device)
            for t in (self.k, self.v, self.positions, self.index):  # fixed addresses: CUDA graphs replay them
                torch._dynamo.mark_static_address(t)
        else:
            check_same_stream(self.k, k)
        slots = self.index + torch.arange(k.shape[-2], device=k.device)  # (S,)
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        self.positions.index_copy_(1, slots, positions.expand(self.positions.shape[0], -1))
        self.index.add_(k.shape[-2])
        return self.k, self.v, self.positions

    def keep_mask(self, valid: Tensor, q_len: int) -> Tensor:
        """``(B, 1, Q, max_len)`` bool for the next ``Q`` tokens: slot ``j`` visible to new token ``i`` when it
        is written by then (``j <= index + i``) and ``valid[b, j]`` (False for padding). ``valid: (B, max_len)``.
        """
        start = torch.zeros((), dtype=torch.long, device=valid.device) if self.index is None else self.index
        last = start + torch.arange(q_len, device=valid.device)  # (Q,) slot of each new token
        written = torch.arange(self.max_len, device=valid.device) <= last.unsqueeze(-1)  # (Q, max_len)
        return valid[:, None, None, :] & written  # (B, 1, Q, max_len)

    def reset(self) -> None:
        """Forget every token; the memory is kept."""
        if self.index is not None:
            self.index.zero_()
