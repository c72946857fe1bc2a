"""RoPE scaling: every method equals transformers' ROPE_INIT_FUNCTIONS, validators, and RoPE integration."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import posenc
from posenc.functional import rope_cos_sin, rope_inv_freq
from posenc.rotary.scaling import available_scalings, parse_scaling, scaled_inv_freq

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from posenc.hf import rope_from_config  # noqa: E402

MAX_POS = 64  # the config's max_position_embeddings; the "original" length of the scalings below is 16
ORIGINAL = 16


def hf_config(
    head_dim: int, base: float, rope: dict[str, Any], partial: float | None = None, max_pos: int = MAX_POS
) -> Any:
    params = {"rope_theta": base, **rope}
    if partial is not None:
        params["partial_rotary_factor"] = partial
    return LlamaConfig(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        head_dim=head_dim,
        num_hidden_layers=1,
        vocab_size=10,
        max_position_embeddings=max_pos,
        rope_parameters=params,
    )


def rope_dict(kind: str, factor: float, rotary_dim: int) -> dict[str, Any]:
    if kind == "default":
        return {"rope_type": "default"}
    if kind in ("linear", "dynamic"):
        return {"rope_type": kind, "factor": factor}
    if kind == "yarn":
        return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": ORIGINAL}
    if kind == "llama3":
        return {
            "rope_type": "llama3",
            "factor": factor,
            "original_max_position_embeddings": ORIGINAL,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        }
    assert kind == "longrope"
    p = rotary_dim // 2
    return {
        "rope_type": "longrope",
        "factor": factor,
        "original_max_position_embeddings": ORIGINAL,
        "short_factor": [1.0 + 0.1 * i for i in range(p)],
        "long_factor": [1.0 + factor * i / p for i in range(p)],
    }


def hf_compute(config: Any, kind: str, seq_len: int | None) -> tuple[torch.Tensor, float]:
    if kind == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[kind](config, torch.device("cpu"), seq_len=seq_len)


KINDS = ["default", "linear", "dynamic", "yarn", "llama3", "longrope"]
GRID = [(hd, base, f) for hd in (16, 64, 128) for base in (10000.0, 500000.0) for f in (2.0, 4.5, 8.0)]


@pytest.mark.parametrize("kind", KINDS)
def test_inv_freq_and_attention_factor_equal_transformers(kind: str) -> None:
    for head_dim, base, factor in GRID:
        config = hf_config(head_dim, base, rope_dict(kind, factor, head_dim))
        rope = rope_from_config(config, cache_len=8)
        for seq_len in (None, MAX_POS // 2, ORIGINAL + 1, MAX_POS + 1, 5 * MAX_POS):
            want, want_att = hf_compute(config, kind, seq_len)
            scaling = rope.scaling
            got, got_att = scaled_inv_freq(scaling, rope.rotary_dim, rope.base, seq_len)
            torch.testing.assert_close(got.float(), want.float(), atol=1e-6, rtol=0)
            assert abs(got_att - want_att) <= 1e-6
            if seq_len is None:  # the module's construction-time tables
                torch.testing.assert_close(rope.inv_freq.float(), want.float(), atol=1e-6, rtol=0)
                assert abs(rope.attention_scale - want_att) <= 1e-6


@pytest.mark.parametrize("kind", ["linear", "yarn", "llama3", "longrope"])
def test_partial_rotary_and_yarn_variants_equal_transformers(kind: str) -> None:
    config = hf_config(64, 10000.0, rope_dict(kind, 4.0, 32), partial=0.5)
    rope = rope_from_config(config)
    assert rope.rotary_dim == 32
    want, want_att = hf_compute(config, kind, None)
    torch.testing.assert_close(rope.inv_freq.float(), want, atol=1e-6, rtol=0)
    assert abs(rope.attention_scale - want_att) <= 1e-6


@pytest.mark.parametrize(
    "extra",
    [
        {"beta_fast": 16, "beta_slow": 2},
        {"mscale": 0.707, "mscale_all_dim": 0.707},  # DeepSeek-V3
        {"mscale": 1.0, "mscale_all_dim": 0.5},
        {"attention_factor": 1.3},
        {"truncate": False},
        {"factor": 1.0},
        # the ramp's two ends meet (transformers moves one by 0.001 rather than divide by zero)
        {"beta_fast": 1, "beta_slow": 1, "truncate": False},
        {"beta_fast": 1, "beta_slow": 1, "original_max_position_embeddings": 6},  # both round to dim 0
    ],
)
def test_yarn_options_equal_transformers(extra: dict[str, Any]) -> None:
    rope_params = {**rope_dict("yarn", 6.0, 64), **extra}
    config = hf_config(64, 50000.0, rope_params)
    rope = rope_from_config(config)
    want, want_att = hf_compute(config, "yarn", None)
    assert torch.isfinite(rope.inv_freq).all()
    torch.testing.assert_close(rope.inv_freq.float(), want, atol=1e-6, rtol=0)
    assert abs(rope.attention_scale - want_att) <= 1e-6


def test_config_defaults_filled_like_transformers() -> None:
    # yarn/longrope without original length or factor: transformers fills them from max_position_embeddings
    config = hf_config(32, 10000.0, {"rope_type": "yarn", "factor": 4.0})
    rope = rope_from_config(config)
    assert rope.scaling == posenc.YaRNScaling(4.0, MAX_POS)
    torch.testing.assert_close(rope.inv_freq.float(), hf_compute(config, "yarn", None)[0], atol=1e-6, rtol=0)
    phi = {"rope_type": "longrope", "short_factor": [1.0] * 16, "long_factor": [3.0] * 16}
    config = hf_config(32, 10000.0, phi)
    config.original_max_position_embeddings = 8  # Phi-3 keeps it outside the rope dict
    config.standardize_rope_params()
    rope = rope_from_config(config)
    assert rope.scaling.factor == MAX_POS / 8
    for seq_len in (None, 9):
        want, want_att = hf_compute(config, "longrope", seq_len)
        got, got_att = scaled_inv_freq(rope.scaling, 32, rope.base, seq_len)
        torch.testing.assert_close(got.float(), want, atol=1e-6, rtol=0)
        assert abs(got_att - want_att) <= 1e-6


def test_static_ntk_formula_and_dynamic_at_a_length() -> None:
    r, base, s = 32, 10000.0, 3.0
    ntk, att = scaled_inv_freq(posenc.NTKScaling(s), r, base)
    torch.testing.assert_close(ntk, rope_inv_freq(r, base * s ** (r / (r - 2))), atol=0, rtol=1e-12)
    assert att == 1.0
    # lowest frequency interpolated by exactly s, highest kept
    plain = rope_inv_freq(r, base)
    assert math.isclose(ntk[-1].item(), plain[-1].item() / s, rel_tol=1e-12)
    assert ntk[0].item() == plain[0].item() == 1.0
    # dynamic NTK at length L is static NTK with s' = s*L/L0 - (s-1)
    dyn = posenc.DynamicNTKScaling(s, 100)
    got, _ = scaled_inv_freq(dyn, r, base, 250)
    torch.testing.assert_close(
        got, scaled_inv_freq(posenc.NTKScaling(s * 2.5 - (s - 1)), r, base)[0], rtol=1e-12, atol=0
    )


def test_dynamic_identical_to_plain_up_to_original_length_then_rescaled() -> None:
    plain = posenc.RoPE(16, cache_len=8)
    dyn = posenc.RoPE(
        16,
        cache_len=8,
        scaling={"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 20},
    )
    q, k = torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16)
    for n in (5, 20):  # inside and past the cache, up to L0: bit-identical
        for pos in (None, torch.arange(n), torch.arange(3, n)):
            s = n if pos is None else pos.numel()
            a, b = plain(q[:, :, :s], k[:, :, :s], pos), dyn(q[:, :, :s], k[:, :, :s], pos)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # past L0: frequencies from max(position) + 1, as transformers (seq_len = max(position_ids) + 1)
    pos = torch.arange(5, 26)
    cos, _ = dyn.cos_sin(21, pos, q.device)
    inv = scaled_inv_freq(dyn.scaling, 16, 10000.0, 26)[0]
    torch.testing.assert_close(cos, rope_cos_sin(pos, inv)[0], atol=0, rtol=0)
    assert not torch.allclose(cos, plain.cos_sin(21, pos, q.device)[0])
    assert torch.equal(dyn.inv_freq, plain.inv_freq)  # forward never touched module state


def test_longrope_switches_at_original_length() -> None:
    short, long = [1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]
    rope = posenc.RoPE(8, scaling=posenc.LongRoPEScaling(short, long, 10, factor=4.0), cache_len=64)
    plain = rope_inv_freq(8)
    torch.testing.assert_close(
        rope.inv_freq_for(torch.arange(10)), plain / torch.tensor(short, dtype=torch.float64)
    )
    torch.testing.assert_close(
        rope.inv_freq_for(torch.arange(11)), plain / torch.tensor(long, dtype=torch.float64)
    )
    assert rope.attention_scale == pytest.approx(math.sqrt(1 + math.log(4.0) / math.log(10)))
    x = torch.randn(1, 1, 11, 8)
    full, _ = rope(x, x)  # default positions past L0 must not use the (short) cached table
    torch.testing.assert_close(full, rope(x, x, torch.arange(11))[0], atol=0, rtol=0)


def test_dynamic_compiles_fullgraph() -> None:
    rope = posenc.RoPE(8, cache_len=4, scaling=posenc.DynamicNTKScaling(2.0, 6))
    q = torch.randn(1, 2, 9, 8)
    pos = torch.arange(9)
    compiled = torch.compile(rope, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, q, pos)[0], rope(q, q, pos)[0])


def test_dict_and_object_agree_and_round_trip() -> None:
    obj = posenc.YaRNScaling(4.0, 128, beta_fast=16.0)
    d = obj.to_dict()
    assert d["rope_type"] == "yarn" and parse_scaling(d) == obj
    a = posenc.RoPE(32, scaling=obj)
    b = posenc.build("rope", head_dim=32, scaling=d)
    assert torch.equal(a.cos_cached, b.cos_cached)
    assert parse_scaling({"type": "linear", "factor": 2}) == posenc.LinearScaling(2)  # legacy key
    assert parse_scaling({"rope_type": "default", "rope_theta": 10000.0}) is None
    assert set(available_scalings()) == {"linear", "ntk", "dynamic", "yarn", "llama3", "longrope"}


def test_to_bfloat16_rebuilds_instead_of_casting() -> None:
    rope = posenc.RoPE(16, scaling=posenc.YaRNScaling(8.0, 32))
    before = rope.cos_cached.clone()
    rope = rope.to(torch.bfloat16)
    assert rope.cos_cached.dtype == torch.float32 and torch.equal(rope.cos_cached, before)
    assert rope.cos_cached.abs().max() > 1.0  # the temperature is folded in


def test_meta_device() -> None:
    for scaling in (posenc.YaRNScaling(4.0, 32), posenc.LongRoPEScaling([1.0] * 8, [2.0] * 8, 8, factor=2.0)):
        rope = posenc.RoPE(16, scaling=scaling).to("meta")
        q = torch.empty(1, 2, 12, 16, device="meta")
        assert rope(q, q, torch.arange(12, device="meta"))[0].device.type == "meta"


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ({"rope_type": "linear", "factor": 0.5}, ValueError, "factor must be a finite number >= 1"),
        ({"rope_type": "linear"}, ValueError, r"needs \['factor'\]"),
        (
            {
                "rope_type": "yarn",
                "factor": 2.0,
                "original_max_position_embeddings": 64,
                "beta_fast": 1,
                "beta_slow": 4,
            },
            ValueError,
            "beta_fast",
        ),
        ({"rope_type": "yarn", "factor": 2.0}, ValueError, "original_max_position_embeddings"),
        (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "original_max_position_embeddings": 64,
                "low_freq_factor": 4.0,
                "high_freq_factor": 1.0,
            },
            ValueError,
            "high_freq_factor",
        ),
        (
            {
                "rope_type": "longrope",
                "short_factor": [1.0] * 3,
                "long_factor": [1.0] * 8,
                "original_max_position_embeddings": 64,
                "factor": 2.0,
            },
            ValueError,
            "short_factor must have rotary_dim/2 = 8",
        ),
        (
            {
                "rope_type": "longrope",
                "short_factor": [1.0] * 8,
                "long_factor": [1.0] * 8,
                "original_max_position_embeddings": 64,
            },
            ValueError,
            "give factor",
        ),
        (
            {"rope_type": "dynamic", "factor": "2", "original_max_position_embeddings": 8},
            TypeError,
            "finite number",
        ),
        ({"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0}, ValueError, "does not take"),
        ({"rope_type": "proportional", "factor": 2.0}, ValueError, "unknown rope_type 'proportional'"),
        ({"factor": 2.0}, ValueError, "needs a 'rope_type'"),
        ({"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}, ValueError, "pass base=500000.0"),
        ("yarn", TypeError, "RopeScaling"),
    ],
)
def test_bad_scalings_raise_clear_errors(spec: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        posenc.RoPE(16, scaling=spec)


def test_ntk_needs_more_than_two_dims() -> None:
    with pytest.raises(ValueError, match="rotary_dim > 2"):
        posenc.RoPE(8, rotary_dim=2, scaling=posenc.NTKScaling(2.0))


@pytest.mark.parametrize("original", [65536, 131072])
@pytest.mark.parametrize(
    "extra",
    [{}, {"beta_slow": 0.5}, {"beta_fast": 8, "beta_slow": 0.25, "truncate": False}],
)
def test_yarn_with_a_long_original_length_equals_transformers(original: int, extra: dict[str, Any]) -> None:
    """With ``L0 / (2 pi) > base`` YaRN's ramp ends past the last pair (dims ``rotary_dim / 2`` and up), and
    only the clip to ``rotary_dim - 1`` (as transformers' ``find_correction_range``) keeps its slope: the GRID
    above (L0 = 16) never gets there. Compared relatively, since the lowest frequencies are near 1e-6 and an
    absolute 1e-6 would pass anything for them (a clip at ``rotary_dim / 2 - 1`` was 48 % off, review s5)."""
    for head_dim, base in ((64, 10000.0), (128, 10000.0), (64, 500.0)):
        rope_params = {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": original,
            **extra,
        }
        config = hf_config(head_dim, base, rope_params, max_pos=4 * original)
        rope = rope_from_config(config, cache_len=8)
        want, want_att = hf_compute(config, "yarn", None)
        torch.testing.assert_close(rope.inv_freq.float(), want.float(), atol=0, rtol=1e-6)
        got, _ = scaled_inv_freq(rope.scaling, rope.rotary_dim, rope.base, None)
        torch.testing.assert_close(got.float(), want.float(), atol=0, rtol=1e-6)
        assert abs(rope.attention_scale - want_att) <= 1e-6
