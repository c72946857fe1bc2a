"""posenc: positional encodings for transformer attention.

>>> import posenc, torch
>>> attn = posenc.Attention(256, 8, position=posenc.RoPE(32))
>>> attn(torch.randn(2, 10, 256)).shape
torch.Size([2, 10, 256])
"""

from . import functional, models
from .absolute import LearnedAbsolute, Sinusoidal
from .attention import Attention, KVCache
from .base import NoPE, PositionEncoding
from .bias import FIRE, ALiBi, Kerple, T5Bias
from .registry import Registry, available, build, encoding_class
from .relative import ShawRelative
from .rotary import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    LongRoPEScaling,
    NTKScaling,
    RoPE,
    RopeScaling,
    XPos,
    YaRNScaling,
)
from .session import DecodeSession

__version__ = "0.1.0"

__all__ = [
    "ALiBi",
    "Attention",
    "DecodeSession",
    "DynamicNTKScaling",
    "FIRE",
    "KVCache",
    "Kerple",
    "LearnedAbsolute",
    "LinearScaling",
    "Llama3Scaling",
    "LongRoPEScaling",
    "NTKScaling",
    "NoPE",
    "PositionEncoding",
    "RoPE",
    "RopeScaling",
    "ShawRelative",
    "Sinusoidal",
    "T5Bias",
    "XPos",
    "YaRNScaling",
    "Registry",
    "available",
    "build",
    "encoding_class",
    "functional",
    "models",
]
