"""Precision guards shared by the encodings and the attention backends: phase and bias math in float32 or
better, whatever the model's dtype or autocast says."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor


def without_autocast(t: Tensor) -> AbstractContextManager[object]:
    """Autocast switched off on ``t``'s device where it is on: a float32 product stays float32 (autocast would round
    its operands to bfloat16 or float16 first: FIRE's MLP 1e-2 off, Shaw's key term 2e-3); else nothing."""
    kind = t.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return nullcontext()


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 if it is (a float64 model's bias keeps its precision), without a call when it
    already is (a decode step runs this per layer and token)."""
    return t if t.dtype == torch.float32 or t.dtype == torch.float64 else t.to(torch.float32)
