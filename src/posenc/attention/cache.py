"""Key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import check_int, device_memory


class KVCache:
    """Keys (after ``rotate``), values and key positions of the tokens seen so far, for one attention layer.

    The caller owns it and passes it to ``Attention.forward(..., cache=cache)``, which appends the new tokens.
    New tokens get the positions ``len(cache) ...`` unless the caller gives others.

    Args:
        max_len: None (default) grows by concatenation, fine for short generations; an integer preallocates
            room for that many tokens on the first update and writes in place (no copy of the past per step,
            as in gpt-fast). Appending past it raises ``ValueError``. While autograd records (keys or values
            that need gradients, grad mode on) it grows out of place as ``max_len=None`` does (each step copies
            the filled part, and autograd keeps each copy), so ``backward()`` through the steps works; decode
            under ``torch.no_grad()`` for the in-place writes.

    Shapes: ``k: (B, Hkv, S, D)``, ``v: (B, Hkv, S, D)``, ``positions: (1|B, S)``.
    """

    def __init__(self, max_len: int | None = None) -> None:
        if max_len is not None:
            max_len = check_int("max_len (tokens, or None to grow)", max_len, at_least=1, owner="KVCache")
        self.max_len = max_len
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.positions: Tensor | None = None
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def update(
        self, k: Tensor, v: Tensor, positions: Tensor, *, saved: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Append and return all keys ``(B, Hkv, K, D)``, values and key positions ``(1|B, K)``.

        The cache keeps its own copy of ``positions``, and ``k`` and ``v`` themselves (no copy; a growing cache's
        first chunk is the caller's tensors until the next update concatenates). A preallocated cache returns
        views of its buffers: valid until :meth:`reset` and the next update write over them. ``saved``: autograd
        will save the returned keys and values though they need no gradient (the queries do: :class:`Attention`
        says so), so writes go out of place (see :func:`records_grad`)."""
        if self.k is not None and self._len > 0:  # an emptied cache takes any keys (see _write)
            check_same_stream(self.k, k)
        if self.max_len is None:
            return self._concat(k, v, positions)
        return self._write(k, v, positions, saved)

    def _concat(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.k is None or self.v is None or self.positions is None:
            # the positions copied (the caller may advance its tensor in place for the next chunk: `pos += S`
            # changed the cached keys' positions); k and v are kept as given (Attention's are its own)
            self.k, self.v, self.positions = k, v, positions.clone()
        else:
            batch = max(self.positions.shape[0], positions.shape[0])
            self.k = torch.cat((self.k, k), dim=-2)  # (B, Hkv, K_old + S, D)
            self.v = torch.cat((self.v, v), dim=-2)
            self.positions = torch.cat(
                (self.positions.expand(batch, -1), positions.expand(batch, -1)), dim=-1
            )
        self._len = self.k.shape[-2]
        return self.k, self.v, self.positions

    def _write(self, k: Tensor, v: Tensor, positions: Tensor, saved: bool) -> tuple[Tensor, Tensor, Tensor]:
        assert self.max_len is not None
        start, end = self._len, self._len + k.shape[-2]
        if end > self.max_len:
            raise ValueError(
                f"KVCache(max_len={self.max_len}) holds {start} tokens and cannot take {k.shape[-2]} more; "
                "create it with a larger max_len (or max_len=None to grow)"
            )
        if (
            start == 0 and self.k is not None and self.v is not None
        ):  # emptied: other keys get room of their own
            if stream_mismatch(self.k, k) is not None or stream_mismatch(self.v, v) is not None:
                self.k = self.v = self.positions = None
        rows = positions.expand(k.shape[0], -1)  # (B, S)
        if records_grad(saved, self.k, self.v, k, v):
            # out of place, the filled part only (as a growing cache): the keys earlier steps saved for backward
            # stay as they were; these tensors are the cache until reset() lets them go
            if self.k is None or self.v is None or self.positions is None or start == 0:
                self.k, self.v, self.positions = k, v, rows.clone()  # (a copy: see _concat)
            else:
                self.k = torch.cat((self.k[:, :, :start], k), dim=-2)  # (B, Hkv, end, D)
                self.v = torch.cat((self.v[:, :, :start], v), dim=-2)
                self.positions = torch.cat((self.positions[:, :start], rows), dim=-1)  # (B, end)
            self._len = end
            return self.k, self.v, self.positions
        if (
            self.k is None
            or self.v is None
            or self.positions is None
            or self.k.shape[-2] != self.max_len
            or self.k.requires_grad
        ):  # no buffer yet, or the tensors of recorded steps (never written in place): a buffer, the past copied
            b, g, _, d = k.shape
            check_cache_size("KVCache", self.max_len, k, v)
            old_k, old_v, old_pos = self.k, self.v, self.positions
            self.k = k.new_empty(b, g, self.max_len, d)  # (B, Hkv, max_len, D)
            self.v = v.new_empty(b, v.shape[1], self.max_len, v.shape[-1])
            self.positions = rows.new_zeros(b, self.max_len)  # (B, max_len)
            if start and old_k is not None and old_v is not None and old_pos is not None:
                self.k[:, :, :start] = old_k[:, :, :start]
                self.v[:, :, :start] = old_v[:, :, :start]
                self.positions[:, :start] = old_pos[:, :start]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.positions[:, start:end] = rows
        self._len = end
        return self.k[:, :, :end], self.v[:, :, :end], self.positions[:, :end]

    def reset(self) -> None:
        """Forget every token (a preallocated cache keeps its memory, unless its tensors came from steps autograd
        recorded: those are let go, never written again)."""
        self._len = 0
        if self.max_len is None or self.k is None or self.k.shape[-2] != self.max_len or self.k.requires_grad:
            self.k = self.v = self.positions = None


def records_grad(saved: bool, *tensors: Tensor | None) -> bool:
    """Whether autograd records a write of these keys and values, or saves the cache's tensors for backward
    (``saved``: the queries that attend to them need gradients; with the key and value projections frozen, the
    keys and values need none, review s7): then a cache writes out of place, since an in-place write into its
    slots changed tensors earlier steps had saved ("modified by an inplace operation" at ``backward()``), and the
    old slots are never written again."""
    return torch.is_grad_enabled() and (saved or any(t is not None and t.requires_grad for t in tensors))


def check_same_stream(held: Tensor, new: Tensor) -> None:
    """Refuse new keys ``(B, Hkv, S, D)`` that cannot join the cached ``held`` ones (see :func:`stream_mismatch`)."""
    reason = stream_mismatch(held, new)
    if reason is not None:
        raise ValueError(reason)


def stream_mismatch(held: Tensor, new: Tensor) -> str | None:
    """Why new keys or values ``(B, Hkv, S, D)`` cannot join the cached ``held`` ones, or None: another batch,
    head count, head size, dtype or device (a cache belongs to one attention layer of one running generation)."""
    if new.shape[0] != held.shape[0]:
        return f"cache holds batch {held.shape[0]}, got new keys with batch {new.shape[0]}"
    if new.shape[1] != held.shape[1] or new.shape[-1] != held.shape[-1]:
        return (
            f"cache holds keys of {held.shape[1]} heads x {held.shape[-1]} dims, got {new.shape[1]} x "
            f"{new.shape[-1]}: use one cache per attention layer"
        )
    if new.dtype != held.dtype or new.device != held.device:
        return (
            f"cache holds {held.dtype} keys on {held.device}, got {new.dtype} on {new.device}: a model moved or "
            "cast after its cache was filled needs a new cache"
        )
    return None


def check_cache_size(owner: str, max_len: int, k: Tensor, v: Tensor) -> None:
    """Refuse, before the first write allocates them, buffers of ``max_len`` slots for keys like ``k`` and values
    like ``v`` (with int64 positions) larger than the whole memory of their device (the allocator's own error
    named no argument). Only past the whole memory: a CPU's untouched pages cost nothing, so a generous
    ``max_len`` of which a part is written works. Not for devices of unknown memory (meta), nor while compiling
    (a host question; the eager first call has asked it)."""
    if torch.compiler.is_compiling():
        return
    total = device_memory(k.device)
    if total is None:
        return
    b = k.shape[0]
    per_slot = b * (
        k.shape[1] * k.shape[-1] * k.element_size() + v.shape[1] * v.shape[-1] * v.element_size() + 8
    )
    if max_len * per_slot > total:
        raise ValueError(
            f"{owner}(max_len={max_len}): keys, values and positions of batch {b} ({k.shape[1]} heads of "
            f"{k.shape[-1]} dims) would take {max_len * per_slot / 2**30:,.1f} GiB, more than the "
            f"{total / 2**30:,.1f} GiB this {k.device.type} device has; max_len takes at most "
            f"{total // per_slot:,} here"
        )
