"""Rotary encodings: q and k rotated by position-dependent angles before the dot product."""

from .rope import RoPE
from .scaling import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    LongRoPEScaling,
    NTKScaling,
    RopeScaling,
    YaRNScaling,
    available_scalings,
    parse_scaling,
    scaled_inv_freq,
)
from .xpos import XPos

__all__ = [
    "DynamicNTKScaling",
    "Llama3Scaling",
    "LinearScaling",
    "LongRoPEScaling",
    "NTKScaling",
    "RoPE",
    "RopeScaling",
    "XPos",
    "YaRNScaling",
    "available_scalings",
    "parse_scaling",
    "scaled_inv_freq",
]
