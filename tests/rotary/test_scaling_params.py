"""RoPE scaling parameters: one validator for every numeric field, the formulas' divisions and logs kept finite,
and the length-dependent methods' batch behaviour pinned to transformers'."""

from __future__ import annotations

import math
import types
from typing import Any

import numpy as np
import pytest
import torch

import posenc
from posenc.hf import rope_from_config
from posenc.rotary.scaling import SCALINGS, extension_scalings, parse_scaling, scaled_inv_freq
from posenc.rotary.scaling.methods import DYNAMIC_FACTOR

from .test_scaling import hf_config

#: a valid configuration of every registered method (4 frequencies: rotary_dim 8)
VALID: dict[str, dict[str, Any]] = {
    "linear": {"factor": 2.0},
    "ntk": {"factor": 2.0},
    "dynamic": {"factor": 2.0, "original_max_position_embeddings": 16},
    "yarn": {"factor": 2.0, "original_max_position_embeddings": 16},
    "llama3": {"factor": 2.0, "original_max_position_embeddings": 16},
    "longrope": {
        "short_factor": [1.0] * 4,
        "long_factor": [2.0] * 4,
        "original_max_position_embeddings": 16,
        "factor": 2.0,
    },
}
#: every numeric parameter: (method, key, the message's label, what it accepts, the largest value refused)
NUMBERS = [
    ("linear", "factor", "linear scaling", "a finite number >= 1", 0.99),
    ("ntk", "factor", "NTK scaling", "a finite number >= 1", 0.5),
    ("dynamic", "factor", "dynamic NTK scaling", "a finite number >= 1", 0.0),
    ("dynamic", "original_max_position_embeddings", "dynamic NTK scaling", "an integer >= 1", 0),
    ("yarn", "factor", "YaRN scaling", "a finite number >= 1", -1.0),
    ("yarn", "original_max_position_embeddings", "YaRN scaling", "an integer >= 1", -3),
    ("yarn", "beta_fast", "YaRN scaling", "a finite number > 0", 0.0),
    ("yarn", "beta_slow", "YaRN scaling", "a finite number > 0", -1.0),
    ("yarn", "attention_factor", "YaRN scaling", "a finite number > 0", 0.0),
    ("yarn", "mscale", "YaRN scaling", "a finite number >= 0", -0.1),
    ("yarn", "mscale_all_dim", "YaRN scaling", "a finite number >= 0", -0.1),
    ("llama3", "factor", "Llama 3 scaling", "a finite number >= 1", 0.5),
    ("llama3", "original_max_position_embeddings", "Llama 3 scaling", "an integer >= 1", 0),
    ("llama3", "low_freq_factor", "Llama 3 scaling", "a finite number > 0", 0.0),
    ("llama3", "high_freq_factor", "Llama 3 scaling", "a finite number > 0", -4.0),
    ("longrope", "original_max_position_embeddings", "LongRoPE scaling", "an integer >= 1", 0),
    ("longrope", "factor", "LongRoPE scaling", "a finite number > 0", 0.0),
    ("longrope", "attention_factor", "LongRoPE scaling", "a finite number > 0", 0.0),
]
FIELDS = [(kind, name) for kind, name, *_ in NUMBERS]


def test_every_method_has_a_valid_example_and_every_number_is_listed_here() -> None:
    assert set(VALID) == set(SCALINGS.names())
    for kind, params in VALID.items():
        cls = SCALINGS.get(kind)
        assert set(cls.bounds) == {
            name for k, name in FIELDS if k == kind
        }  # a new parameter gets a row above
        assert parse_scaling({"rope_type": kind, **params}) == cls(**params)


@pytest.mark.parametrize(("kind", "name", "label", "accepts"), [row[:4] for row in NUMBERS])
@pytest.mark.parametrize(
    ("bad", "error", "got"),
    [
        ("4", TypeError, r"got '4' \(str\)"),
        ([4.0], TypeError, r"got \[4.0\] \(list\)"),
        (True, TypeError, "got the bool True"),
        (float("nan"), ValueError, "got nan"),
        (float("inf"), ValueError, "got inf"),
        (-float("inf"), ValueError, "got -inf"),
    ],
)
def test_every_numeric_field_names_the_method_the_key_and_what_it_accepts(
    kind: str, name: str, label: str, accepts: str, bad: object, error: type[Exception], got: str
) -> None:
    cls = SCALINGS.get(kind)
    if accepts.startswith("an integer") and isinstance(
        bad, float
    ):  # a float where an integer goes: wrong type
        error, got = TypeError, rf"got {bad!r} \(float\)"
    for spec in ({"rope_type": kind, **VALID[kind], name: bad}, None):  # the dict path and the class
        with pytest.raises(error, match=rf"^{label}: {name} must be {accepts}.*, {got}$"):
            if spec is None:
                cls(**{**VALID[kind], name: bad})
            else:
                posenc.RoPE(8, scaling=spec)


