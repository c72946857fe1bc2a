"""One failing bench case never takes the run down: it becomes a row with status "error" and its reason; what
finished before a failure, Ctrl-C or a kill is kept (the report is written as rows arrive)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from posenc.bench import SUITES
from posenc.bench.runner import time_round_robin
from posenc.cli import main
from posenc.cli.bench import run_suite


def test_a_failing_case_is_dropped_with_its_reason() -> None:
    calls = {"ok": 0}

    def ok() -> None:
        calls["ok"] += 1

    def broken() -> None:
        raise RuntimeError("No valid triton configs. OutOfMemoryError: out of resource\nmore lines")

    errors: dict[str, str] = {}
    medians = time_round_robin({"ok": ok, "broken": broken}, "cpu", repeats=3, warmup=1, errors=errors)
    assert set(medians) == {"ok"} and calls["ok"] == 4
    assert errors == {
        "broken": "error: RuntimeError: No valid triton configs. OutOfMemoryError: out of resource"
    }


def test_a_failing_suite_is_one_error_row(caplog: pytest.LogCaptureFixture) -> None:
    def suite(quick: bool, device: str) -> list[dict[str, object]]:
        raise MemoryError("too big")

    rows = run_suite("broken", suite, True, "cpu")
    assert rows == [{"suite": "broken", "status": "error", "note": "MemoryError: too big"}]


def test_a_suite_that_fails_midway_keeps_the_rows_it_gave() -> None:
    def suite(quick: bool, device: str) -> Iterator[dict[str, object]]:
        yield {"name": "first", "median_ms": 1.0}
        raise RuntimeError("second group failed")

    seen: list[dict[str, object]] = []
    rows = run_suite("half", suite, True, "cpu", on_row=seen.append)
    assert (
        rows
        == seen
        == [
            {"name": "first", "median_ms": 1.0},
            {"suite": "half", "status": "error", "note": "RuntimeError: second group failed"},
        ]
    )


@pytest.fixture
def interrupted_suite() -> Iterator[str]:
    """A registered suite that gives one row, then is interrupted (Ctrl-C, or a ``timeout`` killing the run)."""

    def suite(quick: bool, device: str) -> Iterator[dict[str, object]]:
        yield {"name": "finished group", "median_ms": 2.0}
        raise KeyboardInterrupt

    SUITES.add("interrupted-test", suite)
    yield "interrupted-test"
    SUITES.remove("interrupted-test")


def test_bench_writes_each_row_as_it_arrives(
    interrupted_suite: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What finished before Ctrl-C (or a kill) is on disk; the CLI says so in one line and exits 130."""
    out = tmp_path / "bench"
    assert main(["bench", "--suite", interrupted_suite, "--device", "cpu", "--out", str(out)]) == 130
    report = json.loads((out / "bench.json").read_text())
    assert report["suites"] == {interrupted_suite: [{"name": "finished group", "median_ms": 2.0}]}
    assert "finished group" in (out / "bench.md").read_text()
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1]
        == f"posenc bench: interrupted; the rows finished so far are in {out / 'bench.json'} and {out / 'bench.md'}"
    )


def test_cuda_calls_are_timed_between_events_on_the_current_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA a call is timed by two CUDA events around it (no host synchronize latency in the figure); the
    path runs here with stand-ins for torch.cuda's Event, stream and synchronize."""
    import torch

    from posenc.bench import runner

    log: list[str] = []

    class Event:
        clock = 0.0

        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.at = -1.0

        def record(self, stream: object) -> None:
            assert stream == "stream of cuda:0"
            self.at = Event.clock
            log.append("record")

        def synchronize(self) -> None:
            log.append("event sync")

        def elapsed_time(self, end: Event) -> float:
            return end.at - self.at  # milliseconds

    def work() -> None:
        Event.clock += 2.5
        log.append("work")

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: log.append("device sync"))
    assert runner.call_timer("cuda:0")(work) == pytest.approx(2.5e-3)
    assert log == ["device sync", "record", "work", "record", "event sync"]
    medians = time_round_robin({"work": work}, "cuda:0", repeats=3, warmup=1)
    assert medians == {"work": pytest.approx(2.5e-3)}


def test_an_announced_reason_is_kept_in_the_note() -> None:
    """dynamo wraps a compile failure as "backend='inductor' raised:" then the reason on the next line: the
    note keeps the reason (issue #9's T5 shared-memory failure), still one line."""
    from posenc.bench.runner import error_note

    err = RuntimeError(
        "backend='inductor' raised:\nNoValidChoicesError: No valid triton configs. out of resource: "
        "Required: 245760 Hardware limit: 232448\n\nSet TORCHDYNAMO_VERBOSE=1 for more"
    )
    assert error_note(err) == (
        "error: RuntimeError: backend='inductor' raised: NoValidChoicesError: No valid triton configs. "
        "out of resource: Required: 245760 Hardware limit: 232448"
    )
    assert error_note(ValueError("")) == "error: ValueError: "


def test_warmup_rounds_are_not_in_the_median(monkeypatch: pytest.MonkeyPatch) -> None:
    """``warmup``: untimed rounds first (compilation, allocator warm-up): a first call that takes 100 s (faked
    timer) is not in the median of the rounds after it."""
    from posenc.bench import runner

    times = iter([100.0, 1.0, 2.0, 3.0])
    monkeypatch.setattr(runner, "call_timer", lambda device: lambda fn: next(times))
    assert time_round_robin({"f": lambda: None}, "cpu", repeats=1, warmup=1) == {"f": 1.0}
    times = iter([100.0, 50.0, 1.0, 2.0, 3.0])
    assert time_round_robin({"f": lambda: None}, "cpu", repeats=3, warmup=2) == {"f": 2.0}
