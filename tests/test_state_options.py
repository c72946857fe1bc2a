"""OptionsInState compares only the options a saved extra state records: a state saved when the class
recorded fewer options (one added to state_options later) loads, and a recorded option that differs is still refused."""

from __future__ import annotations

import json

import pytest
import torch

import posenc


def _state(options: dict[str, object]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(options).encode()), dtype=torch.uint8)


def test_a_state_recording_fewer_options_loads() -> None:
    sd = posenc.T5Bias(4).state_dict()
    sd["_extra_state"] = _state({"max_distance": 128})  # no "bidirectional": recorded before it was an option
    fresh = posenc.T5Bias(4)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.embedding.weight, sd["embedding.weight"])


def test_a_recorded_option_that_differs_is_still_refused() -> None:
    sd = posenc.T5Bias(4).state_dict()
    sd["_extra_state"] = _state({"max_distance": 64})
    with pytest.raises(RuntimeError, match=r"max_distance=64"):
        posenc.T5Bias(4).load_state_dict(sd)
