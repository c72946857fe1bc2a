"""Hugging Face transformers interop (the ``posenc[hf]`` extra): RoPE from a config, RoPE into a model.

* :func:`rope_from_config`: the :class:`posenc.RoPE` a transformers 4.x or 5.x config describes (base, rotated
  size, scaling, pair layout), see :mod:`posenc.hf.config`.
* :func:`install_rope` (alias :func:`apply_rope`): switch a loaded transformers model to a posenc RoPE with a
  given scaling (YaRN, Llama 3, LongRoPE, ...), the whole model equal to transformers with that rope
  configuration (rope-dependent attention scales included), or an :class:`UnsupportedRotary` naming the cause.
* :class:`HFRotaryEmbedding`: a posenc RoPE behind transformers' rotary-module interface, in every table layout
  transformers uses (half, interleaved, ``R/2`` columns, complex ``freqs_cis``).

transformers is not imported here: configs and models are used through their attributes.
"""

from __future__ import annotations

from .adapter import HFRotaryEmbedding
from .config import rope_from_config, scaling_from_config
from .errors import CAUSES, UnsupportedRotary
from .install import apply_rope, install_rope

__all__ = [
    "CAUSES",
    "HFRotaryEmbedding",
    "UnsupportedRotary",
    "apply_rope",
    "install_rope",
    "rope_from_config",
    "scaling_from_config",
]
