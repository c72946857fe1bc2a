"""Pure functions: the math of every encoding, with no parameters or state."""

from .absolute import sinusoidal_table
from .bias import (
    alibi_bias,
    alibi_slopes,
    fire_input,
    fire_mlp_unrolled,
    kerple_bias,
    lookup_bias,
    t5_buckets,
    t5_distance_buckets,
)
from .relative import (
    relative_from_positions,
    relative_positions,
    shaw_key_bias,
    shaw_reference,
    shaw_value_term,
)
from .rotary import (
    apply_rope,
    apply_rope_reference,
    check_rotary_dim,
    interleaved_permutation,
    phase_dtype,
    rope_angles,
    rope_cos_sin,
    rope_inv_freq,
)

__all__ = [
    "alibi_bias",
    "alibi_slopes",
    "fire_input",
    "fire_mlp_unrolled",
    "kerple_bias",
    "lookup_bias",
    "t5_buckets",
    "t5_distance_buckets",
    "apply_rope",
    "apply_rope_reference",
    "check_rotary_dim",
    "interleaved_permutation",
    "phase_dtype",
    "relative_from_positions",
    "relative_positions",
    "rope_angles",
    "rope_cos_sin",
    "rope_inv_freq",
    "shaw_key_bias",
    "shaw_reference",
    "shaw_value_term",
    "sinusoidal_table",
]
