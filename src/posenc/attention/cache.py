"""Key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys (after ``rotate``), values and key positions of the tokens seen so far, for one attention layer.

    The caller owns it and passes it to ``Attention.forward(..., cache=cache)``, which appends the new tokens.
    New tokens get the positions ``len(cache) ...`` unless the caller gives others.

    Shapes: ``k: (B, Hkv, S, D)``, ``v: (B, Hkv, S, D)``, ``positions: (1|B, S)``.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.positions: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append and return all keys ``(B, Hkv, K, D)``, values and key positions ``(1|B, K)``."""
        if self.k is None or self.v is None or self.positions is None:
            self.k, self.v, self.positions = k, v, positions
        else:
            if k.shape[0] != self.k.shape[0]:
                raise ValueError(f"cache holds batch {self.k.shape[0]}, got new keys with batch {k.shape[0]}")
            batch = max(self.positions.shape[0], positions.shape[0])
            old_pos = self.positions.expand(batch, -1)
            self.k = torch.cat((self.k, k), dim=-2)  # (B, Hkv, K_old + S, D)
            self.v = torch.cat((self.v, v), dim=-2)
            self.positions = torch.cat((old_pos, positions.expand(batch, -1)), dim=-1)  # (1|B, K_old + S)
        return self.k, self.v, self.positions

    def reset(self) -> None:
        self.k = self.v = self.positions = None
