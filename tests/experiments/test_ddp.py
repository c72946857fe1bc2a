"""Data-parallel ``posenc compare`` under torchrun (2 CPU processes, gloo) matches one process, same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posenc.experiments.compare import CompareConfig, run_compare

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
