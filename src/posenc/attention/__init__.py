"""One attention module for every encoding, its backends and its KV cache."""

from .attention import Attention
from .backends import BACKENDS, math_attention, sdpa_attention
from .cache import KVCache
from .inputs import AttentionInputs

__all__ = ["BACKENDS", "Attention", "AttentionInputs", "KVCache", "math_attention", "sdpa_attention"]
