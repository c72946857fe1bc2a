"""Memory estimates (posenc.attention.memory, generate's memory_needed, training_bytes) in the cases the
existing tests leave open: one head (where an encoding's own peak outgrows four (H,) tensors), float64 and
bfloat16 models, and one training layer's own peak on top of what every layer keeps."""

from __future__ import annotations

import pytest
import torch

from posenc.attention.memory import MASK_BYTES, SDPA_MASK_COPY, pair_bytes
from posenc.models import TransformerLM
from posenc.models import generate as gen


def _attn(name: str, heads: int, backend: str = "auto", **options: object):  # type: ignore[no-untyped-def]
    model = TransformerLM(
        name, dim=64, depth=1, heads=heads, backend=backend, position_options=options or None
    )
    return model.attention_layers()[0]


@pytest.mark.parametrize(
    ("name", "kind", "per_pair"),
    [
        # math, one head: logits and bias (2 x 4) beside Shaw's own peak (the gathered key term, 4, and two int64
        # row indices, 16) outgrow four (H,) tensors (16)
        ("shaw", "math", 2 * 4 + 4 + 16),
        # sdpa, one head: the encoding's own peak (the (H,) bias and int64 distances, 16) outgrows the bias and
        # its masked copy (2 x 4)
        ("t5", "sdpa", 4 + 16),
        ("alibi", "sdpa", 4 + 16),
        ("kerple", "sdpa", 2 * 4 + 16),
        ("fire", "sdpa", 4 * (32 + 1 + 2)),
    ],
)
def test_one_head_peak_is_the_encodings_own(name: str, kind: str, per_pair: int) -> None:
    attn = _attn(name, heads=1)
    assert pair_bytes(attn, kind, 4, grad=False, masked=True) == per_pair + MASK_BYTES


def _parts(model: TransformerLM, batch: int, prompt: int, slots: int, item: int) -> int:
    """Keys and values (slots and the prompt's own) and the prefill's activations, logits in float32 or better."""
    layers = model.attention_layers()
    cache = sum(2 * batch * a.kv_heads * (slots + prompt) * a.head_dim * item for a in layers)
    return cache + batch * prompt * (12 * 64 + 2 * 256) * max(item, 4)


def test_a_float64_model_counts_float64_logits() -> None:
    """Shaw on math in float64: every (H,) tensor and its own key term are 8 bytes a head, as its logits are."""
    torch.manual_seed(0)
    model = TransformerLM("shaw", dim=64, depth=2, heads=4).double().eval()
    s, slots = 64, 70
    per_pair = max(4 * 8 * 4, 2 * 8 * 4 + (8 * 4 + 16)) + MASK_BYTES
    assert gen.memory_needed(model, 1, s, slots) == _parts(model, 1, s, slots, 8) + s * s * per_pair


def test_a_bfloat16_model_counts_float32_activations() -> None:
    """The prefill's hidden states and logits of a bfloat16 model: counted at 4 bytes (float32 or better), as
    its logits are computed; the cache at 2."""
    torch.manual_seed(0)
    model = TransformerLM("rope", dim=64, depth=2, heads=4).to(torch.bfloat16).eval()
    s, slots = 64, 70
    scores = s * s * (MASK_BYTES + SDPA_MASK_COPY)  # sdpa, no bias: a bool keep-mask and SDPA's float copy
    assert gen.memory_needed(model, 1, s, slots) == _parts(model, 1, s, slots, 2) + scores


@pytest.mark.parametrize(
    ("name", "kept", "peak"),
    [
        # sdpa: kept the masked bias (16) and the masks (4); peak: the bias and its masked copy (32), masks (4)
        ("alibi", 16 + 4, 2 * 16 + 4),
        # math: kept the weights (16), two int64 indices (16), masks (4); peak: four (H,) tensors (64), masks (4),
        # and the indices kept by the key and value terms (16)
        ("shaw", 16 + 16 + 4, 64 + 4 + 16),
    ],
)
def test_training_counts_one_layers_own_peak_on_top(name: str, kept: int, peak: int) -> None:
    from posenc.experiments.memory import training_bytes
    from posenc.experiments.train import TrainConfig

    one = TrainConfig(dim=128, depth=1, heads=4, train_len=512, batch_size=1)
    assert training_bytes(one, name) - training_bytes(one) == 512 * 512 * (kept + peak)


def test_training_counts_six_float32_copies_of_every_weight() -> None:
    """Weights, gradients, AdamW's two moments and its temporaries: at least 6 x 4 bytes per parameter (12 dim^2 a
    layer); one token's activations (a few dozen dim-wide values) are far below one more such copy."""
    from dataclasses import replace

    from posenc.experiments.memory import training_bytes
    from posenc.experiments.train import TrainConfig

    one = TrainConfig(dim=128, depth=1, heads=4, train_len=1, batch_size=1)
    layer = training_bytes(replace(one, depth=2)) - training_bytes(one)
    weights = 12 * 128 * 128
    assert 6 * 4 * weights <= layer < 7 * 4 * weights
