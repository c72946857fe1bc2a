"""The decode suite is registered (running it compiles models: a benchmark, not a test)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from posenc.bench import SUITES
from posenc.bench.decode import _rope_call


def test_suite_is_registered_and_rope_group_runs() -> None:
    assert "decode" in SUITES
    rows = _rope_call("cpu", quick=True)
    assert {r["name"] for r in rows} >= {"posenc RoPE", "copy q, k"}


def test_generate_reuses_the_step_the_step_group_compiled() -> None:
    """The generate group times the decode step compiled by the step group: same decoder, same guards (a
    token of other strides recompiled it, and the first generate rounds then ran beside the compile)."""
    import torch
    from torch._dynamo.utils import counters

    from posenc.bench.decode import CACHED, _step_fn
    from posenc.models import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM("rope", dim=32, depth=1, heads=2).eval()
    _step_fn(model, "cpu", "eager")  # dynamo only: quick
    graphs = counters["stats"]["unique_graphs"]
    model.generate(torch.randint(0, 256, (1, 4)), 3, temperature=0, max_len=CACHED + 1, compile="eager")
    assert counters["stats"]["unique_graphs"] == graphs


def test_one_encoding_failing_is_its_row_and_the_others_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled step that fails to compile, or a compiled ``generate`` that decodes other tokens, is that
    encoding's row of status "error"; every other encoding still gets its row (checked without compiling)."""
    import torch

    from posenc.bench import decode

    def step_fn(model: Any, device: str, compile: bool | str = False) -> Callable[[], object]:
        if model.name == "rope":
            raise RuntimeError("No valid triton configs\ndetails")
        return lambda: None

    class Model:
        def __init__(self, name: str) -> None:
            self.name = name

        def generate(self, prompt: torch.Tensor, n: int, **kw: object) -> torch.Tensor:
            wrong = kw.get("compile") and self.name == "xpos"
            return torch.zeros(1, n) + (1 if wrong else 0)

    monkeypatch.setattr(decode, "_step_fn", step_fn)
    monkeypatch.setattr(decode, "_llama_anchor", lambda *a, **kw: iter([]))
    models: Any = {name: Model(name) for name in ("none", "rope", "xpos", "alibi")}
    eager = {r["name"]: r for r in decode._decode_steps(models, "cpu", quick=True)}
    assert list(eager) == ["none", "rope", "xpos", "alibi"]
    assert eager["rope"]["status"] == "error" and "ms" not in eager["rope"]
    assert eager["none"]["x none"] == 1 and eager["alibi"]["x none (paired)"] > 0
    rows = list(decode._compiled_steps(models, "cpu", quick=True))
    by = {r["name"]: r for r in rows}
    assert list(by) == ["none", "rope", "xpos"]  # --quick compiles the none and rotary families
    assert by["rope"]["status"] == "error" and by["rope"]["note"] == "RuntimeError: No valid triton configs"
    assert by["none"]["compiled x none"] == 1 and by["xpos"]["status"] == "ok"
    assert by["xpos"]["compiled x none"] > 0
    gen = {r["name"]: r for r in decode._generate(models, "cpu", quick=True)}
    assert list(gen) == ["none", "rope", "xpos", "alibi"]
    assert gen["xpos"]["status"] == "error" and "other tokens" in gen["xpos"]["note"]
    assert all(gen[n]["status"] == "ok" and gen[n]["eager tok/s"] > 0 for n in ("none", "rope", "alibi"))


def test_a_rope_call_that_raises_is_an_error_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The RoPE call group keeps a row for a call that raised (the positions kernel failing to compile on a
    card), with its reason, instead of dropping it from the table."""
    import posenc
    from posenc.bench import decode

    def broken(self: object, *args: object, **kw: object) -> object:
        raise RuntimeError("triton compile failed\ndetails")

    monkeypatch.setattr(posenc.RoPE, "forward", broken)
    by = {r["name"]: r for r in decode._rope_call("cpu", quick=True)}
    assert (
        by["posenc RoPE"]["status"] == "error"
        and by["posenc RoPE"]["note"] == "RuntimeError: triton compile failed"
    )
    assert by["copy q, k"]["us"] > 0
