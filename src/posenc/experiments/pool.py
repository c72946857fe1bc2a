"""Independent models trained side by side: one worker process per job slot, each with its share of the cores.

The small models of ``posenc tasks`` (3 layers of dim 64, a few hundred tokens a step) keep one CPU core busy
and gain nothing from a second thread, so two models trained at once on two cores finish in the time
of one (measured: 16 ms per step either way). :func:`map_jobs` runs a list of independent calls in ``workers``
processes started with ``spawn`` (no forked OpenMP state), each limited to ``threads`` intra-op threads; with
one worker it runs them here, in order, with this process's threads.

Each call must be a module-level function of picklable arguments whose result is picklable. A result is the same
as the serial run's when the threads per model are the same (floating-point sums are not associative, so a
model trained with 2 threads may differ from one trained with 1 in the last bits).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import get_context
from typing import Any, TypeVar, cast

import torch
from tqdm.auto import tqdm

R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(device: torch.device, jobs: int, *, distributed: bool = False) -> int:
    """How many models to train at once by default: one per core on a CPU, capped by the number of ``jobs``;
    one on an accelerator or under torchrun (the ranks already share the work)."""
    if device.type != "cpu" or distributed:
        return 1
    return max(1, min(available_cores(), jobs))


def check_workers(workers: int, device: torch.device, *, distributed: bool = False) -> int:
    """Validate a user's ``--jobs``: a positive integer; more than one only on a CPU without torchrun."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"jobs must be a positive integer, got {workers!r}")
    if workers > 1 and (device.type != "cpu" or distributed):
        raise ValueError(
            f"jobs={workers} trains models side by side on CPU cores; on {device.type}"
            f"{' under torchrun' if distributed else ''} use jobs=1"
        )
    return workers


def resolve_workers(jobs: int | None, device: torch.device, count: int, *, distributed: bool = False) -> int:
    """The workers of a run of ``count`` models: :func:`auto_workers` for ``jobs=None``, else ``jobs`` checked
    by :func:`check_workers`."""
    if jobs is None:
        return auto_workers(device, count, distributed=distributed)
    return check_workers(jobs, device, distributed=distributed)


