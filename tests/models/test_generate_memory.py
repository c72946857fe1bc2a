"""generate's up-front memory check (``memory_needed`` / ``check_memory``): what it counts per encoding and backend,
and what it refuses. No large allocation: the device's memory is monkeypatched, and a refused call allocates
nothing."""

from __future__ import annotations

import pytest
import torch

from posenc.attention.backends import math_block_rows
from posenc.attention.memory import MASK_BYTES, SDPA_MASK_COPY
from posenc.models import TransformerLM
from posenc.models import generate as gen
from posenc.models.decoders import kept_decoders

S, NEW = 4096, 4  # a prompt past FLEX_MIN_SCORES (auto picks flex for bias encodings there)
SLOTS = S + NEW - 1
PAIRS = S * S  # (query, key) pairs of one layer's prefill, batch 1 (the prompt attends to its own keys)


def _lm(name: str, backend: str = "auto", **options: object) -> TransformerLM:
    return TransformerLM(
        name, dim=256, depth=2, heads=4, backend=backend, position_options=options or None
    ).eval()


def _old_estimate(model: TransformerLM, prompt: int, slots: int) -> int:
    """The estimate before review s6: keys and values, and one (B, H, S, slots) float32 tensor."""
    layers = model.attention_layers()
    return sum(2 * a.kv_heads * slots * a.head_dim * 4 for a in layers) + max(
        a.heads * prompt * slots * 4 for a in layers
    )


def test_a_cache_beyond_the_device_memory_is_refused_before_any_allocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model = TransformerLM("rope", dim=32, depth=2, heads=2).eval()
    tokens = torch.zeros(2, 4, dtype=torch.long)
    need = gen.memory_needed(model, 2, 4, 4 + 61 - 1, padded=False)
    block = model.blocks[0].attn
    cache = (
        len(model.blocks) * 2 * 2 * block.kv_heads * block.head_dim * 4 * (64 + 4)
    )  # keys and values of the 64 slots and of the prompt's own 4, every layer
    activations = 2 * 4 * (12 * 32 + 2 * 256) * 4  # the prefill's hidden states and logits
    assert need == cache + activations  # no padding: plain causal attention, no (S, S) tensor
    scores = 2 * 4 * 4 * (MASK_BYTES + SDPA_MASK_COPY)  # with padding: a bool keep-mask and SDPA's float copy
    assert gen.memory_needed(model, 2, 4, 4 + 61 - 1, padded=True) == need + scores
    monkeypatch.setattr(gen, "device_memory", lambda device: need - 1)
    with pytest.raises(
        ValueError, match=r"a cache of 64 slots \(batch 2, 2 layers\) and the prefill of a 4-token"
    ):
        model.generate(tokens, 61)
    assert kept_decoders(model) == []  # refused before a decoder (and its caches) existed
    monkeypatch.setattr(gen, "device_memory", lambda device: need)
    assert model.generate(tokens, 61, temperature=0).shape == (2, 65)


def test_the_prefill_estimate_counts_what_each_encoding_materializes_on_its_backend() -> None:
    """Review s6: one (B, H, S, slots) float32 tensor was counted for every encoding; Shaw's math path holds about
    four of them at once, FIRE's sdpa path a (S, slots, width) hidden layer (8x at 4 heads and width 32)."""
    rope = gen.memory_needed(_lm("rope"), 1, S, SLOTS)
    one = 4 * 4 * PAIRS  # one (H, S, slots) float32 tensor
    # rope: sdpa with a keep-mask, no (H, S, slots) tensor
    fire = gen.memory_needed(_lm("fire", "sdpa"), 1, S, SLOTS) - rope
    assert fire == PAIRS * (4 * (32 + 4 + 2) - SDPA_MASK_COPY)  # the MLP's hidden layer, distance and output
    assert fire > 9 * one
    wide = gen.memory_needed(_lm("fire", "sdpa", width=64), 1, S, SLOTS) - rope
    assert wide - fire == PAIRS * 4 * 32  # 32 more hidden units, 4 bytes each per pair
    shaw = (
        gen.memory_needed(_lm("shaw"), 1, S, SLOTS) - rope
    )  # auto: math (Shaw's value term needs the weights), a block of 1,024 queries at a time (no gradients)
    rows = math_block_rows(1, 4, S, S)
    assert rows == 1024
    # per block: logits, bias, softmax, zeroed rows (four at once) and masks; the caller's keep-mask whole
    assert shaw == S * rows * (4 * 4 * 4 + MASK_BYTES) + PAIRS * (MASK_BYTES // 4) - PAIRS * (
        MASK_BYTES + SDPA_MASK_COPY
    )
    # the bias and its masked copy; Kerple's own peak is higher (r2 |i - j|, its log1p and the bias)
    for name, per_pair in (("t5", 2 * 16), ("alibi", 2 * 16), ("kerple", 3 * 16)):
        on_sdpa = gen.memory_needed(_lm(name, "sdpa"), 1, S, SLOTS) - rope
        assert on_sdpa == PAIRS * (per_pair - SDPA_MASK_COPY)
        assert (
            gen.memory_needed(_lm(name), 1, S, SLOTS) == rope - PAIRS * SDPA_MASK_COPY
        )  # auto: flex, masks only


def test_a_prefill_the_old_estimate_admitted_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s6: a Shaw prompt of 32,768 tokens and a FIRE (sdpa) one of 16,384 passed the check (the estimate
    counted a quarter and an eighth of their prefill) and the process would have been killed without a message.
    (Shaw's prefill now runs in blocks of queries: see the next test.)"""
    for name, backend, prompt in (("fire", "sdpa", 16384),):
        model = _lm(name, backend)
        old = _old_estimate(model, prompt, prompt + NEW - 1)
        monkeypatch.setattr(gen, "device_memory", lambda device, total=2 * old: total)
        tokens = torch.zeros(1, prompt, dtype=torch.long)
        with pytest.raises(ValueError, match=f"the prefill of a {prompt}-token prompt need about"):
            model.generate(tokens, NEW)
        assert kept_decoders(model) == []
        assert gen.memory_needed(model, 1, prompt, prompt + NEW - 1) > 3 * old


def test_shaw_prefill_in_blocks_needs_a_block_not_the_square() -> None:
    """Review s6 refused a Shaw prompt of 32,768 tokens (about 17 GB of (H, S, S) tensors at once); since review s7
    ``math`` attends a block of queries at a time without gradients, and the estimate counts one block."""
    prompt = 32768
    need = gen.memory_needed(_lm("shaw"), 1, prompt, prompt + NEW - 1, padded=False)
    square = 4 * 4 * 4 * prompt**2  # four (H, S, S) float32 tensors
    assert need < square / 30


def test_an_unknown_device_memory_is_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen, "device_memory", lambda device: None)
    gen.check_memory(_lm("fire", "sdpa"), 1, 10**6, 10**6, torch.device("cpu"))  # nothing to compare with
