"""Learned absolute position embeddings (Gehring et al. 2017; GPT-2)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..base import PositionEncoding, as_positions
from ..session import current_session
from ..validation import check_hidden, check_int, check_module_device, check_table_sizes


class LearnedAbsolute(PositionEncoding):
    """``x + E[positions]`` with a trained table of ``max_len`` rows. Positions past the table are an error.

    Shapes: ``x: (B, S, dim)`` (or ``(S, dim)``, or ``(..., B, S, dim)``), ``positions: (S,)`` or ``(1|B, S)``;
    returns ``x``'s shape in ``x.dtype``.
    """

    name: ClassVar[str | None] = "learned"
    family: ClassVar[str] = "absolute"
    sizes: ClassVar[tuple[str, ...]] = ("dim",)

    def __init__(self, dim: int, max_len: int = 2048) -> None:
        super().__init__()
        dim = check_int("dim", dim, at_least=1, owner="LearnedAbsolute")
        max_len = check_int("max_len", max_len, at_least=1, owner="LearnedAbsolute")
        item = torch.get_default_dtype().itemsize
        check_table_sizes(
            "LearnedAbsolute",
            {"max_len": (max_len, 1), "dim": (dim, 1)},
            lambda n: n["max_len"] * n["dim"] * item,
            "a (max_len, dim) table",
        )
        self.dim, self.max_len = dim, max_len
        self.table = nn.Embedding(max_len, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    @classmethod
    def training_options(cls, train_len: int) -> dict[str, Any]:
        """Exactly ``train_len`` rows: the positions training can reach (longer inputs then report n/a)."""
        return {"max_len": train_len}

    @property
    def max_length(self) -> int | None:
        return self.max_len

    def embed(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        batch = check_hidden("LearnedAbsolute", x, self.dim)
        check_module_device("LearnedAbsolute", "x", x, self.table.weight.is_meta)
        seq = x.shape[-2]
        if positions is None and seq > self.max_len:
            raise ValueError(
                f"LearnedAbsolute: sequence length {seq} exceeds the learned table (max_len={self.max_len}); "
                "use a larger max_len or an encoding that extrapolates"
            )
        pos = as_positions(positions, seq, x.device, batch=batch, owner="LearnedAbsolute")  # (1|B, S)
        if (
            positions is not None
            and pos.numel()
            and pos.device.type != "meta"
            and not torch.compiler.is_compiling()
            and not self._session_vouches(pos)
        ):
            lo, hi = (int(v) for v in torch.aminmax(pos))  # (one device sync off the CPU)
            if lo < 0 or hi >= self.max_len:
                raise ValueError(
                    f"LearnedAbsolute: positions must lie in [0, {self.max_len}) for this learned table, got [{lo}, {hi}]"
                )
        pe = self.table(pos).to(x.dtype)  # (1|B, S, dim) broadcast over batch
        return x + (pe.reshape(seq, self.dim) if x.dim() == 2 else pe)

    def _session_vouches(self, pos: Tensor) -> bool:
        """Whether an open :class:`posenc.DecodeSession` already promises ``pos`` inside the table (its positions lie
        in ``[0, slots)``, ``slots <= max_len``), so that a decode step off the CPU need not wait for the device to
        check them; on a CPU the check costs no sync and always runs."""
        if pos.is_cpu:
            return False
        session = current_session()
        return session is not None and session.slots <= self.max_len

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return self.embed(x, positions)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_len={self.max_len}"
