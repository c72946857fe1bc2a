"""The ``flex`` attention backend: FlexAttention with the encoding's ``score_mod`` and a block-sparse mask.

The bias is evaluated per score inside the kernel from small captured tensors (slopes, tables, positions),
so no ``(heads, Q, K)`` tensor is built. Causal masking uses a :class:`BlockMask` built directly from block
indices (``O((n / 128)^2)`` memory, cached per shape); key padding is a ``mask_mod`` reading the user's mask.

Eager FlexAttention is a reference that materializes the scores; :func:`flex_kernel` therefore returns
``torch.compile(flex_attention)`` (or the plain function when already inside ``torch.compile``). Each new
encoding type, shape or mask kind compiles once (seconds); on a CPU, where shapes are static, a causal or masked
call runs with its queries (and as many more keys) padded to a bucketed length (:func:`cpu_bucket`), so a new
length rarely means a new compile.
In torch 2.13 FlexAttention has no backward on CPU.

Shape key: ``B`` batch, ``H`` query heads, ``G`` kv heads, ``Q`` queries, ``K`` keys, ``D`` head_dim.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ..base import PositionEncoding, ScoreMod
from .inputs import AttentionInputs, check_inputs, hook_options, score_bias

log = logging.getLogger(__name__)
BLOCK = 128
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
#: Room for recompilations of the compiled kernel (one per encoding type, shape and mask kind), set around
#: posenc's own calls only; dynamo's default of 8 would silently fall back to the materializing eager path.
RECOMPILE_LIMIT = 64
_compiled: dict[tuple[object, ...], Callable[..., Any]] = {}


def flex_kernel(device: torch.device, *callables: object) -> Callable[..., Any]:
    """``flex_attention`` compiled once per device type and :func:`structure` of the ``callables`` it will be given
    (the ``score_mod`` and the block mask's ``mask_mod``); plain inside an outer ``torch.compile``.

    Each structure gets a copy of ``flex_attention`` with a code object of its own, and so its own dynamo cache:
    with one cache for all, a call whose closures were shaped otherwise than an earlier compile's (Kerple's per-row
    positions after FIRE's cached decode) failed inside dynamo, which read the earlier guards' closure cells on
    the new call's closures ("IndexError: tuple index out of range"). A new structure compiled anyway.
    CPU compiles with static shapes: torch 2.13's CPU FlexAttention template miscompiles dynamic sizes.
    """
    if torch.compiler.is_compiling():
        return flex_attention
    key = (device.type, *(structure(f) for f in callables))
    kernel = _compiled.get(key)
    if kernel is None:
        kernel = torch.compile(own_code(flex_attention), dynamic=False if device.type == "cpu" else None)
        _compiled[key] = kernel
    return kernel


def structure(fn: object, depth: int = 0) -> object:
    """What dynamo's guards on a callable argument reach into: its code object and, recursively, what its closure
    cells hold (callables by structure, anything else by type); a bound method's ``self`` by type."""
    code = getattr(fn, "__code__", None)
    if code is None or depth > 8:
        return type(fn)
    cells = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            cells.append(structure(cell.cell_contents, depth + 1))
        except ValueError:  # an empty cell
            cells.append(None)
    owner = getattr(fn, "__self__", None)
    return (code, type(owner), tuple(cells))


def own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a copy of its code object: dynamo keeps its compiled entries on the code object."""
    copy = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    functools.update_wrapper(copy, fn)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


def _recompile_room() -> contextlib.AbstractContextManager[object]:
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)


def supports_flex(position: PositionEncoding) -> bool:
    """True when ``position`` provides its bias as a ``score_mod`` (so ``flex`` builds no n x n tensor)."""
    return type(position).score_mod is not PositionEncoding.score_mod


def needs_grad(position: PositionEncoding, *tensors: Tensor) -> bool:
    """Whether autograd will want gradients through this attention call: of any of ``tensors`` (q, k, v: keys and
    values alone train when the query projection is frozen, as in LoRA on k and v) or the encoding's parameters."""
    return torch.is_grad_enabled() and (
        any(t.requires_grad for t in tensors) or any(p.requires_grad for p in position.parameters())
    )


#: the dtypes torch's CPU FlexAttention kernel takes (float64 fails inside inductor's lowering).
CPU_FLEX_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def flex_attention_backend(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> Tensor:
    """FlexAttention with the encoding's ``score_mod``; rows with no visible key give 0, as in ``math``.

    Encodings with a ``score_bias`` but no ``score_mod`` still work: their materialized bias is read by index.

    Raises:
        ValueError: the encoding needs the attention weights (use ``math``), dropout is on (use ``sdpa``), or
            gradients are wanted on CPU (no FlexAttention backward there).
        TypeError: float64 on CPU (not in :data:`CPU_FLEX_DTYPES`).
    """
    check_inputs(q, k, v, ctx)
    if ctx.position.needs_probs:
        raise ValueError(f"{type(ctx.position).__name__} needs the attention weights; use backend='math'")
    if ctx.dropout_p > 0:
        raise ValueError("FlexAttention has no attention dropout; use backend='sdpa' or dropout=0")
    if q.device.type == "cpu" and needs_grad(ctx.position, q, k, v):
        raise ValueError(
            "FlexAttention has no backward on CPU in this torch; use backend='sdpa' (or 'auto') to train, "
            "or run under torch.no_grad()"
        )
    if q.device.type == "cpu" and q.dtype not in CPU_FLEX_DTYPES:
        raise TypeError(
            f"FlexAttention on CPU takes float32, float16 and bfloat16 queries, got {q.dtype}; use backend='sdpa' "
            "or 'math' (or 'auto', which does not pick flex then)"
        )
    if q.numel() == 0 or k.shape[-2] == 0:  # no score at all (the compiled kernel divides by zero blocks;
        # an empty batch with a mask failed in inductor's lowering)
        return q.new_zeros(q.shape[:-1] + v.shape[-1:])  # (B, H, Q, Dv): no key visible gives 0, as in math
    if pads_to_bucket(q, k, ctx):
        return _bucketed(q, k, v, ctx)
    options = hook_options(ctx)
    score_mod = ctx.position.score_mod(q, ctx.q_pos, ctx.k_pos, **options)
    if score_mod is None:
        bias = score_bias(q, k.shape[-2], ctx)
        score_mod = None if bias is None else materialized_score_mod(bias)
    block_mask = build_block_mask(q.shape[-2], k.shape[-2], ctx.causal, ctx.keep, q.device)
    gqa = k.shape[1] != q.shape[1]
    key = (
        q.device.type,
        type(ctx.position).__name__,
        q.dtype,
        q.shape[-1],
        needs_grad(ctx.position, q, k, v),
    )
    kernel = flex_kernel(q.device, score_mod, None if block_mask is None else block_mask.mask_mod)
    with _recompile_room():
        return run_fitted(kernel, key, q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=gqa)


def cpu_bucket(n: int) -> int:
    """The length a CPU ``flex`` call of ``n`` causal queries and keys runs at: ``n`` rounded up to a multiple of
    ``max(BLOCK, 2**(bit_length(n) - 4))`` (128 up to 2,047; 256 up to 4,095; ...), so under an eighth more
    rows from ``n = 1024`` on (below, up to 127 more: 129 runs at 256) and at most eight compiled shapes per
    octave of lengths."""
    step = max(BLOCK, 1 << max(n.bit_length() - 4, 0))
    return -(-n // step) * step


def pads_to_bucket(q: Tensor, k: Tensor, ctx: AttentionInputs) -> bool:
    """Whether this call runs at :func:`cpu_bucket` length: on a CPU (where the kernel is compiled for static
    shapes, a few seconds per new length: scoring texts or prefilling prompts of many lengths would compile for
    each, and after :data:`RECOMPILE_LIMIT` shapes fall back to the materializing eager path), outside an outer
    ``torch.compile``, when the padded keys can be hidden (a causal mask, or a keep-mask), at a query count
    that is not a bucket already."""
    n = q.shape[-2]
    hidden = ctx.causal or ctx.keep is not None
    return hidden and q.device.type == "cpu" and not torch.compiler.is_compiling() and cpu_bucket(n) != n


def _bucketed(q: Tensor, k: Tensor, v: Tensor, ctx: AttentionInputs) -> Tensor:
    """:func:`flex_attention_backend` with the ``Q`` queries padded to :func:`cpu_bucket` ``(Q)`` and the keys by as
    many zero rows at the end (so ``K - Q``, the causal shift, stays; a prefill of ``S`` prompt tokens into
    ``S + n`` cache slots runs at one shape per bucket for a given ``n``), positions continued one by one (so
    consecutive positions stay consecutive), a keep-mask padded with False, the padded queries' rows dropped.
    No real query sees a padded key (the causal mask stops at key ``K - 1`` for query ``Q - 1``; the keep-mask
    hides them), so each real row has the keys and biases of the unpadded call (equal to ``math`` within
    rounding, as the unpadded kernel; tested)."""
    n = q.shape[-2]
    extra = cpu_bucket(n) - n

    def rows(t: Tensor) -> Tensor:  # (B, *, L, D) -> (B, *, L + extra, D)
        return F.pad(t, (0, 0, 0, extra))

    def positions(p: Tensor) -> Tensor:  # (1|B, L) -> (1|B, L + extra)
        return torch.cat((p, p[:, -1:] + torch.arange(1, extra + 1, device=p.device)), dim=-1)

    keep = ctx.keep  # (1|B, 1|H, 1|Q, K) -> (1|B, 1|H, 1|Q+extra, K+extra), False where padded
    if keep is not None:
        keep = F.pad(keep, (0, extra, 0, extra if keep.shape[-2] == n else 0), value=False)
    q_pos = positions(ctx.q_pos)  # one tensor for both when they were one (dynamo guards the aliasing)
    k_pos = q_pos if ctx.k_pos is ctx.q_pos else positions(ctx.k_pos)
    inner = replace(ctx, q_pos=q_pos, k_pos=k_pos, keep=keep)
    return flex_attention_backend(rows(q), rows(k), rows(v), inner)[:, :, :n]  # (B, H, Q, Dv)


#: Smaller tiles tried in turn when the default FlexAttention kernel does not fit the GPU's shared memory (T5's
#: captured table at bfloat16, head_dim 64, asked an H200 for 245,760 bytes of its 232,448). The backward kernel
#: takes its own tiles, ``bwd_``-prefixed (``BLOCK_M1``/``N1``/``M2``/``N2``; unprefixed ``BLOCK_M``/``N`` are the
#: forward's), in torch's own pattern ``M1 = N2 = m, N1 = M2 = n`` (``n % m == 0``, as its kernel asserts), all
#: dividing the 128-wide mask blocks; ``num_stages`` applies to both.
FITTING_OPTIONS: tuple[dict[str, int], ...] = (
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2}
    | {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 32},
    {"BLOCK_M": 32, "BLOCK_N": 32, "num_stages": 1}
    | {"bwd_BLOCK_M1": 16, "bwd_BLOCK_N1": 32, "bwd_BLOCK_M2": 32, "bwd_BLOCK_N2": 16},
)
#: The kernel options that worked, per (device type, encoding type, dtype, head_dim, backward wanted).
_fitted: dict[tuple[object, ...], dict[str, int] | None] = {}


def _out_of_resource(err: Exception) -> bool:
    text = str(err)
    return "out of resource" in text or "No valid triton configs" in text


def run_fitted(kernel: Callable[..., Any], key: tuple[object, ...], *args: Tensor, **kwargs: Any) -> Any:
    """``kernel(*args, kernel_options=..., **kwargs)`` with the default options, then each of
    :data:`FITTING_OPTIONS` while compilation fails for lack of shared memory; the options that worked are
    remembered per ``key``, so each case searches once. Any other error propagates at once."""
    ladder = [_fitted[key]] if key in _fitted else [None, *FITTING_OPTIONS]
    for i, options in enumerate(ladder):
        try:
            out = kernel(*args, kernel_options=options, **kwargs)
        except Exception as err:
            if i + 1 < len(ladder) and _out_of_resource(err) and not torch.compiler.is_compiling():
                log.warning("posenc: FlexAttention kernel does not fit (%s); trying %s", err, ladder[i + 1])
                continue
            raise
        _fitted[key] = options
        return out
    raise AssertionError("unreachable: the ladder is never empty")


def materialized_score_mod(bias: Tensor) -> ScoreMod:
    """A ``score_mod`` adding ``bias[b, h, q, kv]`` for a bias broadcastable to ``(B, H, Q, K)``."""
    read = broadcast_reader(bias.float())
    return lambda score, b, h, q_idx, kv_idx: score + read(b, h, q_idx, kv_idx)


def broadcast_reader(t: Tensor) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """``(b, h, q, kv) -> t[b, h, q, kv]`` for a 4-d ``t`` (fewer dims are left-padded), size-1 dims read at 0."""
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    b1, h1, q1, k1 = (t.shape[d] == 1 for d in range(4))
    zero = 0

    def read(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return t[zero if b1 else b, zero if h1 else h, zero if q1 else q, zero if k1 else kv]

    return read


def build_block_mask(
    q_len: int, k_len: int, causal: bool, keep: Tensor | None, device: torch.device
) -> BlockMask | None:
    """The :class:`BlockMask` for a causal mask (key ``j`` visible to query ``i`` when ``j <= i + K - Q``)
    and / or a keep-mask ``(1|B, 1|H, 1|Q, K)``; None when nothing is masked.

    A pure causal mask depends on ``(Q, K, device)`` only and is built once per shape (building one costs about a
    millisecond of host time, more than a whole GPU kernel at small sizes). With a keep-mask every visited block
    applies the ``mask_mod`` (no block is "full"), since padding can fall anywhere.
    """
    if not causal and keep is None:
        return None
    if keep is None and not torch.compiler.is_compiling():
        return _cached_causal_mask(q_len, k_len, device)
    return _block_mask(q_len, k_len, causal, keep, device)


@functools.lru_cache(maxsize=64)
def _cached_causal_mask(q_len: int, k_len: int, device: torch.device) -> BlockMask:
    """Built outside inference mode even when first asked for inside it: a mask made of inference tensors, cached
    and then met by a training step, cannot be saved for backward (autograd refuses inference tensors)."""
    with torch.inference_mode(False):
        return _block_mask(q_len, k_len, True, None, device)


def _block_mask(q_len: int, k_len: int, causal: bool, keep: Tensor | None, device: torch.device) -> BlockMask:
    kv_num, kv_idx, full_num, full_idx = causal_blocks(q_len, k_len, causal, keep is None, device)
    shift = k_len - q_len
    read_keep = None if keep is None else broadcast_reader(keep)

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        visible = kv_idx <= q_idx + shift if causal else kv_idx >= 0
        return visible if read_keep is None else visible & read_keep(b, h, q_idx, kv_idx)

    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(q_len, k_len)
    )


def causal_blocks(
    q_len: int, k_len: int, causal: bool, full_blocks: bool, device: torch.device
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Block indices for :meth:`BlockMask.from_kv_blocks`: ``(1, 1, nQ)`` counts, ``(1, 1, nQ, nK)`` indices.

    A block is "partial" when some but not all of its scores are visible (the ``mask_mod`` runs there) and
    "full" when all are (only when ``full_blocks``; otherwise such blocks are partial too). Non-causal: every
    block is partial.
    """
    nq, nk = -(-q_len // BLOCK), -(-k_len // BLOCK)
    q_first = torch.arange(nq, device=device) * BLOCK  # (nQ,)
    k_first = torch.arange(nk, device=device) * BLOCK  # (nK,)
    q_last, k_last = q_first + BLOCK - 1, k_first + BLOCK - 1
    # blocks reaching past the sequence are never full (as in create_block_mask)
    inside = (q_last < q_len)[:, None] & (k_last < k_len)[None, :]
    shift = k_len - q_len
    if causal:
        some = k_first[None, :] <= q_last.clamp(max=q_len - 1)[:, None] + shift  # (nQ, nK)
        every = (k_last[None, :] <= q_first[:, None] + shift) & inside
    else:
        some = torch.ones(nq, nk, dtype=torch.bool, device=device)
        every = some & inside
    partial = some & ~every if full_blocks else some
    full = every if full_blocks else None
    kv_num, kv_idx = _to_indices(partial)
    if full is None:
        return kv_num, kv_idx, None, None
    full_num, full_idx = _to_indices(full)
    return kv_num, kv_idx, full_num, full_idx


def _to_indices(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """``(nQ, nK)`` bool -> counts ``(1, 1, nQ)`` and indices ``(1, 1, nQ, nK)`` (selected blocks first), int32."""
    num = blocks.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num[None, None], idx[None, None]
