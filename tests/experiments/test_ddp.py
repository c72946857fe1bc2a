"""Data-parallel ``posenc compare`` under torchrun (2 CPU processes, gloo) matches one process, same global batch;
``resolve_device`` refuses a GPU that is not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posenc.experiments.compare import CompareConfig, run_compare
from posenc.experiments.dist import resolve_device

STEPS = 8


@pytest.mark.slow
def test_two_ranks_match_one_process(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "posenc", "compare", "--quick", "--steps", str(STEPS), "--encodings", "rope",
        "--data", str(tiny_corpus), "--out", str(out), "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("| rope |") == 1  # only rank 0 prints and writes

    cfg = CompareConfig(**{**CompareConfig.quick(steps=STEPS).__dict__, "data": str(tiny_corpus)})
    single = run_compare(cfg, encodings=["rope"], out=tmp_path / "single", device="cpu", progress=False)

    ddp_ckpt = torch.load(out / "checkpoints" / "rope" / "seed0.pt", weights_only=True)
    one_ckpt = torch.load(tmp_path / "single" / "checkpoints" / "rope" / "seed0.pt", weights_only=True)
    torch.testing.assert_close(
        torch.tensor(ddp_ckpt["losses"]), torch.tensor(one_ckpt["losses"]), rtol=1e-4, atol=1e-5
    )
    for name, value in one_ckpt["state_dict"].items():
        torch.testing.assert_close(ddp_ckpt["state_dict"][name], value, rtol=1e-3, atol=1e-4, msg=name)
    for length, ppl in single["perplexity"]["rope"].items():
        assert ddp_ckpt["perplexity"]["rope"][length] == pytest.approx(ppl, rel=1e-3)


def test_a_gpu_index_past_the_last_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """--device cuda:3 on a one-GPU machine was accepted and failed later inside torch ('invalid device
    ordinal', a traceback); now one clear error naming the GPUs there are."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--device cuda:3: torch sees 1 GPU\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda", 0) and resolve_device("cuda").index is None


def _no_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("work began before the batch size was checked")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["compare", "--quick", "--batch-size", "8"],
            "--batch-size 8 cannot be shared by the 3 processes torchrun started (each takes an equal part of every "
            "step's batch); give a multiple of 3 (e.g. 6 or 9) or run a number of processes that divides 8",
        ),
        (
            ["compare", "--quick"],
            "the preset's batch size (--batch-size) 8 cannot be shared by the 3 processes",
        ),
        (
            ["tasks", "--quick"],
            "the batch size 8 cannot be shared by the 3 processes torchrun started (each takes an equal part of "
            "every step's batch); run a number of processes that divides 8",
        ),
    ],
)
def test_a_batch_the_processes_cannot_share_is_refused_before_any_work(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under torchrun with 3 processes a batch of 8 was refused only at the first training step, after the corpus
    was read and the models built; now at once, in one line, before --out is touched."""
    from posenc.cli import main
    from posenc.experiments import compare
    from posenc.experiments.tasks import experiment

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    for module in (compare, experiment):
        monkeypatch.setattr(module, "setup_world", _no_work)
    monkeypatch.setattr(compare, "check_buildable", _no_work)
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()
    with pytest.raises(ValueError, match="batch_size 8 cannot be shared by the 3 processes"):
        run_compare(CompareConfig.quick(), out=tmp_path / "api", progress=False)
