"""Autoregressive sampling from a :class:`posenc.models.TransformerLM`: prefill, then one token at a time.

Keys and values go to preallocated :class:`posenc.attention.static_cache.StaticKVCache` s (one per layer,
written in place at a tensor index), positions and masks are tensors, so every decode step has the same
shapes and the same Python values: ``compile=True`` compiles the step once (``fullgraph=True``; on a CPU with
``cpp_wrapper``, on CUDA with ``mode="reduce-overhead"``, i.e. replayed as a CUDA graph) and reuses it for
every token and every later call with the same batch, length, dtype and device.

Batches of prompts of different lengths are left-padded: ``prompt_mask`` marks the real tokens, each row's
positions count only those (so a padded row decodes exactly like the same prompt alone), and padding slots
are hidden from attention by the mask.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..attention.memory import call_bytes
from ..session import DecodeSession
from ..validation import check_float, check_int, device_memory
from .decoders import _Decoder, _decoder, _decoders

if TYPE_CHECKING:
    from .lm import TransformerLM


def pick(logits: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """Next tokens ``(B,)`` from logits ``(B, V)``: argmax at temperature 0, else a sample from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest (all if None)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.double()  # float64 and the largest at 0: a tiny temperature gives 0 and -inf, never NaN
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1).squeeze(-1)