@pytest.mark.parametrize(("kind", "name", "label", "accepts", "low"), NUMBERS)
def test_out_of_range_numbers_say_the_bound(
    kind: str, name: str, label: str, accepts: str, low: float
) -> None:
    cls = SCALINGS.get(kind)
    if accepts.startswith("an integer"):
        with pytest.raises(TypeError, match=rf"^{label}: {name} must be {accepts} .*got 16.0 \(float\)$"):
            cls(**{**VALID[kind], name: 16.0})
    with pytest.raises(ValueError, match=rf"^{label}: {name} must be {accepts}.*, got {low!r}$"):
        cls(**{**VALID[kind], name: low})


def test_values_are_stored_normalized() -> None:
    assert posenc.LinearScaling(2) == posenc.LinearScaling(2.0)
    yarn = posenc.YaRNScaling(np.float32(4.0), np.int64(64), mscale=1)  # type: ignore[arg-type]
    assert type(yarn.factor) is float and type(yarn.original_max_position_embeddings) is int
    assert type(yarn.mscale) is float and yarn.to_dict()["factor"] == 4.0
    longrope = posenc.LongRoPEScaling([1, 2], (3, 4), 8, factor=2)
    assert longrope.short_factor == (1.0, 2.0) and all(type(v) is float for v in longrope.long_factor)


def test_longrope_list_entries_are_named_by_index() -> None:
    with pytest.raises(
        ValueError, match=r"LongRoPE scaling: long_factor\[2\] must be a finite number > 0, got 0.0"
    ):
        posenc.LongRoPEScaling([1.0] * 4, [1.0, 1.0, 0.0, 1.0], 16, factor=2.0)
    with pytest.raises(
        TypeError, match=r"short_factor\[0\] must be a finite number > 0, got None \(NoneType\)"
    ):
        posenc.LongRoPEScaling([None] * 4, [1.0] * 4, 16, factor=2.0)  # type: ignore[list-item]


def test_longrope_temperature_never_divides_by_ln_1() -> None:
    # sqrt(1 + ln(factor) / ln(L0)): L0 = 1 divided by zero (ZeroDivisionError) whenever factor > 1
    with pytest.raises(
        ValueError, match=r"original_max_position_embeddings must be >= 2 when the temperature"
    ):
        posenc.LongRoPEScaling([1.0] * 4, [2.0] * 4, 1, factor=4.0)
    with pytest.raises(ValueError, match="ln"):
        rope_from_config(
            _config(
                8,
                {
                    "rope_type": "longrope",
                    "short_factor": [1.0] * 4,
                    "long_factor": [2.0] * 4,
                    "original_max_position_embeddings": 1,
                },
            )
        )
    # no log of L0 is taken with an explicit temperature or factor <= 1: those stay valid, as in transformers
    assert (
        posenc.LongRoPEScaling([1.0] * 4, [2.0] * 4, 1, attention_factor=1.2).attention_factor_value() == 1.2
    )
    assert posenc.LongRoPEScaling([1.0] * 4, [2.0] * 4, 1, factor=1.0).attention_factor_value() == 1.0


@pytest.mark.parametrize(
    ("mscales", "match"),
    [
        (
            (1.0, -10 / math.log(4.0)),
            "mscale_all_dim must be a finite number >= 0",
        ),  # 0.1*m*ln(4)+1 = 0: was 1/0
        ((-20.0, 1.0), "mscale must be a finite number >= 0"),  # was a negative attention factor
        ((1.0, -1.0), "mscale_all_dim must be a finite number >= 0"),  # was an unbounded one
    ],
)
def test_yarn_mscale_ratio_stays_finite_and_positive(mscales: tuple[float, float], match: str) -> None:
    mscale, all_dim = mscales
    with pytest.raises(ValueError, match=match):
        posenc.YaRNScaling(4.0, 64, mscale=mscale, mscale_all_dim=all_dim)


