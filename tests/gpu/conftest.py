"""The GPU tier prints each failure the moment it happens.

``make gpu-check`` gives this tier a fixed time (``timeout``); pytest prints failure details only at the end of a
run, which a run cut short never reaches, so without this a timeout would keep only a line of ``F`` and ``.``.
"""

from __future__ import annotations

import os
import sys

import pytest

#: the end of a long report is kept (the assertion or the compiler's last words come last)
MAX_CHARS = 4000


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Write a failed test's report to stderr now (in the controller only: xdist workers forward theirs)."""
    if not report.failed or "PYTEST_XDIST_WORKER" in os.environ:
        return
    text = report.longreprtext
    if len(text) > MAX_CHARS:
        text = "...\n" + text[-MAX_CHARS:]
    sys.stderr.write(f"\nFAILED {report.nodeid} ({report.when}):\n{text}\n")
    sys.stderr.flush()