def _check(
    model: TransformerLM,
    tokens: Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    eos: int | None,
    compile: bool | str,
    prompt_mask: Tensor | None,
    max_len: int | None,
    on_token: object,
) -> tuple[Tensor, int]:
    """Validate everything before any work; return the prompt mask and the cache length."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be an integer tensor (batch, seq), got {type(tokens).__name__}")
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        raise TypeError(f"tokens must be an integer tensor (batch, seq) of token ids, got {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be an integer tensor (batch, seq), got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0:
        raise ValueError(
            f"tokens must hold at least one prompt (row), got batch=0 (shape {tuple(tokens.shape)})"
        )
    if tokens.shape[1] == 0:
        raise ValueError("tokens must hold at least one prompt token per row, got seq=0")
    weight = model.embed.weight
    if tokens.device != weight.device:
        raise ValueError(
            f"tokens are on {tokens.device} but the model on {weight.device}; move one to the other's device"
        )
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, at_least=1, owner="generate")  # (an int now)
    check_float("temperature", temperature, at_least=0, owner="generate")  # finite: 0 = greedy
    vocab = model.head.out_features
    if top_k is not None:
        check_int("top_k", top_k, at_least=1, owner="generate")
    if eos is not None and (isinstance(eos, bool) or not _is_index(eos)):
        raise TypeError(f"eos must be a token id (an integer) or None, got {eos!r} ({type(eos).__name__})")
    if eos is not None and not 0 <= operator.index(eos) < vocab:  # type: ignore[arg-type]
        raise ValueError(
            f"eos must be a token id in [0, {vocab}) (the model's vocabulary) or None, got {eos!r}"
        )
    if max_len is not None:  # (an int: the decoders are keyed on it, a 0-d tensor would miss every time)
        max_len = check_int("max_len", max_len, at_least=1, owner="generate")
    _check_compile(compile)
    if on_token is not None and not callable(on_token):
        raise TypeError(f"on_token must be a callable taking the new tokens (B,) or None, got {on_token!r}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ValueError(f"tokens must lie in [0, {vocab}) (the model's vocabulary)")
    if prompt_mask is not None and not isinstance(prompt_mask, Tensor):
        raise TypeError(
            f"prompt_mask must be a bool tensor shaped like tokens {tuple(tokens.shape)} or None, got "
            f"{type(prompt_mask).__name__}"
        )
    mask = torch.ones_like(tokens, dtype=torch.bool) if prompt_mask is None else prompt_mask
    if mask.dtype != torch.bool or mask.shape != tokens.shape:
        raise ValueError(
            f"prompt_mask must be a bool tensor shaped like tokens {tuple(tokens.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError(
            "prompt_mask must be left padding: per row, False (padding) then True (tokens) to the end"
        )
    # the last new token is returned, never fed back: positions 0 .. S + n - 2, so S + n - 1 slots
    need = tokens.shape[1] + max_new_tokens - 1
    counted = (
        f"prompt {tokens.shape[1]} + max_new_tokens {max_new_tokens} - 1 (the last is not fed back) = {need}"
    )
    limit = model.max_length_in(_compute_dtype(model, tokens.device))
    if limit is not None and need > limit:
        raise ValueError(
            f"the model takes positions below {limit} only (its encoding's limit), but {counted} tokens; ask for "
            "fewer tokens or give a shorter prompt"
        )
    if max_len is not None and need > max_len:
        raise ValueError(
            f"the cache would overflow: {counted} tokens, but max_len={max_len}; raise max_len or ask for fewer "
            "tokens"
        )
    return mask.to(tokens.device), need if max_len is None else max_len


def _is_index(value: object) -> bool:
    """Whether ``value`` is an integer as ``operator.index`` reads one (int, numpy integer, 0-d int tensor)."""
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _check_compile(compile: object) -> None:
    """``compile``: a bool or the name of a registered ``torch.compile`` backend (checked here: torch named it
    only at the first step, as its own ``InvalidBackend``, and took ``""`` as False)."""
    if isinstance(compile, bool):
        return
    if not isinstance(compile, str):
        raise TypeError(f"compile must be a bool or a torch.compile backend name, got {compile!r}")
    known = torch._dynamo.list_backends(exclude_tags=())
    if compile not in known:
        raise ValueError(
            f"compile must be True, False or a torch.compile backend name (inductor, eager, aot_eager, ...: "
            f"torch._dynamo.list_backends()), got {compile!r}"
        )


def memory_needed(
    model: TransformerLM,
    batch: int,
    prompt: int,
    slots: int,
    device: torch.device | None = None,
    *,
    padded: bool = True,
) -> int:
    """Bytes ``generate`` allocates that grow with the prompt and the cache, erring high: every layer's keys and
    values ``(B, Hkv, slots, D)`` and the prompt's own ``(B, Hkv, S, D)`` (the prefill attends over them, then
    copies them to the slots), the prefill's activations (about twelve ``dim``-wide values and two
    vocabulary-wide ones per token: the head's logits of every prompt token), and the most one layer's prefill
    holds of ``(S, S)`` tensors (layers run one at a time) on the backend that layer will run there
    (:func:`posenc.attention.memory.call_bytes`: masks, bias, logits, softmax, and the encoding's own
    intermediates, e.g. FIRE's ``(S, S, width)`` hidden layer). ``device``: where it runs (default: the
    model's). ``padded``: whether the prompt has padding (its key-padding mask is then the prefill's only mask;
    without, attention is plain causal).

    Peak resident memory of a warm ``generate`` (4 new tokens; dim 256, depth 2, 4 heads, batch 1; a fresh
    process, one thread, 2-core AMD EPYC, torch 2.13 CPU, 2026-11-30) over this estimate: at S = 4096 on ``sdpa``
    none and rope 0.56, alibi and t5 0.87, kerple 0.62, fire 0.93; Shaw (``auto``: ``math``) 0.92 (0.67 with
    one head); at S = 2048 on ``auto`` (``flex`` for the biases) 0.48-0.58, on ``math`` 0.67-0.88 (measured while
    the prefill still attended over all ``slots = S + 3``). Before review s6 it counted one ``(B, H, S, slots)``
    float32 tensor: Shaw's prefill took 4-5x that, FIRE's on ``sdpa`` 8x. Since review s7 ``math`` attends a
    block of queries at a time without gradients (:data:`posenc.attention.backends.MATH_BLOCK_BYTES`), and its
    share counts one block."""
    weights = next(model.parameters())
    item = weights.element_size()
    device = weights.device if device is None else device
    dtype = _compute_dtype(model, device)
    layers = model.attention_layers()
    cache = sum(
        2 * batch * a.kv_heads * (slots + prompt) * a.head_dim * item for a in layers
    )  # keys and values
    width, vocab = model.embed.weight.shape[1], model.head.out_features
    activations = batch * prompt * (12 * width + 2 * vocab) * max(item, 4)
    scores = max(
        call_bytes(a, batch, prompt, prompt, dtype=dtype, device=device, grad=False, masked=padded)
        for a in layers
    )
    return cache + activations + scores


def _compute_dtype(model: TransformerLM, device: torch.device) -> torch.dtype:
    """The dtype queries and keys are computed in: autocast's where it is on for ``device`` (an xPos model's
    half-precision limit then applies, checked up front: a float32 model under float16 autocast failed after
    decoding), else the weights'."""
    kind, weights = device.type, model.head.weight.dtype
    if weights == torch.float32 and kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)  # (autocast casts float32 operands only: float64 models stay)
    return weights


def check_memory(
    model: TransformerLM, batch: int, prompt: int, slots: int, device: torch.device, *, padded: bool = True
) -> None:
    """Refuse, before any allocation, a cache and prefill larger than the device's whole memory by
    :func:`memory_needed` (a CPU process would be killed by the system partway, with no message, rather than get an
    error)."""
    total = device_memory(device)
    if total is None:
        return
    need = memory_needed(model, batch, prompt, slots, device, padded=padded)
    if need > total:
        raise ValueError(
            f"generate: a cache of {slots} slots (batch {batch}, {len(model.blocks)} layers) and the prefill of a "
            f"{prompt}-token prompt need about {need / 2**30:.1f} GiB, more than the {total / 2**30:.1f} GiB this "
            f"{device.type} device has; ask for fewer tokens (max_new_tokens), or give a shorter prompt (tokens) or "
            "a smaller max_len"
        )