def test_yarn_mscale_zero_means_unset_as_in_transformers() -> None:
    pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for mscale, all_dim in ((0.0, 1.0), (1.0, 0.0), (0.0, 0.0), (0.707, 0.707)):
        params = {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "mscale": mscale,
            "mscale_all_dim": all_dim,
        }
        config = hf_config(32, 10000.0, params, max_pos=32)
        rope = rope_from_config(config)
        want, want_att = ROPE_INIT_FUNCTIONS["yarn"](config, torch.device("cpu"))
        torch.testing.assert_close(rope.inv_freq.float(), want, atol=1e-6, rtol=0)
        assert rope.attention_scale == pytest.approx(want_att, abs=1e-12)


def test_formulas_refuse_a_base_whose_log_is_zero_and_an_overflowing_ntk_base() -> None:
    yarn = posenc.YaRNScaling(4.0, 64)  # its ramp divides by ln(base): was ZeroDivisionError at base 1
    with pytest.raises(ValueError, match=r"scaled_inv_freq: base must be > 1, got 1"):
        scaled_inv_freq(yarn, 8, 1.0)
    with pytest.raises(TypeError, match="base must be a number"):
        scaled_inv_freq(yarn, 8, "10000")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rotary_dim must be a positive even integer"):
        scaled_inv_freq(yarn, 7, 10000.0)
    # base * factor^(R/(R-2)) past the float range: was OverflowError (or an infinite base)
    with pytest.raises(
        ValueError, match=r"NTK scaling: factor 1e\+300 takes the base 10000.0 \* factor\^2 past"
    ):
        posenc.RoPE(8, rotary_dim=4, scaling=posenc.NTKScaling(1e300))
    with pytest.raises(ValueError, match=r"NTK scaling: factor 1e\+200 .* past the float range"):
        posenc.RoPE(8, rotary_dim=4, scaling=posenc.NTKScaling(1e200))


def test_yarn_ramp_logs_and_extension_ratios_stay_finite() -> None:
    # the ramp takes ln(L0 / (2 pi beta)): was "math domain error" and an OverflowError from floor(inf)
    with pytest.raises(
        ValueError, match=r"YaRN scaling: beta_fast=1e\+308 with original_max_position_embeddings=64"
    ):
        posenc.YaRNScaling(4.0, 64, beta_fast=1e308)
    with pytest.raises(ValueError, match=r"YaRN scaling: beta_slow=1e-320 .* out of the float range"):
        posenc.YaRNScaling(4.0, 64, beta_slow=1e-320)
    # extension(train_len, eval_len) divides by train_len: was ZeroDivisionError
    for cls in (posenc.LinearScaling, posenc.NTKScaling, posenc.YaRNScaling):
        with pytest.raises(
            ValueError, match=rf"{cls.label} extension: train_len must be an integer >= 1 .*got 0"
        ):
            cls.extension(0, 64)
        with pytest.raises(
            TypeError, match=r"extension: eval_len must be an integer >= 1 .*got the bool True"
        ):
            cls.extension(64, True)  # type: ignore[arg-type]
    assert posenc.YaRNScaling.extension(64, 256) == posenc.YaRNScaling(4.0, 64)


def _config(head_dim: int, rope: dict[str, Any], **extra: Any) -> Any:
    return types.SimpleNamespace(
        head_dim=head_dim,
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        max_position_embeddings=64,
        rope_parameters=rope,
        **extra,
    )


