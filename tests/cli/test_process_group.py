"""``posenc.cli.main`` destroys the torch.distributed process group its command joined before it returns (left
to the interpreter's exit, gloo's threads could abort the process after the one-line error), whether the
command succeeded or failed. A one-process gloo group on a file store stands in for torchrun's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from posenc.cli.stops import leave_process_group


def _join(tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert dist.is_initialized()


def test_leave_process_group_destroys_it(tmp_path: Path) -> None:
    _join(tmp_path)
    try:
        leave_process_group()
        assert not dist.is_initialized()
        leave_process_group()  # none left: nothing to do
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_main_leaves_the_group_after_a_failing_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from posenc.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _join(tmp_path)
    try:
        status = main(
            ["compare", "--quick", "--encodings", "nope", "--out", str(tmp_path / "o"), "--device", "cpu"]
        )
        assert status == 2 and "unknown encoding 'nope'" in capsys.readouterr().err
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
