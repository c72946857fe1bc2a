"""torchrun's environment outside the common case: a RANK without WORLD_SIZE is no torchrun run (rank 0, which
reports); a LOCAL_WORLD_SIZE below 1 is named in one line; settings that differ in shape (a nested setting on
one rank only) are named, not a traceback; a RuntimeError outside a process group is no peer's stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from posenc.cli.stops import peer_stopped
from posenc.experiments.dist import env_rank, first_difference, local_world_size


def test_a_rank_without_world_size_is_rank_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for rank in ("1", "7", "not a number"):
        monkeypatch.setenv("RANK", rank)
        assert env_rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "3")
    assert env_rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert env_rank() == 3


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_local_world_size_below_one_is_named(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from posenc.cli import main

    monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
    with pytest.raises(ValueError, match=f"LOCAL_WORLD_SIZE={value} in the environment must be at least 1"):
        local_world_size()
    monkeypatch.delenv(
        "OMP_NUM_THREADS", raising=False
    )  # (the thread count is then shared by LOCAL_WORLD_SIZE)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "o"
    assert main(["tasks", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"posenc tasks: error: LOCAL_WORLD_SIZE={value} in the environment must be at least 1 (torchrun sets it)\n"
    )
    assert not out.exists()


def test_a_nested_setting_on_one_side_only_is_named() -> None:
    assert first_difference({"a": {"b": 1}}, {}) == ("a", {"b": 1}, None)
    assert first_difference({}, {"a": {"b": 1}}) == ("a", None, {"b": 1})
    assert first_difference({"x": {"b": 1}}, {"x": [1]}) == ("x", {"b": 1}, [1])
    assert first_difference({"x": 2}, {"x": {"y": 2}}) == ("x", 2, {"y": 2})


def test_a_runtime_error_outside_a_process_group_is_no_peer_stop() -> None:
    for text in ("ProcessGroup", "NCCL error in the kernel", "gloo", "Connection reset by peer"):
        assert not peer_stopped(RuntimeError(text))