@pytest.mark.parametrize(
    ("rope", "extra", "error", "match"),
    [
        # the derived factor max_position_embeddings / original divided by a string: was a bare operand error
        (
            {"rope_type": "yarn", "original_max_position_embeddings": "16"},
            {},
            TypeError,
            r"YaRN scaling: original_max_position_embeddings must be an integer >= 1 .*got '16' \(str\)",
        ),
        (
            {
                "rope_type": "longrope",
                "short_factor": [1.0] * 4,
                "long_factor": [1.0] * 4,
                "original_max_position_embeddings": 16.5,
            },
            {},
            TypeError,
            r"LongRoPE scaling: original_max_position_embeddings must be an integer",
        ),
        (
            {"rope_type": "yarn", "factor": 4.0},
            {"max_position_embeddings": "64"},
            TypeError,
            r"transformers config: max_position_embeddings must be an integer >= 1 .*got '64' \(str\)",
        ),
        (
            {"rope_type": "yarn", "factor": "4"},
            {},
            TypeError,
            r"YaRN scaling: factor must be a finite number >= 1",
        ),
        (
            {"rope_type": "dynamic", "factor": float("nan")},
            {},
            ValueError,
            "dynamic NTK scaling: factor .*got nan",
        ),
        # the RoPE's own keys: were "could not convert string to float" and a repeated string
        (
            {"rope_type": "linear", "factor": 2.0, "rope_theta": "abc"},
            {},
            TypeError,
            r"rope_parameters\['rope_theta'\] must be a finite number > 1 \(the RoPE base\), got 'abc' \(str\)",
        ),
        (
            {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": "abc"},
            {},
            TypeError,
            r"rope_parameters\['partial_rotary_factor'\] must be a finite number .*got 'abc'",
        ),
        (
            {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": float("nan")},
            {},
            ValueError,
            r"partial_rotary_factor'\] must be a finite number .*got nan",
        ),
        (
            {},
            {"rotary_dim": 4.5, "rope_parameters": None},
            TypeError,
            r"transformers config: rotary_dim must be an integer .*got 4.5 \(float\)",
        ),
    ],
)
def test_config_bridge_names_the_bad_key(
    rope: dict[str, Any], extra: dict[str, Any], error: type[Exception], match: str
) -> None:
    config = _config(8, rope)
    for key, value in extra.items():
        setattr(config, key, value)
    with pytest.raises(error, match=match):
        rope_from_config(config)


def test_scaling_dict_checks_the_ropes_own_keys() -> None:
    with pytest.raises(TypeError, match=r"scaling dict: rope_theta must be a finite number > 1 .*got 'abc'"):
        posenc.RoPE(8, scaling={"rope_type": "linear", "factor": 2.0, "rope_theta": "abc"})
    with pytest.raises(ValueError, match=r"scaling dict: partial_rotary_factor must be .* <= 1 .*got 1.5"):
        posenc.RoPE(8, scaling={"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 1.5})
    rope = posenc.RoPE(
        8, rotary_dim=4, scaling={"rope_type": "linear", "factor": 2, "partial_rotary_factor": 0.5}
    )
    assert rope.scaling == posenc.LinearScaling(2.0)


@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_a_batch_takes_the_frequencies_of_its_longest_row_as_transformers(kind: str) -> None:
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    head_dim, length, pad = 16, 40, 30  # row 0 reaches position 39 (> 32 = L0), row 1 only 9 (< L0)
    rope_params: dict[str, Any] = {"rope_type": "dynamic", "factor": 4.0}
    if kind == "longrope":
        rope_params = {
            "rope_type": "longrope",
            "factor": 4.0,
            "original_max_position_embeddings": 32,
            "short_factor": [1.0 + 0.1 * i for i in range(8)],
            "long_factor": [2.0 + i for i in range(8)],
        }
    config = hf_config(head_dim, 10000.0, rope_params, max_pos=32)
    rope = rope_from_config(config)
    positions = torch.stack(
        [torch.arange(length), torch.cat([torch.ones(pad), torch.arange(length - pad)])]
    ).long()
    x = torch.zeros(2, length, head_dim)

    def hf(pos: torch.Tensor) -> torch.Tensor:  # a fresh module: transformers' dynamic update keeps state
        cos, _ = LlamaRotaryEmbedding(config)(x[: len(pos)], pos)
        return cos[..., : head_dim // 2]

    batch = rope.cos_sin(length, positions, x.device)[0][:, 0]
    torch.testing.assert_close(batch, hf(positions), atol=1e-5, rtol=0)  # the whole batch, as transformers
    alone = rope.cos_sin(length, positions[1:], x.device)[0][:, 0]
    torch.testing.assert_close(
        alone, hf(positions[1:]), atol=1e-5, rtol=0
    )  # the short row alone, as transformers
    assert not torch.allclose(
        batch[1], alone[0], atol=1e-3
    )  # in the batch it took row 0's (long) frequencies
    long_freqs = scaled_inv_freq(rope.scaling, head_dim, rope.base, length)[0]
    torch.testing.assert_close(rope.inv_freq_for(positions), long_freqs, atol=0, rtol=0)


@pytest.mark.parametrize("name", extension_scalings())
def test_an_extension_starts_from_the_training_length(name: str) -> None:
    """extension(train_len, eval_len) runs a model trained at train_len on eval_len tokens: a method with an
    original length takes train_len (not a length derived from eval_len); a stretch factor is eval_len / train_len,
    and dynamic NTK gets its one fixed setting (DYNAMIC_FACTOR) at every length."""
    for train_len, k in ((16, 4), (64, 2), (100, 8)):
        scaling = SCALINGS.get(name).extension(train_len, k * train_len)
        assert scaling is not None
        if hasattr(scaling, "original_max_position_embeddings"):
            assert scaling.original_max_position_embeddings == train_len
        assert scaling.factor == (DYNAMIC_FACTOR if name == "dynamic" else k)
