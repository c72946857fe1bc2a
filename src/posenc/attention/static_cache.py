"""A key/value cache of fixed shape whose write position is a tensor: one graph for every decode step."""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import check_bool, check_int
from .cache import KVCache, check_cache_size, check_same_stream, records_grad, stream_mismatch


class StaticKVCache(KVCache):
    """Preallocated keys, values and key positions for ``max_len`` slots, written at a tensor index.

    :class:`posenc.KVCache` keeps its length as a Python int and hands attention only the filled part, so
    every step has new shapes: under ``torch.compile`` they become dynamic after a first recompile, but a CUDA
    graph is recorded per shape, so per step. Here the shapes never change and the write position ``index`` is a
    0-d tensor advanced in place, so one compiled decode step (and one CUDA graph) serves every step, as in
    gpt-fast's static cache. (While autograd records, writes are out of place, as :class:`posenc.KVCache`'s.)

    The price: attention always sees all ``max_len`` slots, so the caller must pass

    * explicit ``positions`` for the new tokens (``len(cache)`` is the slot count, not the tokens written);
    * a keep-mask ``(B, 1, Q, max_len)`` that hides unwritten slots and, within a chunk, later slots (see
      :meth:`keep_mask`); the usual causal rule by index cannot, since keys are not the last ``Q`` slots.

    :func:`posenc.models.generate.generate` does both.

    Writing past ``max_len`` raises ``ValueError``: a chunk longer than the cache always; a write past the end of
    a partly filled cache in eager mode when ``checked`` (default), at the cost of reading the write position on
    the host (a device sync on CUDA) per update. ``checked=False`` skips that read, for callers that know their
    writes fit (``generate`` checks the cache length before any work); under ``torch.compile`` it is skipped
    too (the compiled step then fails in torch's index check, or a CUDA device assert).

    After :meth:`reset` the cache takes keys of another batch, head count, head size, dtype or device by
    allocating anew, as :class:`posenc.KVCache` does; keys of the same kind reuse the memory (same addresses,
    as a CUDA graph needs). Slots allocated by an eager update are marked static for ``torch.compile``; a cache
    first filled inside a compiled call works too, unmarked (so CUDA graphs copy it): fill it eagerly first (a
    prefill, as ``generate`` does) to get the marking.

    Args:
        max_len: key slots.
        checked: refuse eager writes past ``max_len`` with a clear error (see above).

    Shapes: ``k, v: (B, Hkv, max_len, D)``, ``positions: (B, max_len)``, ``index: ()`` long.
    """

    def __init__(self, max_len: int, *, checked: bool = True) -> None:
        max_len = check_int("max_len (key slots)", max_len, at_least=1, owner="StaticKVCache")
        super().__init__(max_len)
        self.max_len: int = max_len
        self.checked = check_bool("checked", checked, owner="StaticKVCache")
        self.index: Tensor | None = None  # next slot to write, on the cache's device
        self._empty = True  # nothing written since construction or reset: other keys may start it over

    def __len__(self) -> int:
        """Key slots handed to attention (always ``max_len``; the filled count lives on the device)."""
        return self.max_len

    def update(
        self, k: Tensor, v: Tensor, positions: Tensor, *, saved: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Write ``k, v: (B, Hkv, S, D)`` at slots ``index .. index+S-1``; return every slot and position.
        ``saved``: as :meth:`posenc.KVCache.update`."""
        new = k.shape[-2]
        if new > self.max_len:
            raise ValueError(
                f"StaticKVCache(max_len={self.max_len}) cannot take {new} tokens at once (slots 0..{new - 1} "
                "requested); create it with a larger max_len"
            )
        if self._empty and self.k is not None and self.v is not None:
            if stream_mismatch(self.k, k) is not None or stream_mismatch(self.v, v) is not None:
                self.k = self.v = self.positions = self.index = (
                    None  # emptied: other keys get room of their own
                )
        if self.k is None or self.v is None or self.positions is None or self.index is None:
            b, g, _, d = k.shape
            check_cache_size("StaticKVCache", self.max_len, k, v)
            self.k = k.new_zeros(b, g, self.max_len, d)
            self.v = v.new_zeros(b, v.shape[1], self.max_len, v.shape[-1])
            # unwritten slots at their own index (masked, so any value serves): a batch of one decoding from 0
            # then has keys at 0 .. max_len-1 at every step, which Shaw's session rows need
            self.positions = (
                torch.arange(self.max_len, device=k.device, dtype=positions.dtype).expand(b, -1).clone()
            )
            self.index = torch.zeros((), dtype=torch.long, device=k.device)
            if not torch.compiler.is_compiling():  # (dynamo refuses to trace the marking)
                # fixed addresses: CUDA graphs replay them
                for t in (self.k, self.v, self.positions, self.index):
                    torch._dynamo.mark_static_address(t)
        else:
            check_same_stream(self.k, k)
            if self.checked and not torch.compiler.is_compiling():
                self._check_room(new)
        if self._empty:
            self._empty = False
        slots = self.index + torch.arange(new, device=k.device)  # (S,)
        rows = positions.to(self.positions.dtype).expand(self.positions.shape[0], -1)
        # out of place while autograd records (see records_grad): backward through the steps works
        if records_grad(saved, self.k, self.v, k, v):
            self.k, self.v = self.k.index_copy(2, slots, k), self.v.index_copy(2, slots, v)
            self.positions = self.positions.index_copy(1, slots, rows)
            self.index = self.index + new
        else:
            self.k.index_copy_(2, slots, k)
            self.v.index_copy_(2, slots, v)
            self.positions.index_copy_(1, slots, rows)
            self.index.add_(new)
        return self.k, self.v, self.positions

    def _check_room(self, new: int) -> None:
        """Refuse ``new`` tokens past ``max_len`` (reads the write position on the host)."""
        assert self.index is not None
        start = int(self.index)
        if start + new > self.max_len:
            raise ValueError(
                f"StaticKVCache(max_len={self.max_len}) holds {start} tokens and cannot take {new} more (slots "
                f"{start}..{start + new - 1} requested); create it with a larger max_len, or reset() it"
            )

    def keep_mask(self, valid: Tensor, q_len: int) -> Tensor:
        """``(B, 1, Q, max_len)`` bool for the next ``Q`` tokens: slot ``j`` visible to new token ``i`` when it
        is written by then (``j <= index + i``) and ``valid[b, j]`` (False for padding). ``valid: (B, max_len)``.
        """
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.dim() != 2:
            got = f"{valid.dtype} {tuple(valid.shape)}" if isinstance(valid, Tensor) else type(valid).__name__
            raise TypeError(
                f"StaticKVCache.keep_mask: valid must be a bool tensor (batch, {self.max_len}) (True = a real token), "
                f"got {got}"
            )
        if valid.shape[-1] != self.max_len:
            raise ValueError(
                f"StaticKVCache.keep_mask: valid must cover the cache's {self.max_len} slots, (batch, {self.max_len}), "
                f"got {tuple(valid.shape)}"
            )
        q_len = check_int("q_len", q_len, at_least=0, owner="StaticKVCache.keep_mask")
        start = torch.zeros((), dtype=torch.long, device=valid.device) if self.index is None else self.index
        last = start + torch.arange(q_len, device=valid.device)  # (Q,) slot of each new token
        written = torch.arange(self.max_len, device=valid.device) <= last.unsqueeze(-1)  # (Q, max_len)
        return valid[:, None, None, :] & written  # (B, 1, Q, max_len)

    def reset(self) -> None:
        """Forget every token; the memory is kept (and reused by keys of the same kind)."""
        self._empty = True
        if self.k is not None and (self.k.requires_grad or self.v is not None and self.v.requires_grad):
            self.k = self.v = self.positions = self.index = None  # a graph's tensors: not written again
        elif self.index is not None:
            self.index.zero_()
            if (
                self.positions is not None
            ):  # every slot unwritten again: at its own index (in place: CUDA graphs)
                self.positions.copy_(torch.arange(self.max_len, device=self.positions.device))


def check_static_inputs(cache: object, positions: Tensor | None, mask: Tensor | None, owner: str) -> None:
    """Refuse a :class:`StaticKVCache` met without explicit ``positions`` or ``mask``.

    Attention sees all ``max_len`` slots of such a cache, unwritten ones included (zeros), and ``len(cache)`` is
    ``max_len``: without a mask the new tokens attend to empty slots, and default positions would start at
    ``max_len``. Both gave wrong outputs without an error.
    """
    if not isinstance(cache, StaticKVCache):
        return
    missing = [n for n, v in (("positions", positions), ("mask", mask)) if v is None]
    if missing:
        raise ValueError(
            f"{owner}: a StaticKVCache needs explicit {' and '.join(missing)} (got None): attention sees all "
            f"{cache.max_len} slots, unwritten ones included; pass positions of the new tokens and "
            "mask=cache.keep_mask(valid, seq_len) (bool (batch, 1, seq_len, max_len)) before the update"
        )
