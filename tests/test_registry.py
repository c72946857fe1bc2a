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


def test_registry_type_refuses_duplicates_and_lists_choices() -> None:
    reg: posenc.Registry[int] = posenc.Registry("widget", extra=("auto",))
    reg.add("b", 2)
    reg.register("a")(1)
    assert reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2 and reg["b"] == 2
    with pytest.raises(ValueError, match="widget name 'a' is already registered"):
        reg.add("a", 3)
    with pytest.raises(ValueError, match="unknown widget 'c'; choose one of auto, a, b"):
        reg.get("c")
    assert reg.check("auto") == "auto"


def test_every_registry_speaks_the_same_error() -> None:
    from posenc.attention import BACKENDS
    from posenc.bench import SUITES
    from posenc.kernels import IMPLS
    from posenc.rotary.scaling import SCALINGS

    for reg in (posenc.registry.ENCODINGS, BACKENDS, SUITES, IMPLS, SCALINGS):
        with pytest.raises(ValueError, match=f"unknown {reg.kind} 'nope'; choose one of"):
            reg.get("nope")


def test_encodings_say_what_they_are() -> None:
    by_family = {f: posenc.available(family=f) for f in posenc.registry.FAMILIES}
    assert sorted(sum(by_family.values(), [])) == sorted(posenc.available())
    for name in posenc.available():
        cls = posenc.encoding_class(name)
        assert cls.name == name and name in by_family[cls.family]
    assert posenc.build("learned", dim=8).max_length == 2048
    assert posenc.encoding_class("learned").training_options(64) == {"max_len": 64}
    assert posenc.build("rope", head_dim=8).max_length is None
    assert posenc.build("sinusoidal", dim=8).is_absolute and not posenc.build("alibi", heads=2).is_absolute
    with pytest.raises(ValueError, match="unknown encoding family"):
        posenc.available(family="rotational")


def test_build_uses_the_constructors_defaults() -> None:
    import inspect

    for name in posenc.available():
        cls = posenc.encoding_class(name)
        enc = posenc.build(name, dim=16, heads=2)
        for param in inspect.signature(cls.__init__).parameters.values():
            if param.default not in (inspect.Parameter.empty, None) and hasattr(enc, param.name):
                value = getattr(enc, param.name)
                if isinstance(value, (int, float, str, bool)) or value is None:
                    assert value == param.default, (name, param.name)


@pytest.mark.parametrize("name", posenc.available())
def test_an_unknown_option_is_named_with_the_accepted_ones(name: str) -> None:
    """build('sinusoidal', dim=8, max_len=4) was Python's 'unexpected keyword argument' (one name, no choices; for
    Shaw from deep inside from_sizes). It names every unknown option and lists what the encoding takes."""
    with pytest.raises(
        TypeError, match=rf"build\('{name}'\): unknown option\(s\) 'nonsense', 'bogus'; it takes"
    ):
        posenc.build(name, dim=32, heads=4, nonsense=1, bogus=2)
    with pytest.raises(TypeError, match=r"it takes base, dropout, cache_len"):
        posenc.build("sinusoidal", dim=8, max_len=4)
    assert posenc.build("shaw", dim=32, heads=4, per_head=True, max_distance=3).heads == 4
