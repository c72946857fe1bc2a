"""Models trained side by side (:mod:`posenc.experiments.pool`): results in order and equal to a serial run,
failures raised, bad ``jobs`` refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posenc.experiments import pool
from posenc.experiments.pool import auto_workers, check_workers, map_jobs
from posenc.experiments.tasks import TasksConfig, run_tasks


def square_and_threads(x: int) -> tuple[int, int]:
    return x * x, torch.get_num_threads()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is refused, got {x}")
    return x


def test_results_come_back_in_order_with_the_threads_asked() -> None:
    got = map_jobs(square_and_threads, [(i,) for i in range(5)], workers=2, threads=1)
    assert [g[0] for g in got] == [0, 1, 4, 9, 16] and {g[1] for g in got} == {1}


def test_one_worker_runs_here() -> None:
    assert map_jobs(fail_on_three, [(1,), (2,)], workers=1) == [1, 2]


def test_a_failure_is_raised() -> None:
    with pytest.raises(ValueError, match="three is refused, got 3"):
        map_jobs(fail_on_three, [(i,) for i in range(5)], workers=2, threads=1)


def test_workers_default_and_validation() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert auto_workers(gpu, 30) == 1 and auto_workers(cpu, 30, distributed=True) == 1
    assert auto_workers(cpu, 1) == 1 and auto_workers(cpu, 30) >= 1
    assert check_workers(3, cpu) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="jobs must be a positive integer"):
            check_workers(bad, cpu)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="jobs=2 trains models side by side on CPU cores; on cuda use jobs=1"
    ):
        check_workers(2, gpu)
    with pytest.raises(ValueError, match="under torchrun"):
        check_workers(2, cpu, distributed=True)


def test_tasks_side_by_side_equal_one_after_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers of one thread each train the same models as this process does alone with one thread."""
    cfg = TasksConfig.quick(steps=6)
    kw = {"tasks": ["copy", "assoc"], "encodings": ["rope", "none"], "device": "cpu", "progress": False}
    monkeypatch.setattr(pool, "available_cores", lambda: 2)  # one thread per worker on any machine
    pooled = run_tasks(cfg, out=tmp_path / "pooled", jobs=2, **kw)  # type: ignore[arg-type]
    threads = torch.get_num_threads()  # the CLI's tests set it to the cores
    torch.set_num_threads(1)  # as each of the two workers on 2 cores
    try:
        serial = run_tasks(cfg, out=tmp_path / "serial", jobs=1, **kw)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    for key in ("accuracy", "accuracy_by_seed", "final_train_loss"):
        assert pooled[key] == serial[key], key
    assert sorted(p.name for p in (tmp_path / "pooled" / "checkpoints" / "copy").iterdir()) == [
        "none-s0.pt",
        "rope-s0.pt",
    ]
