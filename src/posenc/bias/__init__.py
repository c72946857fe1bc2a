"""Encodings that add a bias to the attention logits: ALiBi, T5 buckets, Kerple and FIRE.

Each runs through every attention backend: materialized for ``math`` / ``sdpa``, as a FlexAttention
``score_mod`` for ``flex`` (no ``(heads, n, n)`` tensor).
"""

from .alibi import ALiBi
from .base import BiasEncoding
from .fire import FIRE
from .kerple import Kerple
from .t5 import T5Bias

__all__ = ["ALiBi", "FIRE", "BiasEncoding", "Kerple", "T5Bias"]
