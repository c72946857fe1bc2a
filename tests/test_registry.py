"""posenc.build by name."""

from __future__ import annotations

import pytest

import posenc


def test_core_names_are_registered() -> None:
    assert {"none", "sinusoidal", "learned", "rope", "shaw"} <= set(posenc.available())


def test_sizes_come_from_dim_and_heads() -> None:
    rope = posenc.build("rope", dim=64, heads=4)
    assert isinstance(rope, posenc.RoPE) and rope.head_dim == 16
    assert isinstance(posenc.build("sinusoidal", dim=10), posenc.Sinusoidal)
    assert posenc.build("learned", dim=8, max_len=5).max_len == 5  # type: ignore[union-attr]


def test_unknown_name_and_missing_sizes() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'rotary'; choose one of"):
        posenc.build("rotary", dim=8)
    with pytest.raises(ValueError, match="needs head_dim"):
        posenc.build("rope")
    with pytest.raises(ValueError, match="divisible"):
        posenc.build("rope", dim=10, heads=4)


def test_encodings_are_not_called_directly() -> None:
    with pytest.raises(TypeError, match="hooks"):
        posenc.PositionEncoding()()
