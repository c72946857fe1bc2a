"""Attention-bias math: ALiBi slopes, T5 buckets, Kerple kernels and FIRE's normalized distance.

Every function here is elementwise over broadcastable inputs, so the same code gives a materialized
``(B, H, Q, K)`` bias (inputs shaped ``(H, 1, 1)``, ``(1|B, 1, Q, 1)``, ``(1|B, 1, 1, K)``) and the value of one
score inside a FlexAttention ``score_mod`` (0-dim inputs). Distances are computed in float32; a bias is float32, or float64 where its parameters are.

* ALiBi: Press, Smith, Lewis 2022, "Train Short, Test Long: Attention with Linear Biases".
* T5: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer".
* Kerple: Chi, Fan, Ramadge, Rudnicky 2022, "KERPLE: Kernelized Relative Positional Embedding".
* FIRE: Li et al. 2023, "Functional Interpolation for Relative Positions Improves Long Context Transformers".
"""

from __future__ import annotations

import math
from array import array

import torch
from torch import Tensor

from ..validation import check_bool, check_float, check_int, check_table_size, wide_positions
from .precision import at_least_float32

#: The largest ``max_bias``: the smallest slope, ``2^-max_bias``, stays a normal float32. Past it slopes lose
#: precision, and from about 150 they are 0 (at 1000 every slope was 0: ALiBi computed NoPE without a word).
#: Slopes this small already add next to nothing to a logit: the bound refuses what cannot be computed, not
#: every choice that is unwise (the paper's is 8).
ALIBI_MAX_BIAS = 126.0


def check_max_bias(max_bias: object, owner: str) -> float:
    """``max_bias`` checked: a finite number in ``(0, ALIBI_MAX_BIAS]``."""
    out = check_float("max_bias", max_bias, above=0, owner=owner)
    if out > ALIBI_MAX_BIAS:
        raise ValueError(
            f"{owner}: max_bias must be <= {ALIBI_MAX_BIAS:g}, got {out!r}: the smallest slope, 2^-max_bias, "
            "must stay a normal float32 (from about 150 it is 0, and a head with slope 0 is NoPE)"
        )
    return out


def alibi_slopes(heads: int, max_bias: float = 8.0) -> Tensor:
    """The paper's head slopes, ``(heads,)`` float32.

    For ``heads`` a power of two: the geometric sequence ``2^(-b/h), 2^(-2b/h), ..., 2^-b`` with ``b = max_bias``
    (8 in the paper). Otherwise (the paper's reference code): the slopes of the closest smaller power of two
    ``p``, followed by every other slope of ``2p`` heads (``2^(-b/2p), 2^(-3b/2p), ...``) until there are
    ``heads`` slopes. ``max_bias`` is MPT's ``alibi_bias_max``: a smaller one makes every slope steeper (with
    4 heads the paper's steepest is 1/4; ``max_bias=4`` gives 1/2, 1/4, 1/8, 1/16).
    """
    heads = check_int("heads", heads, at_least=1, owner="alibi_slopes")
    max_bias = check_max_bias(max_bias, "alibi_slopes")
    check_table_size(
        "alibi_slopes", "heads", heads, lambda h: h * SLOPE_BYTES, "the (heads,) slopes", at_least=1
    )
    return torch.frombuffer(_slopes(heads, max_bias), dtype=torch.float64).to(torch.float32)


#: Bytes per head while the slopes are computed: the float64 values, then the float32 tensor.
SLOPE_BYTES = 8 + 4


def _slopes(n: int, max_bias: float) -> array[float]:
    """The paper's slopes in float64, each ``start ** k`` by the same C ``pow`` the reference code's list
    comprehension calls, computed through ``map`` into an array (2**28 heads: seconds, not a minute; no
    Python float kept per head). The odd-indexed slopes of ``2p`` heads are computed alone, not all ``2p``."""
    closest = 1 << (n.bit_length() - 1)  # the largest power of two <= n
    out = array("d", map((2.0 ** (-max_bias / closest)).__pow__, range(1, closest + 1)))
    if closest < n:  # every other slope of 2 * closest heads: exponents 1, 3, 5, ...
        out.extend(map((2.0 ** (-max_bias / (2 * closest))).__pow__, range(1, 2 * (n - closest), 2)))
    return out


