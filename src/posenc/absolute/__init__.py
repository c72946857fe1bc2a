"""Absolute encodings: added to token embeddings once, before the first block."""

from .learned import LearnedAbsolute
from .sinusoidal import Sinusoidal

__all__ = ["LearnedAbsolute", "Sinusoidal"]