@torch.no_grad()
def generate(
    model: TransformerLM,
    tokens: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos: int | None = None,
    compile: bool | str = False,
    prompt_mask: Tensor | None = None,
    max_len: int | None = None,
    on_token: Callable[[Tensor], object] | None = None,
) -> Tensor:
    """Continue ``tokens`` by ``max_new_tokens`` tokens. Call ``model.eval()`` first (dropout is not touched).

    The caches and compiled step are kept on the model for the next call: those of the
    ``posenc.models.decoders.KEEP_DECODERS`` most recently used batch/length/dtype/device combinations, freed
    with the model. Calls on one model from several threads run one after the other.

    Args:
        model: a :class:`posenc.models.TransformerLM` (any registered encoding).
        tokens: ``(B, S)`` prompt token ids, left-padded when rows differ in length.
        max_new_tokens: tokens to add (fewer when every row has produced ``eos``).
        temperature: 0 for greedy (argmax), else the softmax temperature of the samples.
        top_k: sample among the ``top_k`` most likely tokens only (None: all).
        eos: a token id that ends a row; later tokens of that row are ``eos``. Stopping early when all rows
            are done costs one host sync per step, so only when ``eos`` is given.
        compile: True compiles the decode step with inductor (once per batch/length/dtype/device); a string
            names another ``torch.compile`` backend (``"eager"``, ``"aot_eager"`` for quick checks). After
            the call's first step the guards are skipped (``torch.compiler.set_stance``, process-wide): meanwhile
            a compiled function meeting new inputs in another thread raises instead of recompiling.
        prompt_mask: ``(B, S)`` bool, True on real tokens and False on the left padding; None = no padding.
        max_len: cache slots per layer (default ``S + max_new_tokens - 1``: the last token is not fed back); too few, or a cache larger than the
            device's memory, raises ``ValueError`` before any work is done.
        on_token: called with each position's new tokens ``(B,)`` (int64, on the model's device) as soon as
            they are picked, before the next step: streaming (``posenc generate`` prints each byte this way).
            Reading them on the host (``.tolist()``) waits for the device on CUDA, once per token.

    Returns:
        ``(B, S + n)`` int64: the prompt followed by the ``n <= max_new_tokens`` new tokens.

    Raises:
        TypeError: ``tokens`` not an integer tensor (float, bool, complex), or an argument of another type.
        ValueError: ``tokens`` not ``(B, S)`` with ``B, S >= 1`` or outside the vocabulary, or another bad
            value; all before any work.
    """
    mask, slots = _check(
        model, tokens, max_new_tokens, temperature, top_k, eos, compile, prompt_mask, max_len, on_token
    )
    max_new_tokens = operator.index(max_new_tokens)  # (numpy integers as ints)
    top_k = None if top_k is None else operator.index(top_k)
    eos = None if eos is None else operator.index(eos)
    padded = prompt_mask is not None and not bool(mask.all())  # (the prefill's only mask)
    check_memory(model, tokens.shape[0], tokens.shape[1], slots, tokens.device, padded=padded)
    with _decoders(model).held():  # one call per model at a time: its decoders' caches are shared state
        dec = _decoder(model, tokens.shape[0], slots, tokens.device, compile)
        return _decode(dec, tokens.long(), mask, max_new_tokens, (temperature, top_k, eos), slots, on_token)


def _decode(
    dec: _Decoder,
    tokens: Tensor,
    mask: Tensor,
    max_new_tokens: int,
    sampling: tuple[float, int | None, int | None],
    slots: int,
    on_token: Callable[[Tensor], object] | None,
) -> Tensor:
    """:func:`generate`'s prefill and decode loop on ``dec``, checked arguments (``tokens: (B, S)`` int64;
    ``sampling``: temperature, top_k, eos)."""
    temperature, top_k, eos = sampling
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, S): real tokens count from 0
    nxt = pick(dec.prefill(tokens, positions, mask), temperature, top_k)  # (B,)
    pos = positions[:, -1:] + 1  # (B, 1) position of the token fed next
    done = None if eos is None else nxt == eos
    out = [nxt]
    if on_token is not None:
        on_token(nxt)
    guarded = contextlib.nullcontext()
    with DecodeSession(slots):  # parameters fixed, positions below `slots`: encodings may keep tables
        for i in range(max_new_tokens - 1):
            if done is not None and bool(done.all()):
                break
            with guarded if i == 0 else dec.trusted():  # guards checked on the call's first step only
                logits = dec.step(nxt.unsqueeze(-1), pos)  # (B, V)
            nxt = pick(logits, temperature, top_k)
            if done is not None and eos is not None:
                nxt = torch.where(done, eos, nxt)
                done = done | (nxt == eos)
            out.append(nxt)
            if on_token is not None:
                on_token(nxt)
            pos = pos + 1
    return torch.cat((tokens, torch.stack(out, dim=-1)), dim=-1)


__all__ = ["generate", "pick"]
