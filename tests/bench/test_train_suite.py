"""The training-throughput suite, and the fast step it times against the step it replaced."""

from __future__ import annotations

import torch

from posenc.bench import SUITES
from posenc.bench.train import _before
from posenc.experiments.train import (
    TrainConfig,
    build_model,
    make_optimizer,
    make_step,
    native_bf16,
    sample_batch,
)

TINY = TrainConfig(dim=16, depth=1, heads=2, train_len=8, batch_size=4, steps=5)


def test_fused_step_matches_the_step_it_replaced() -> None:
    tokens = torch.randint(0, 256, (500,), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    ref, fast = build_model("rope", TINY).train(), build_model("rope", TINY).train()
    before = _before(ref, TINY)
    after = make_step(fast, fast, make_optimizer(fast, TINY, torch.device("cpu")), TINY.grad_clip)
    for step in range(TINY.steps):
        batch = sample_batch(tokens, step, TINY)
        assert float(after(batch)) == float(before(batch))  # type: ignore[arg-type]
    for (name, a), b in zip(ref.state_dict().items(), fast.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_quick_suite_rows() -> None:
    rows = SUITES.get("train")(True, "cpu")
    mixed = {"fused, bf16"} if native_bf16(torch.device("cpu")) else set()
    assert {r["step"] for r in rows} == {"eager (before)", "fused"} | mixed
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert [r["ratio"] for r in rows if r["step"] == "eager (before)"] == [1.0, 1.0]


def test_side_by_side_row_counts_every_worker() -> None:
    """Two one-thread workers timed from one start give one time per step (1 / the sum of their rates)."""
    from posenc.bench.train import _side_by_side

    seconds = _side_by_side("rope", TINY, workers=2, precision="fp32", steps=5, lead=6.0)
    assert 0 < seconds < 1.0


def test_a_failing_step_is_a_row_with_its_reason_and_the_baseline_stays(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A step that raised vanished from the rows, and the next one silently became the ratios' baseline."""
    import posenc.bench.train as suite

    def broken(model, cfg):  # type: ignore[no-untyped-def]
        def step(batch):  # type: ignore[no-untyped-def]
            raise RuntimeError("simulated failure")

        return step

    monkeypatch.setattr(suite, "_before", broken)
    rows = suite.train_suite(True, "cpu")
    failed = [r for r in rows if r["step"] == "eager (before)"]
    assert failed and all(r["status"] == "error: RuntimeError: simulated failure" for r in failed)
    others = [r for r in rows if r["step"] != "eager (before)"]
    assert others and all(r["ratio"] is None and r["ratio_to"] == "eager (before)" for r in others)


def test_markdown_cells_keep_one_column_per_field() -> None:
    from posenc.bench.runner import markdown_table

    table = markdown_table([{"status": "error: a|b\nc", "ms": 1.0}])
    assert table.splitlines()[2] == "| error: a\\|b c | 1 |"
