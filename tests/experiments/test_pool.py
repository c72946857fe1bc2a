"""Models trained side by side (:mod:`posenc.experiments.pool`): results in order and equal to a serial run,
failures raised, bad ``jobs`` refused with a clear message."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from posenc.experiments import pool
from posenc.experiments.compare import CompareConfig, run_compare
from posenc.experiments.pool import auto_workers, check_workers, map_jobs
from posenc.experiments.tasks import TasksConfig, run_tasks


def test_compare_side_by_side_equals_one_after_another(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = CompareConfig(
        **{**CompareConfig.quick(steps=6).__dict__, "data": str(tiny_corpus), "seeds": (0, 1)}
    )
    pooled, serial = side_by_side_and_alone(run_compare, tmp_path, cfg=cfg, encodings=["rope", "alibi"])
    for name in ("rope", "alibi"):
        for seed in ("0", "1"):
            a, b = pooled["runs"][name][seed], serial["runs"][name][seed]
            assert a["perplexity"] == b["perplexity"] and a["final_train_loss"] == b["final_train_loss"]
    assert pooled["settings"]["jobs"] == 2 and pooled["settings"]["threads"] == 1
    assert "2 models at a time, 1 thread(s) each" in (tmp_path / "pooled" / "report.md").read_text()


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


def die_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the system does to a process when memory runs out
    return x


def test_a_worker_killed_is_one_error_not_a_hang(sigint_raises: None) -> None:
    """A worker killed mid-call (out of memory): ``multiprocessing.Pool`` replaces it and loses the call, so
    waiting for every result hung forever. Now one ChildProcessError (an OSError: the CLI prints one line) names
    the signal, and no worker is left. (The timer turns the old hang into a KeyboardInterrupt.)"""
    guard = threading.Timer(60.0, os.kill, (os.getpid(), signal.SIGINT))
    guard.start()
    try:
        with pytest.raises(
            ChildProcessError, match="killed by signal 9 .SIGKILL: often the system running out"
        ):
            map_jobs(die_on_three, [(i,) for i in range(5)], workers=2, threads=1)
    finally:
        guard.cancel()
    assert not multiprocessing.active_children()


class TwoPartError(ValueError):
    """An exception whose class cannot be called with its own ``args`` (as many libraries' are)."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what} failed: {why}")


def fail_oddly(x: int) -> int:
    if x == 2:
        raise TwoPartError("model 2", "no reason")
    return x


def test_an_exception_that_cannot_be_unpickled_is_raised_not_a_hang(sigint_raises: None) -> None:
    """Pool re-creates a worker's exception as ``cls(*args)``; for TwoPartError that raised inside Pool's result
    thread, which died, and the run hung forever. Now the nearest built-in class (ValueError: the CLI prints one
    line) comes back with the class name and message."""
    guard = threading.Timer(60.0, os.kill, (os.getpid(), signal.SIGINT))
    guard.start()
    try:
        with pytest.raises(ValueError, match="^TwoPartError: model 2 failed: no reason$") as info:
            map_jobs(fail_oddly, [(i,) for i in range(4)], workers=2, threads=1)
    finally:
        guard.cancel()
    assert type(info.value) is ValueError and not multiprocessing.active_children()


def sleep_then_touch(path: str) -> None:
    time.sleep(20)
    Path(path).touch()


def write_slowly(path: str) -> None:
    """An atomic write that takes long: a checkpoint being saved when the run is stopped."""
    from posenc.experiments.checkpoints import _atomic

    def slow(f: Any) -> None:
        f.write(b"x")
        time.sleep(20)

    _atomic(Path(path), slow)


def test_a_worker_terminated_while_writing_leaves_no_temporary(tmp_path: Path, sigint_raises: None) -> None:
    """Terminated with SIGTERM's default action, a worker left its 0-byte temporary beside the checkpoint."""
    targets = [tmp_path / f"ckpt{i}.pt" for i in range(2)]
    threading.Timer(6.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        map_jobs(write_slowly, [(str(t),) for t in targets], workers=2, threads=1)
    assert not multiprocessing.active_children()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("ps") is None,
    reason="PR_SET_PDEATHSIG is Linux's; uses ps",
)
def test_workers_end_with_their_parent(tmp_path: Path) -> None:
    """A parent killed outright (SIGKILL: no cleanup) left its workers training and writing checkpoints."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\n"
        "from posenc.experiments.pool import map_jobs\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_pool import sleep_then_touch\n"
        "if __name__ == '__main__':\n"
        f"    map_jobs(sleep_then_touch, [({str(tmp_path / 'a')!r},), ({str(tmp_path / 'b')!r},)], workers=2, threads=1)\n"
    )
    log = (tmp_path / "stderr").open("w")
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True, stderr=log)
    deadline = time.monotonic() + 60
    workers: list[str] = []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.5)
        found = subprocess.run(
            ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(proc.pid)], capture_output=True, text=True
        )
        workers = [line.split()[0] for line in found.stdout.splitlines() if "spawn_main" in line]
    assert len(workers) == 2, (tmp_path / "stderr").read_text() + found.stdout + str(proc.poll())
    time.sleep(3)
    proc.kill()
    proc.wait()

    def alive() -> list[str]:
        def running(pid: str) -> bool:
            try:
                return " Z " not in Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:  # (gone, and reaped)
                return False

        return [w for w in workers if running(w)]

    # a worker still importing torch (seconds on a loaded machine) ends when its initializer finds itself
    # adopted; one past it gets SIGTERM from the kernel at once: either way by itself, within the deadline
    deadline = time.monotonic() + 60
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive() == []


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, as in a terminal, even when this process was started with SIGINT
    ignored (a background job of a non-interactive shell inherits SIG_IGN, and Python keeps it)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _sigint_default() -> None:
    """For a child process: SIGINT back to its default, so Python installs its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_terminates_the_workers(tmp_path: Path, sigint_raises: None) -> None:
    """Ctrl-C (SIGINT to this process; the workers ignore it) stops the run at once: the workers are terminated,
    not waited for, so the calls in flight never finish."""
    marks = [tmp_path / f"done{i}" for i in range(2)]
    threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        map_jobs(sleep_then_touch, [(str(m),) for m in marks], workers=2, threads=1)
    assert not multiprocessing.active_children()
    assert not any(m.exists() for m in marks)


def test_ctrl_c_on_the_cli_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C in a terminal (SIGINT to the whole process group) while two workers train: exit 130, one line,
    no warning about semaphores a terminated worker left behind."""
    cmd = [sys.executable, "-m", "posenc", "tasks", "--out", str(tmp_path / "o"), "--no-progress"]
    cmd += ["--tasks", "copy", "--encodings", "rope,none", "--jobs", "2"]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_sigint_default
    )
    time.sleep(8)  # the workers are training by now
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    kept = f"of finished models kept in {tmp_path / 'o' / 'checkpoints'}; rerun the same command to resume"
    nothing = "no model had finished, so there is nothing to resume from yet"  # (the count, not a promise)
    assert len(lines) == 1 and lines[0].startswith("posenc tasks: interrupted; "), err
    assert lines[0].endswith(nothing) or lines[0].endswith(kept), err


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


def side_by_side_and_alone(run: Callable[..., dict], tmp_path: Path, **kw: Any) -> tuple[dict, dict]:
    """``run`` with two workers of one thread each, then here alone with one thread."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pool, "available_cores", lambda: 2)  # one thread per worker on any machine
        pooled = run(out=tmp_path / "pooled", jobs=2, device="cpu", progress=False, **kw)
    threads = torch.get_num_threads()  # the CLI's tests set it to the cores
    torch.set_num_threads(1)
    try:
        serial = run(out=tmp_path / "serial", jobs=1, device="cpu", progress=False, **kw)
    finally:
        torch.set_num_threads(threads)
    return pooled, serial


def test_tasks_side_by_side_equal_one_after_another(tmp_path: Path) -> None:
    """Two workers of one thread each train the same models as this process does alone with one thread."""
    pooled, serial = side_by_side_and_alone(
        run_tasks,
        tmp_path,
        cfg=TasksConfig.quick(steps=6),
        tasks=["copy", "assoc"],
        encodings=["rope", "none"],
    )
    for key in ("accuracy", "accuracy_by_seed", "final_train_loss"):
        assert pooled[key] == serial[key], key
    assert sorted(p.name for p in (tmp_path / "pooled" / "checkpoints" / "copy").iterdir()) == [
        "none-s0.pt",
        "rope-s0.pt",
    ]


WORKERS_STARTING = """
import sys, time
from posenc.experiments.pool import map_jobs

def slow(x):
    time.sleep(60)
    return x

if __name__ == "__main__":
    print("starting the pool", file=sys.stderr, flush=True)
    try:
        map_jobs(slow, [(1,), (2,)], workers=2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists the workers through Linux's /proc")
def test_ctrl_c_while_the_workers_start_is_no_traceback(tmp_path: Path) -> None:
    """SIGINT to the process group while the spawned workers still import torch (their initializer, which
    ignores it, has not run yet): the workers start with SIGINT ignored, so only the parent reports. Before, each
    worker printed a KeyboardInterrupt traceback (seen in CI on a loaded machine)."""
    script = tmp_path / "starting.py"
    script.write_text(WORKERS_STARTING)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_sigint_default,
    )
    assert proc.stderr is not None and "starting the pool" in proc.stderr.readline()
    time.sleep(0.3)  # the workers exist and are importing torch
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for pid in children.read_text().split():  # the workers alone first: no race with the parent's terminate()
        os.kill(int(pid), signal.SIGINT)
    time.sleep(2)  # a worker that did not ignore it has printed its traceback by now
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["interrupted"], err
