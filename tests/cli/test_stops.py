"""How a command stops from outside (posenc.cli.stops): SIGTERM as Ctrl-C does, once, with its temporaries gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posenc.cli.stops import Terminated, exit_status, stop_signals


def test_sigterm_raises_once_and_the_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Terminated) as caught, stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # (the handler runs at the next bytecode; never reached)
    assert exit_status(caught.value) == 143 and exit_status(KeyboardInterrupt()) == 130
    with pytest.raises(KeyboardInterrupt) as first, stop_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        finally:  # stopping: a second signal (torchrun's SIGTERM after Ctrl-C) must not cut the cleanup short
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    assert type(first.value) is KeyboardInterrupt
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.slow
def test_sigterm_stops_a_comparison_in_one_line_with_no_temporary_left(tmp_path: Path) -> None:
    """``kill`` or ``timeout`` (SIGTERM) killed the process where it stood: a checkpoint being written left its
    temporary beside the real one, and nothing was said. Now: one line, what was kept, status 143."""
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "posenc", "compare", "--quick", "--steps", "3000", "--encodings", "rope"]
    cmd += ["--jobs", "1", "--out", str(out), "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # training by now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("posenc compare: terminated; "), err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_signal_while_python_cannot_run_ends_the_process_after_the_grace() -> None:
    """SIGTERM's default action ended a process blocked inside C++ (a rendezvous waiting for a peer, up to 30
    minutes); a Python handler never runs there. The watchdog ends it ``grace`` seconds after the signal."""
    code = (
        "import os, signal, time, threading\n"
        "from posenc.cli.stops import stop_signals\n"
        "with stop_signals(grace=1.0):\n"
        "    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # (as in C++: no handler runs here)\n"
        "    time.sleep(30)\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (143, -signal.SIGTERM), proc.stderr
    assert time.monotonic() - start < 20