def threads_per_model(workers: int) -> int:
    """Intra-op threads each model gets: the cores divided among the workers (at least 1), or this process's
    threads when the models run here one after another."""
    return max(1, available_cores() // workers) if workers > 1 else torch.get_num_threads()


def model_threads(jobs: int | None, device: torch.device, *, distributed: bool = False) -> int:
    """Intra-op threads each model of a run trains with, a function of the flags and the machine only, never of
    how many models the run holds (the last bits of CPU training depend on it: a model added to a folder by a
    later run trained on 2 threads where the first run's trained on 1, review s7). ``jobs=None`` (the default)
    on a CPU: 1, as each of the models side by side gets; ``jobs``: the cores divided among them
    (:func:`threads_per_model`); on an accelerator or under torchrun this process's threads."""
    if device.type != "cpu" or distributed:
        return torch.get_num_threads()
    return 1 if jobs is None else threads_per_model(jobs)


@contextlib.contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore this process's."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe_workers(jobs: int, threads_per_model: int, world_size: int, threads: int) -> str:
    """How a run's models were trained, for a report: side by side, by torchrun's ranks, or one after another."""
    if jobs > 1:
        return f"{jobs} models at a time, {threads_per_model} thread(s) each"
    return f"{world_size} process(es), {threads} thread(s)"


def _init_worker(threads: int, parent: int) -> None:
    """A worker: ``threads`` intra-op threads; Ctrl-C is the parent's to handle (it terminates the workers).

    The parent terminates workers with SIGTERM (after Ctrl-C, or a failed call): here that raises ``SystemExit``,
    so a checkpoint being written removes its temporary (the default action killed the worker with a half
    file left beside the real one). A worker also gets SIGTERM when its parent (process ``parent``) dies, on
    Linux: killed parents left workers training and writing checkpoints into a folder whose lock was released.

    tqdm's default lock is a multiprocessing semaphore, which a terminated worker would leave registered with
    the resource tracker (a warning at exit); a worker's bars are off, so a thread lock serves.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    _die_with(parent)
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)


_IN_JOB = threading.Event()  # set while a worker runs a call (_indexed)


def _exit_on_term(signum: int, frame: object) -> None:
    """SIGTERM in a worker: inside a call, ``SystemExit`` (its ``finally`` blocks remove temporaries; then
    :func:`_indexed` ends the process at once); between calls, end at once (a graceful interpreter exit waits
    for every non-daemon thread, and one of torch's kept a terminated worker, and the parent's join, alive)."""
    if _IN_JOB.is_set():
        raise SystemExit(128 + signum)
    os._exit(128 + signum)


def _die_with(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (``PR_SET_PDEATHSIG``, Linux); exit at once if it already
    has (then this process was adopted: its parent is no longer ``parent``)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # (no libc prctl here: the workers then end with the pool only)
        return
    if os.getppid() != parent:
        raise SystemExit(1)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the block: while the workers are started (so they start with it
    ignored) and while they are terminated (a second Ctrl-C would leave them half-terminated).

    A spawned worker imports torch before its initializer runs (seconds on a loaded machine); a Ctrl-C in that
    window (SIGINT to the whole process group) printed a ``KeyboardInterrupt`` traceback from each worker. An
    ignored signal stays ignored across ``exec`` and Python keeps it so, so the workers never see it; the
    parent's own handler is back as soon as the processes exist (well before they are ready).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _indexed(job: tuple[int, Callable[..., Any], tuple[Any, ...]]) -> tuple[int, Any]:
    index, fn, args = job
    _IN_JOB.set()
    try:
        return index, fn(*args)
    except Exception as err:
        raise _portable(err) from err
    except SystemExit as stop:  # terminated (see _exit_on_term): the call's cleanup has run; end now
        os._exit(stop.code if isinstance(stop.code, int) else 1)
    finally:
        _IN_JOB.clear()


def _portable(err: Exception) -> Exception:
    """``err`` if it survives pickling both ways, else its nearest built-in class with the same message.

    The parent re-creates a worker's exception by calling its class with ``err.args``; a class whose
    ``__init__`` takes other arguments fails there, inside Pool's result thread, which then dies and leaves the
    parent waiting forever.
    """
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        base = next(c for c in type(err).__mro__ if c.__module__ == "builtins")
        message = f"{type(err).__name__}: {err}"
        try:
            return cast(Exception, base(message))
        except Exception:
            return RuntimeError(message)


#: Seconds between checks that every worker is still alive while waiting for a result.
POLL_SECONDS = 0.5


def _watched(pool: Any, results: Any, count: int) -> Iterator[Any]:
    """The ``count`` results of ``pool.imap_unordered``, raising as soon as a worker process has died.

    ``multiprocessing.Pool`` replaces a worker that dies abruptly (killed for memory, a crash in native code)
    but loses the call it was running, so waiting for all results would wait forever. Its workers never exit on
    their own before ``close()`` (no ``maxtasksperchild``), so any exit of one of them is such a death.

    Raises:
        ChildProcessError: a worker died (an ``OSError``: the CLI prints one line).
    """
    # the processes Pool started (all in its constructor); a private attribute, so a Python without it only
    # loses the check
    workers = list(getattr(pool, "_pool", []))
    for _ in range(count):
        while True:
            try:
                yield results.next(timeout=POLL_SECONDS)
                break
            except multiprocessing.TimeoutError:
                pass
            dead = [p for p in workers if p.exitcode is not None]
            if dead:
                raise ChildProcessError(_death(dead[0].exitcode))


def _death(code: int | None) -> str:
    """Why a worker that exited with ``code`` is refused, in one line."""
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    hint = " (SIGKILL: often the system running out of memory)" if code == -signal.SIGKILL else ""
    return (
        f"a worker process {how}{hint} while running its call, so its result would never come; work "
        "already saved (checkpoints) is kept; rerun with fewer jobs (--jobs)"
    )


def map_jobs(
    fn: Callable[..., R],
    calls: Sequence[tuple[Any, ...]],
    *,
    workers: int,
    threads: int | None = None,
    progress: bool = False,
    desc: str = "models",
) -> list[R]:
    """``[fn(*args) for args in calls]``, computed by ``workers`` processes (results in the order of ``calls``).

    Args:
        fn: a module-level function (it is pickled by name).
        calls: the argument tuples.
        workers: processes; 1 (or a single call) runs every call here, in order.
        threads: intra-op threads per call, in a worker or here (default: the cores divided among the workers, at
            least 1; here, this process's).
        progress: a tqdm bar on stderr counting finished calls (only with more than one worker: a serial run
            shows the calls' own bars).
        desc: the bar's label.

    Raises:
        Whatever a call raises, as soon as it does (as its nearest built-in class, named in the message, when
        it cannot be re-created from its ``args``); ChildProcessError as soon as a worker dies (killed for
        memory, say) instead of waiting forever for its call. The other workers are terminated (as on Ctrl-C,
        which the workers ignore and this process handles). Work already saved by a call (checkpoints written by
        rename) is kept.
    """
    if workers <= 1 or len(calls) <= 1:
        with using_threads(torch.get_num_threads() if threads is None else threads):
            return [fn(*args) for args in calls]
    workers = min(workers, len(calls))
    per = threads if threads is not None else threads_per_model(workers)
    results: list[Any] = [None] * len(calls)
    bar = tqdm(
        total=len(calls), desc=desc, file=sys.stderr, disable=not progress, leave=False, dynamic_ncols=True
    )
    pool = None
    try:
        with _sigint_ignored():
            pool = get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(per, os.getpid()))
        jobs = [(i, fn, args) for i, args in enumerate(calls)]
        for index, result in _watched(pool, pool.imap_unordered(_indexed, jobs), len(jobs)):
            results[index] = result
            bar.update()
        pool.close()
    except BaseException:
        if pool is not None:  # a second Ctrl-C must not cut terminate() short: join() would then wait forever
            with _sigint_ignored():
                pool.terminate()
                pool.join()
            pool = None
        raise
    finally:
        if pool is not None:
            pool.join()
        bar.close()
    return results
