"""Options that change what an encoding's parameters mean, but not their shapes, travel with its state_dict."""

from __future__ import annotations

import io
import tempfile
from typing import Any

import pytest
import torch

import posenc
from posenc.base import OptionsInState
from posenc.models import TransformerLM

# (encoding, an option whose other value fits the same parameters, that value)
CASES = [
    ("t5", "max_distance", 64),
    ("t5", "bidirectional", True),
    ("kerple", "kind", "power"),
    ("kerple", "eps", 0.05),
    ("fire", "init_threshold", 64.0),
    ("fire", "eps", 1e-3),
]


def build(name: str, **options: Any) -> posenc.PositionEncoding:
    return posenc.build(name, dim=32, heads=4, **options)


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save and a weights_only load, as posenc's checkpoints are read."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "option", "other"), CASES)
def test_a_state_dict_loads_only_into_a_module_with_the_same_options(
    name: str, option: str, other: Any
) -> None:
    saved = build(name, **{option: other})
    state = roundtrip(saved.state_dict())
    same = build(name, **{option: other})
    same.load_state_dict(state)  # strict: the recorded options are expected and match
    for p, q in zip(same.parameters(), saved.parameters(), strict=True):
        assert torch.equal(p, q)
    default = build(name)
    before = {k: v.clone() for k, v in default.state_dict().items()}
    for strict in (True, False):  # refused as a shape mismatch is, strict or not
        with pytest.raises(RuntimeError, match=rf"saved from a \w+ with {option}=") as info:
            default.load_state_dict(state, strict=strict)
        assert f"this one has {option}={getattr(default, option)!r}" in str(info.value)
    for k, v in default.state_dict().items():  # nothing of the refused module was copied
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("name", sorted({c[0] for c in CASES}))
def test_a_state_dict_saved_before_the_options_were_recorded_still_loads(name: str) -> None:
    saved = build(name)
    old = {k: v for k, v in saved.state_dict().items() if not k.endswith("_extra_state")}
    assert len(old) == len(saved.state_dict()) - 1
    build(name).load_state_dict(old)  # strict, as before
    build(name).load_state_dict(old, strict=False)
    cast = {k: v.to(torch.bfloat16) for k, v in saved.state_dict().items()}  # a blanket cast of every tensor
    build(name).to(torch.bfloat16).load_state_dict(cast)  # the recorded options still read


def test_the_check_reaches_encodings_inside_a_model() -> None:
    """TransformerLM built with other position_options: refused, where the weights would have loaded silently."""
    trained = TransformerLM("t5", dim=32, depth=2, heads=4, position_options={"max_distance": 40})
    state = roundtrip(trained.state_dict())
    TransformerLM("t5", dim=32, depth=2, heads=4, position_options={"max_distance": 40}).load_state_dict(
        state
    )
    other = TransformerLM("t5", dim=32, depth=2, heads=4)
    with pytest.raises(RuntimeError, match="max_distance=40, but this one has max_distance=128") as info:
        other.load_state_dict(state)
    assert str(info.value).count("blocks.") == 2  # each layer's encoding named; the rest of the model loaded
    assert torch.equal(other.embed.weight, trained.embed.weight)


def test_state_dicts_stay_tensors_for_safetensors_and_numpy_options_load_weights_only() -> None:
    st = pytest.importorskip("safetensors.torch")
    model = TransformerLM("kerple", dim=32, depth=2, heads=4, position_options={"kind": "power"})
    assert all(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.safetensors"
        st.save_model(model, path)
        fresh = TransformerLM("kerple", dim=32, depth=2, heads=4, position_options={"kind": "power"})
        st.load_model(fresh, path)
    for a, b in zip(fresh.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    np = pytest.importorskip("numpy")
    enc = build(
        "kerple", kind=np.str_("power"), eps=np.float64(0.05)
    )  # str and float subclasses: plain values
    roundtrip(enc.state_dict())  # weights_only reads it
    build("kerple", kind="power", eps=0.05).load_state_dict(enc.state_dict())


def test_a_malformed_extra_state_is_refused() -> None:
    enc = build("t5")
    state = enc.state_dict()
    for bad in (
        [1, 2],
        torch.tensor([255, 0], dtype=torch.uint8),
        torch.tensor(list(b"[1]"), dtype=torch.uint8),
    ):
        state["_extra_state"] = bad
        with pytest.raises(RuntimeError, match="saved options should be JSON in a uint8 tensor"):
            enc.load_state_dict(state)


def test_encodings_whose_options_all_show_in_shapes_record_nothing() -> None:
    """Only the OptionsInState encodings add a key (RoPE inside transformers models stays plain tensors)."""
    for name in posenc.available():
        enc = build(name)
        recorded = any(k.endswith("_extra_state") for k in enc.state_dict())
        assert recorded == isinstance(enc, OptionsInState), name
    assert {c[0] for c in CASES} == {n for n in posenc.available() if isinstance(build(n), OptionsInState)}
