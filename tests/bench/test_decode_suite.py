"""The decode suite is registered (running it compiles models: a benchmark, not a test)."""

from __future__ import annotations

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
