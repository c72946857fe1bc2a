"""The GPU tier's early failure report (``conftest.py``) runs on CPU too: it is what a timed-out run keeps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _hook() -> object:
    spec = importlib.util.spec_from_file_location("gpu_conftest", Path(__file__).with_name("conftest.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(outcome: str, text: str) -> pytest.TestReport:
    return pytest.TestReport("tests/gpu/test_x.py::test_y", ("", 0, ""), {}, outcome, text, "call")


def test_a_failure_is_written_at_once_and_its_end_kept(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    hook = _hook()
    hook.pytest_runtest_logreport(_report("passed", ""))  # type: ignore[attr-defined]
    assert capsys.readouterr().err == ""
    hook.pytest_runtest_logreport(_report("failed", "x" * 10_000 + "AssertionError: the end"))  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert "FAILED tests/gpu/test_x.py::test_y (call)" in err and err.rstrip().endswith("the end")
    assert len(err) < 4200


def test_an_xdist_worker_leaves_it_to_the_controller(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    _hook().pytest_runtest_logreport(_report("failed", "boom"))  # type: ignore[attr-defined]
    assert capsys.readouterr().err == ""