def distance(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """``|i - j|`` in float32 for broadcastable query and key positions (integers subtracted in int64)."""
    q_pos, k_pos = wide_positions(q_pos, k_pos)
    return (q_pos - k_pos).abs().to(torch.float32)


def alibi_bias(slopes: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """``-slope * |i - j|``: the paper's causal bias, symmetric for keys after the query (bidirectional).

    Args:
        slopes: per-head slopes, broadcastable against the positions (e.g. ``(H, 1, 1)``, or 0-dim).
        q_pos, k_pos: query and key positions, broadcastable.
    """
    return -slopes.to(torch.float32) * distance(q_pos, k_pos)


def t5_buckets(
    relative: Tensor, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """T5's bucket of each relative position ``key - query`` (Mesh TensorFlow, as in transformers).

    Half of the buckets (of each direction, when bidirectional) are exact distances ``0 .. max_exact-1``; the
    rest are log-spaced up to ``max_distance``, beyond which every distance shares the last bucket. Causal
    (``bidirectional=False``): keys after the query fall in bucket 0. Bidirectional: keys after the query use
    the upper half of the buckets.

    Args:
        relative: integer tensor of ``k_pos - q_pos``, any shape.

    Returns:
        long tensor like ``relative`` with values in ``[0, num_buckets)``.
    """
    num_buckets, max_distance, bidirectional = check_t5(
        num_buckets, max_distance, bidirectional, owner="t5_buckets"
    )
    if not isinstance(relative, Tensor):
        raise TypeError(f"t5_buckets: relative must be an integer tensor, got {type(relative).__name__}")
    if relative.is_floating_point() or relative.is_complex() or relative.dtype == torch.bool:
        raise TypeError(f"t5_buckets: relative must be an integer tensor (key - query), got {relative.dtype}")
    relative = relative.long()
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -relative.clamp(max=0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    scaled = torch.log(relative.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (scaled * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


def check_t5(
    num_buckets: int, max_distance: int, bidirectional: bool, *, owner: str = "T5Bias"
) -> tuple[int, int, bool]:
    """The bucket settings, normalized (``int``, ``int``, ``bool``); ``TypeError`` for another kind (a float
    ``max_distance``, a string ``bidirectional``), ``ValueError`` unless they leave room for exact and
    log-spaced buckets."""
    num_buckets = check_int("num_buckets", num_buckets, owner=owner)
    max_distance = check_int("max_distance", max_distance, owner=owner)
    bidirectional = check_bool("bidirectional", bidirectional, owner=owner)
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    if num_buckets < (4 if bidirectional else 2):
        raise ValueError(f"{owner}: num_buckets must be >= {4 if bidirectional else 2}, got {num_buckets}")
    if max_distance <= per_direction // 2:
        raise ValueError(
            f"{owner}: max_distance ({max_distance}) must exceed the exact range ({per_direction // 2} for "
            f"num_buckets={num_buckets}, bidirectional={bidirectional})"
        )
    return num_buckets, max_distance, bidirectional


def t5_distance_buckets(
    *, bidirectional: bool, num_buckets: int, max_distance: int, device: torch.device
) -> Tensor:
    """``(2 * max_distance + 1,)`` bucket of every ``key - query`` in ``-max_distance .. max_distance``.

    Buckets saturate at ``|key - query| >= max_distance``, so ``table[clamp(rel) + max_distance]`` is the bucket
    of any ``rel``: a lookup that needs no ``log`` per score.
    """
    num_buckets, max_distance, bidirectional = check_t5(
        num_buckets, max_distance, bidirectional, owner="t5_distance_buckets"
    )
    rel = torch.arange(-max_distance, max_distance + 1, device=device)
    return t5_buckets(rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)


def lookup_bias(table: Tensor, head: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """``table[head, clamp(k - q, -M, M) + M]`` for a ``(H, 2M + 1)`` per-head table over clipped distances."""
    m = (table.shape[-1] - 1) // 2
    q_pos, k_pos = wide_positions(q_pos, k_pos)  # (an int64 index: uint8 would be read as a mask)
    return at_least_float32(table[head, (k_pos - q_pos).clamp(-m, m) + m])


def kerple_bias(r1: Tensor, r2: Tensor, q_pos: Tensor, k_pos: Tensor, kind: str = "log") -> Tensor:
    """Kerple's conditionally positive definite kernels, symmetric in ``|i - j|``.

    * ``log``: ``-r1 * log(1 + r2 * |i - j|)``;
    * ``power``: ``-r1 * |i - j| ** r2`` (``0 < r2 <= 2``).

    ``r1, r2`` are positive (the caller clamps), broadcastable against the positions.
    """
    d = distance(q_pos, k_pos)
    r1, r2 = at_least_float32(r1), at_least_float32(r2)
    if kind == "log":
        return -r1 * torch.log1p(r2 * d)
    if kind == "power":
        return -r1 * d.pow(r2)
    raise ValueError(f"Kerple kind must be 'log' or 'power', got {kind!r}")


def fire_input(
    c: Tensor,
    threshold: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    eps: float = 1e-6,
    c_norm: Tensor | None = None,
) -> Tensor:
    """FIRE's normalized distance ``psi(|i - j|) / psi(max(i, L))`` with ``psi(x) = log(|c| x + 1)``.

    The paper defines it for causal attention (``j <= i``); keys after the query use ``|i - j|``, as the
    paper's reference code does. ``eps`` keeps the denominator positive at ``i = L = 0``.

    Args:
        c: learnable scale (0-dim, or broadcastable against the positions); threshold: ``L`` (its absolute
            value is used), likewise.
        q_pos, k_pos: broadcastable positions.
        c_norm: the same ``c`` for the denominator, read through a tensor of its own (a FlexAttention
            ``score_mod`` reads each captured tensor that needs gradients once); None: ``c``.
    """
    c = at_least_float32(c).abs()
    c_norm = c if c_norm is None else at_least_float32(c_norm).abs()
    threshold = at_least_float32(threshold).abs()
    # integer positions meet float tensors in maximum and the product, converted first (as promotion would: the
    # same values), so that forward-mode AD (torch.func.jvp) gives no float64 tangent to an integer operand
    q_at = q_pos if q_pos.is_floating_point() else q_pos.to(threshold.dtype)
    norm = torch.log1p(c_norm * torch.maximum(q_at, threshold)) + eps
    q_pos, k_pos = wide_positions(q_pos, k_pos)
    return torch.log1p(c * (q_pos - k_pos).abs()) / norm


def fire_mlp_unrolled(x: Tensor, head: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """FIRE's MLP ``b2[h] + sum_k w2[h, k] relu(w1[k] x + b1[k])`` one hidden unit at a time.

    Only elementwise operations, so it runs inside a FlexAttention ``score_mod`` (no reduction, no
    ``(.., hidden)`` tensor). Equals ``nn.Sequential(Linear(1, W), ReLU(), Linear(W, H))`` at head ``h``.

    Args:
        x: normalized distance, any shape; head: head index broadcastable against ``x``.
        w1, b1: ``(W,)``; w2: ``(H, W)``; b2: ``(H,)``.
    """
    out = at_least_float32(b2[head])
    for unit in range(w1.shape[0]):
        out = out + w2[head, unit] * torch.relu(w1[unit] * x + b1[unit])
    return out
