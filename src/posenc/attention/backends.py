"""Ways to compute ``softmax(q k^T / sqrt(D) + bias) v (+ value term)``, all from the same inputs.

* ``math``: explicit logits and softmax, the plain reference every other backend is tested against.
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``; a bias is materialized as ``attn_mask``.
* ``flex``: FlexAttention with the encoding's ``score_mod`` and a block-sparse causal mask: no ``(H, Q, K)``
  tensor (see :mod:`posenc.attention.flex`).

A backend is a function ``(q, k, v, ctx) -> out`` registered in :data:`BACKENDS`.

Shape key: ``B`` batch, ``H`` query heads, ``G`` kv heads, ``Q`` queries, ``K`` keys, ``D`` head_dim.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import PositionEncoding
from ..fallback import Fallback
from ..functional.precision import without_autocast
from ..registry import Registry
from .flex import CPU_FLEX_DTYPES, flex_attention_backend, needs_grad, supports_flex
from .inputs import AttentionInputs, Backend, check_inputs, full_keep, score_bias


def repeat_kv(x: Tensor, heads: int) -> Tensor:
    """``(B, G, K, D)`` -> ``(B, H, K, D)``, each kv head shared by ``H / G`` consecutive query heads."""
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


#: ``math`` without gradients attends a block of queries at a time once the whole call's ``(B, H, Q, K)`` float32
#: logits would take more than this: each block's ``(B, H, rows, K)`` tensors stay under it, so memory grows
#: linearly with the length at inference (Shaw at 16L), not with its square.
MATH_BLOCK_BYTES = 64 << 20


def math_block_rows(batch: int, heads: int, q_len: int, k_len: int, item: int = 4) -> int:
    """Queries per block of an inference ``math`` call (:data:`MATH_BLOCK_BYTES`); ``q_len`` when one block holds
    them all. ``item``: bytes per logit."""
    return max(1, min(q_len, MATH_BLOCK_BYTES // max(1, batch * heads * k_len * item)))


def math_attention(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> Tensor:
    """Reference: explicit ``(B, H, Q, K)`` logits and softmax in float32 or better (bf16/fp16 q and k are
    multiplied in float32, autocast or not: as flash kernels accumulate them, never rounded to q's dtype, which
    was 0.5 off at large logits in bf16 and overflowed to NaN in fp16), rows with no visible key give 0.

    Without gradients (eager, no dropout), a call whose logits exceed :data:`MATH_BLOCK_BYTES` runs as blocks of
    queries, each against the keys it can see (causal: the first ``end + K - Q``), with its slice of the positions
    and mask: every hook sees a block as a call of its own, so a row's logits, softmax and value term are the
    same computation on the same values (equal to the unblocked call within float rounding: the matrix products
    may sum in another order)."""
    check_inputs(q, k, v, ctx)
    q_len, k_len = q.shape[-2], k.shape[-2]
    rows = q_len
    blockable = not (torch.is_grad_enabled() or torch.compiler.is_compiling() or ctx.dropout_p > 0)
    if blockable and not (ctx.causal and k_len < q_len):  # (K < Q: the first queries see no key at all)
        rows = math_block_rows(q.shape[0], q.shape[1], q_len, k_len, max(4, q.element_size()))
    if rows >= q_len:
        return _math(q, k, v, ctx)
    out = []
    for start in range(0, q_len, rows):
        end = min(start + rows, q_len)
        keys = end + k_len - q_len if ctx.causal else k_len  # later keys are masked for every query here
        keep = ctx.keep
        if keep is not None:
            keep = keep[..., start:end, :keys] if keep.shape[-2] != 1 else keep[..., :keys]
        block = replace(ctx, q_pos=ctx.q_pos[:, start:end], k_pos=ctx.k_pos[:, :keys], keep=keep)
        out.append(_math(q[:, :, start:end], k[:, :, :keys], v[:, :, :keys], block))  # (B, H, rows, D)
    return torch.cat(out, dim=2)  # (B, H, Q, D)


def _math(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> Tensor:
    """:func:`math_attention` on checked inputs, all queries at once."""
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])  # (B, H, K, D)
    acc = torch.promote_types(q.dtype, torch.float32)  # logits and softmax in float32 or better
    with without_autocast(q):
        logits = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, Q, K)
    bias = score_bias(q, k.shape[-2], ctx)
    if bias is not None:
        logits = logits + bias.to(acc)
    keep = full_keep(q, k, ctx)
    if keep is not None:
        logits = torch.where(keep, logits, float("-inf"))
    probs = logits.softmax(dim=-1)
    if keep is not None and (ctx.keep is not None or k.shape[-2] < q.shape[-2]):
        # fully masked rows -> 0, not NaN. The causal mask alone hides no whole row when K >= Q (query i sees
        # keys 0 .. i + K - Q), so then this (Q, K)-sized pass, and its backward, would change nothing
        probs = torch.where(keep.any(dim=-1, keepdim=True), probs, 0.0)
    # a branch: under dynamic=True the rate is symbolic, and F.dropout's `training` takes a bool only
    if ctx.dropout_p > 0:
        probs = F.dropout(probs, ctx.dropout_p)
    probs = probs.to(q.dtype)
    out = probs @ v  # (B, H, Q, D)
    extra = ctx.position.value_term(probs, ctx.q_pos, ctx.k_pos)
    return out if extra is None else out + extra.to(out.dtype)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> Tensor:
    """``scaled_dot_product_attention``; a bias (if any) and the masks go in as one float ``attn_mask``.

    For one query (a decode step), an encoding's :meth:`~posenc.PositionEncoding.kv_rows` are added to ``k``
    and ``v`` instead of a bias and a value term; an encoding whose value term needs the weights (Shaw's)
    runs here only that way.
    """
    check_inputs(q, k, v, ctx)
    if _cpu_autocast_low(q):  # see _cpu_autocast_low: attention in float32, the result in q's dtype
        with torch.autocast("cpu", enabled=False):
            return sdpa_attention(q.float(), k.float(), v.float(), ctx).to(q.dtype)
    key_rows, value_rows = ctx.position.kv_rows(ctx.q_pos, ctx.k_pos) if q.shape[-2] == 1 else (None, None)
    if ctx.position.needs_probs and value_rows is None:
        raise ValueError(
            f"{type(ctx.position).__name__} needs the attention weights (except for one query); "
            "use backend='math'"
        )
    rows = [r for r in (key_rows, value_rows) if r is not None]
    if any(r.shape[-1] != k.shape[-1] for r in rows):
        raise ValueError(
            f"{type(ctx.position).__name__} gives rows of {rows[0].shape[-1]} dims for keys of head_dim "
            f"{k.shape[-1]}; build it for head_dim={k.shape[-1]}"
        )
    if any(r.shape[1] not in (1, k.shape[1]) for r in rows):  # per-head rows over shared kv heads (GQA)
        k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    if key_rows is not None:
        k = k + key_rows.to(k.dtype)  # (B, H|G, K, D): q . (k + a^K) holds the key term
    if value_rows is not None:
        v = v + value_rows.to(v.dtype)  # (B, H|G, K, D): probs @ (v + a^V) holds the value term
    gqa = k.shape[1] != q.shape[1]
    bias = None if key_rows is not None else score_bias(q, k.shape[-2], ctx)
    if bias is None and ctx.keep is None and (not ctx.causal or q.shape[-2] == k.shape[-2]):
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=ctx.dropout_p, is_causal=ctx.causal, enable_gqa=gqa
        )
    keep = full_keep(q, k, ctx)
    mask: Tensor | None = keep
    if bias is not None:
        bias = _in_dtype(bias, keep, q.dtype)
        mask = bias if keep is None else torch.where(keep, bias, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=ctx.dropout_p, enable_gqa=gqa)
    # rows with no visible key: 0, as in the math path (torch's eager CPU kernel gives 0 there itself: skipped
    # when no gradient is recorded, a pass per layer and token of a decode step; compiled, inductor may lower
    # the call otherwise, and the pass is fused)
    if keep is not None and (torch.is_grad_enabled() or not out.is_cpu or torch.compiler.is_compiling()):
        out = torch.where(keep.any(dim=-1, keepdim=True), out, 0.0)
    return out


def _in_dtype(bias: Tensor, keep: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``bias (.., Q, K)`` in ``dtype`` for SDPA's ``attn_mask``. Cast to bfloat16 or float16 as it is, a bias far
    from 0 on every visible key (ALiBi or Kerple for a query whose near keys are masked or evicted) kept only a
    few of its bits, or became -inf (fp16 past 65,504: the head's output 0); each row is first shifted by its
    largest visible value, which softmax does not see, so the values that matter sit near 0."""
    if bias.dtype == dtype or dtype not in (torch.bfloat16, torch.float16):
        return bias.to(dtype)
    visible = bias if keep is None else bias.masked_fill(~keep, float("-inf"))
    top = visible.amax(dim=-1, keepdim=True)  # (.., Q, 1)
    top = torch.where(torch.isfinite(top), top, 0.0)  # (a row with no visible key: left as it is)
    return (bias - top).to(dtype)


def _cpu_autocast_low(q: Tensor) -> bool:
    """Whether ``q`` is a reduced-precision tensor on a CPU under CPU autocast (mixed-precision training).

    There ``sdpa`` attends in float32: torch's CPU flash attention is slower in bfloat16 than in float32
    (backward 3.4x: 4.9 ms against 1.4 ms at (8, 4, 128, 32) on a 2-core AMD EPYC, torch 2.13), and float32
    is what autocast itself picks for softmax. Autocast still runs the projections in bfloat16, where this CPU
    multiplies 2x faster. Off autocast, or on a GPU (flash kernels want bf16), the inputs' dtype is kept.
    """
    return (
        q.dtype in (torch.bfloat16, torch.float16)
        and q.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
    )


#: Backends by name; ``"auto"`` is accepted wherever a backend is chosen (see :func:`choose_backend`).
BACKENDS: Registry[Backend] = Registry("attention backend", extra=("auto",))
BACKENDS.add("math", math_attention)
BACKENDS.add("sdpa", sdpa_attention)
BACKENDS.add("flex", flex_attention_backend)
#: ``auto``'s memory of a FlexAttention that could not run here.
FALLBACK = Fallback("attention backend")

#: ``auto`` picks ``flex`` only from this many scores per head (``Q * K``) on: below it the materialized bias
#: is small and SDPA needs no kernel compilation.
FLEX_MIN_SCORES = 1 << 20


def choose_backend(name: str, q: Tensor, ctx: AttentionInputs) -> Backend:
    """Resolve ``name`` ("auto" or a key of :data:`BACKENDS`).

    ``auto``, in order:

    1. ``math`` when the encoding needs the attention weights (Shaw's value term), except for one query when
       it gives :meth:`~posenc.PositionEncoding.kv_rows` (a decode step): then ``sdpa``;
    2. ``flex`` when the encoding has a ``score_mod`` (bias encodings, Shaw's key term), there is no dropout,
       ``Q * K >= FLEX_MIN_SCORES``, and FlexAttention can run here: on GPU always; on CPU only when no
       gradient is needed (torch 2.13's FlexAttention has no CPU backward), not in float64 and not while compiling
       (inductor fails to lower a CPU FlexAttention inside an outer compiled graph, torch 2.13); if FlexAttention cannot run on
       this machine (no C++ compiler, say) ``auto`` warns once and uses ``sdpa`` from then on;
    3. ``math`` under ``torch.compile`` on a CPU in mixed precision (:func:`_cpu_autocast_low`) while
       ``Q * K < FLEX_MIN_SCORES``: inductor fuses the bias, mask and softmax; as flash kernels do, the logits
       stay float32 (bf16 operands) and ``probs @ v`` runs in bfloat16. Compiled bf16 training step of the compare
       model, ``math`` over ``sdpa`` in float32 (``benchmarks/compiled_attention.py``, one thread, 2-core AMD
       EPYC, torch 2.13, three runs, when the logits too were bfloat16): rope 0.86-0.88, alibi 0.91-0.92, t5
       0.95-0.96, fire 0.96-0.97, kerple 0.97-1.01; with float32 logits (one run, 2026-11-29) rope 0.90. Not in
       eager mode (unfused, slower than ``sdpa``);
    4. ``sdpa`` otherwise (CPU training, small problems, encodings without a bias).
    """
    if BACKENDS.check(name) == "auto":
        if ctx.position.needs_probs:
            return sdpa_attention if q.shape[-2] == 1 and has_kv_rows(ctx.position) else math_attention
        if _compiled_cpu_mixed(q, ctx):
            return math_attention
        return flex_or_sdpa if _flex_pays(q, ctx) and FALLBACK.usable("flex") else sdpa_attention
    return BACKENDS.get(name)


def has_kv_rows(position: PositionEncoding) -> bool:
    """Whether ``position`` overrides :meth:`~posenc.PositionEncoding.kv_rows`."""
    return type(position).kv_rows is not PositionEncoding.kv_rows


def flex_or_sdpa(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> Tensor:
    """``auto``'s flex: if FlexAttention cannot run on this machine, warn once and use ``sdpa`` from then on.

    Bad input (``ValueError``, ``TypeError``) and out-of-memory errors still raise (see :class:`posenc.fallback.Fallback`);
    a forced ``backend="flex"`` never falls back. Keys or values that need gradients on a CPU (the query
    projection frozen) go to ``sdpa`` here: FlexAttention's CPU backward is missing, not the machine.
    """
    if q.device.type == "cpu" and needs_grad(ctx.position, k, v):
        return sdpa_attention(q, k, v, ctx)
    return FALLBACK.run(
        "flex",
        lambda: flex_attention_backend(q, k, v, ctx),
        lambda: sdpa_attention(q, k, v, ctx),
        slow_name="sdpa",
    )


def _compiled_cpu_mixed(q: Tensor, ctx: AttentionInputs) -> bool:
    """Rule 3 of ``auto`` in :func:`choose_backend`."""
    small = q.shape[-2] * ctx.k_pos.shape[-1] < FLEX_MIN_SCORES
    return torch.compiler.is_compiling() and _cpu_autocast_low(q) and small


def _flex_pays(q: Tensor, ctx: AttentionInputs) -> bool:
    """Rule 2 of ``auto`` in :func:`choose_backend`."""
    if not supports_flex(ctx.position) or ctx.dropout_p > 0:
        return False
    if q.shape[-2] * ctx.k_pos.shape[-1] < FLEX_MIN_SCORES:
        return False
    if q.device.type == "cuda":
        return True
    if q.device.type != "cpu" or torch.compiler.is_compiling():  # (see choose_backend, rule 2)
        return False
    return q.dtype in CPU_FLEX_DTYPES and not needs_grad(ctx.position, q)  # (k, v: see flex_or_sdpa)
