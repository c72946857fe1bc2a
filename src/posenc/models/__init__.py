"""Small reference models built on :class:`posenc.Attention`."""

from .lm import TransformerLM

__all__ = ["TransformerLM"]
