"""How a command stops when it is asked to from outside: Ctrl-C (SIGINT), SIGTERM (``kill``, ``timeout``, a
scheduler, torchrun passing a stop on to its processes) and the failure of another process of a torchrun run."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises :class:`KeyboardInterrupt`: ``finally`` blocks run (a checkpoint being
    written removes its temporary; the pool terminates its workers) and the command says what it kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_status(err: KeyboardInterrupt) -> int:
    """128 + the signal's number: 130 after Ctrl-C, 143 after SIGTERM."""
    return 128 + (err.signum if isinstance(err, Terminated) else int(signal.SIGINT))


#: Seconds a command may take to stop after SIGINT or SIGTERM before the process ends at once (see
#: :func:`stop_signals`).
STOP_GRACE_S = 10.0


@contextlib.contextmanager
def stop_signals(grace: float = STOP_GRACE_S) -> Iterator[None]:
    """Inside: SIGINT raises :class:`KeyboardInterrupt` and SIGTERM :class:`Terminated`, once; the signals that
    follow while the command stops are ignored, so its cleanup and its one line finish (torchrun sends SIGTERM
    a moment after passing Ctrl-C on). The handlers before are restored on leaving. Only in the main thread
    (the only one Python delivers signals to); elsewhere nothing changes.

    Python runs a handler only between bytecodes: a process blocked inside C++ (torch.distributed waiting for a
    peer that never comes, for up to 30 minutes) would never stop, where SIGTERM's default action ended it. So a
    watchdog thread hears every such signal through :func:`signal.set_wakeup_fd` and, if the command has not
    stopped ``grace`` seconds later, ends the process with ``128 + signal`` (130, 143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    read, write = os.pipe()
    os.set_blocking(write, False)
    done = threading.Event()
    watchdog = threading.Thread(target=_watch, args=(read, done, grace), daemon=True, name="posenc-stop")
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, stop)
    wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(wakeup)
        for s, handler in before.items():
            signal.signal(s, handler)
        os.close(write)  # (the watchdog's read ends; it closes its end)


def _watch(read: int, done: threading.Event, grace: float) -> None:
    """The watchdog of :func:`stop_signals`: wait for a signal's byte; then give the command ``grace`` seconds."""
    try:
        while not done.is_set():
            got = os.read(read, 1)
            if not got:  # the command is over (its end of the pipe closed)
                return
            if got[0] in (signal.SIGINT, signal.SIGTERM) and not done.wait(grace):
                os._exit(128 + got[0])
    finally:
        os.close(read)


#: Words of the errors torch.distributed raises in a process whose peer has gone (gloo on CPU, NCCL on GPU).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL", "ProcessGroup")


def peer_stopped(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective failing in a torchrun run, most often because another process stopped
    (its own error, Ctrl-C, an out-of-memory kill): that process says why; this one only has to stop."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    return isinstance(err, dist.DistError) or any(word in str(err) for word in _PEER_GONE)


def leave_process_group() -> None:
    """Destroy the torchrun process group this command joined, if any, before the interpreter exits: left to the
    exit, gloo's threads aborted the process (``terminate called without an active exception``) after an error
    had been reported, most often once a peer had gone."""
    import sys

    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # (a group whose peers are gone: nothing left to tell them)
            dist.destroy_process_group()
