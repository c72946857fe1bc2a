"""The one error type of :mod:`posenc.hf` refusals, with a machine-readable cause."""

from __future__ import annotations

#: every cause an :class:`UnsupportedRotary` can carry, with what it means.
CAUSES: dict[str, str] = {
    "per-layer-type": "a different RoPE per layer type (e.g. local and global attention)",
    "multimodal": "multimodal RoPE (mrope_section, or a rotary module taking (axes, B, S) positions): 3-D positions",
    "rope-type": "the config's rope_type or its parameters are not a RoPE posenc implements",
    "no-rotary-module": "no rotary_emb module to replace",
    "several-rotary-modules": "rotary modules besides rotary_emb, pos_emb(x, position_ids) and rotary_embs[i], or with "
    "different layouts",
    "table-output": "the rotary module returns something other than (cos, sin) tables or a complex freqs_cis",
    "rotary-size": "the rotary table's width does not match the rotated size read from the config",
    "rotation": "the architecture rotates other dims of each head than the first rotary_dim (DeepSeek-V4), or "
    "by minus the angle (NanoChat): the tables are RoPE's, the rotation is not",
    "table-values": "the rotary table's values differ from the RoPE the config describes",
    "folded-tensor": "the model stores a rope-dependent tensor outside its rotary module",
    "runtime-config": "the model reads rope parameters from its config while running",
    "meta-device": "the model is on the meta device: its rotary tables have no values to check",
    "model-build": "the model cannot be rebuilt on the meta device to find rope-dependent attributes",
}


class UnsupportedRotary(ValueError):
    """posenc.hf cannot make this model equal to transformers with the requested RoPE.

    ``cause`` is one key of :data:`CAUSES`; the message says what was found and what is supported.
    """

    def __init__(self, cause: str, message: str) -> None:
        if cause not in CAUSES:
            raise KeyError(f"unknown UnsupportedRotary cause {cause!r}; known: {sorted(CAUSES)}")
        super().__init__(f"[{cause}] {message}")
        self.cause = cause
