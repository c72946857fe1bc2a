"""Timing and reporting helpers shared by the benchmark suites and ``posenc bench``.

Timings are medians over repeats of one call each (CUDA events on CUDA, wall clock elsewhere:
:func:`call_timer`). Candidates that are compared with each other are timed round-robin (one call of each per
round), so a machine that slows down mid-run slows all of them alike and
the ratios to the baseline measured in the same rounds stay meaningful.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..validation import first_line
from .suites import Row

log = logging.getLogger(__name__)


def synchronize(device: str) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_round_robin(
    fns: Mapping[str, Callable[[], object]],
    device: str,
    repeats: int,
    warmup: int = 1,
    errors: dict[str, str] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each function, timed one call of each per round.

    A function that raises (a kernel that fails to compile on this card, out of memory) is dropped from the
    rounds and its reason recorded in ``errors``: one failing case never takes the others down.

    Args:
        fns: name -> zero-argument callable doing the work once.
        device: where the work runs (for synchronization).
        repeats: timed rounds (the median is over these).
        warmup: untimed rounds first (compilation, allocator warm-up).
        errors: filled with name -> ``"error: <exception>"`` for the functions that raised.

    Returns:
        name -> median seconds, for the functions that ran.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    timer = call_timer(device)
    failed: dict[str, str] = {} if errors is None else errors
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            if name in failed:
                continue
            try:
                seconds = timer(fn)
            except Exception as err:  # noqa: BLE001 - reported as the case's status, the run goes on
                failed[name] = error_note(err)
                log.warning("bench: %s failed: %s", name, failed[name])
                continue
            if r >= warmup:
                samples[name].append(seconds)
    return {name: statistics.median(times) for name, times in samples.items() if name not in failed}


def call_timer(device: str) -> Callable[[Callable[[], object]], float]:
    """``timer(fn)``: seconds one call of ``fn`` takes, the device idle before it.

    On CUDA, between two CUDA events recorded around the call on the current stream (as
    ``triton.testing.do_bench`` does): the host's synchronize latency, tens of microseconds, stays out of
    figures that are themselves tens of microseconds (a RoPE copy floor, a flash attention forward). Host time
    spent launching is still in: the device waits for it. Elsewhere, ``time.perf_counter`` around the call.
    """
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_timer(fn: Callable[[], object]) -> float:
            torch.cuda.synchronize(device)
            stream = torch.cuda.current_stream(device)
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds

        return cuda_timer

    def host_timer(fn: Callable[[], object]) -> float:
        synchronize(device)
        begin = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - begin

    return host_timer


def error_note(err: BaseException) -> str:
    """``"error: <type>: <first line>"`` for a bench row (long compiler messages cut to one line). A first line
    that only announces the reason (dynamo's ``backend='inductor' raised:``) takes the next line with it."""
    first = first_line(err) if str(err).strip() else ""
    return f"error: {type(err).__name__}: {first[:300]}"


def environment(device: str, quick: bool) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "quick": quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")  # one cell: an error's '|' or newline split it


def markdown_table(rows: Sequence[Row]) -> str:
    """A GitHub markdown table; columns are the union of the rows' keys, in first-seen order."""
    if not rows:
        return "(no rows)\n"
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines.extend("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows)
    return "\n".join(lines) + "\n"


def markdown_report(report: Mapping[str, Any]) -> str:
    """The whole report as markdown: one section per suite."""
    env = report["environment"]
    head = f"torch {env['torch']} on {env.get('gpu', env['device'])}, {env['cpu_threads']} CPU threads"
    parts = [f"# posenc bench\n\n{head}{' (--quick)' if env['quick'] else ''}, {env['date']}\n"]
    for name, rows in report["suites"].items():
        parts.append(f"\n## {name}\n\n{markdown_table(rows)}")
    return "".join(parts)


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` into ``out_dir`` (created if needed), atomically and never through a
    link (:mod:`posenc.experiments.checkpoints`); return their paths."""
    from ..experiments.checkpoints import check_out_dir, write_text

    check_out_dir(out_dir, files=("bench.json", "bench.md"))
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    write_text(md_path, markdown_report(report))
    return json_path, md_path
