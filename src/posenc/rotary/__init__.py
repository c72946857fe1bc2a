"""Rotary encodings: q and k rotated by position-dependent angles before the dot product."""

from .rope import RoPE

__all__ = ["RoPE"]
