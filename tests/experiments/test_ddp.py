"""Data-parallel ``posenc compare`` under torchrun (2 CPU processes, gloo) matches one process, same global batch;
``resolve_device`` refuses a GPU that is not there."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from posenc.experiments import dist as dist_module
from posenc.experiments.compare import CompareConfig, run_compare
from posenc.experiments.dist import World, first_difference, resolve_device, setup_world

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


def _by_hand(argvs: list[list[str]]) -> list[tuple[int, str]]:
    """Start one ``python -m posenc`` per argv as the ranks of one run, as torchrun would but each with its own
    arguments (a launch by hand, or one command typed per node): (exit status, stderr) of each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    size = str(len(argvs))
    procs = []
    for rank, argv in enumerate(argvs):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=size, LOCAL_WORLD_SIZE=size)
        cmd = [sys.executable, "-m", "posenc", *argv]
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        )
    return [(p.wait(timeout=180), p.stderr.read()) for p in procs if p.stderr is not None]


@pytest.mark.slow
def test_ranks_started_with_other_settings_are_refused_on_every_rank(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """Ranks given other seeds (or data, steps, encodings) trained one model from their mixed gradients and saved
    it under rank 0's settings, or hung in a collective; now every rank refuses in one line before training."""
    base = ["compare", "--quick", "--steps", "2", "--encodings", "rope", "--data", str(tiny_corpus)]
    base += ["--out", str(tmp_path / "o"), "--no-progress", "--device", "cpu"]
    ranks = _by_hand([[*base, "--seed", "0"], [*base, "--seed", "1"]])
    for rank, (status, err) in enumerate(ranks):
        assert status == 2 and err.count("\n") == 1, err
        assert err.startswith(
            f"posenc compare [rank {rank}]: error: the 2 processes of this torchrun run were not"
        )
        assert "seeds is [0] on rank 0 but [1] on rank 1" in err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.slow
def test_a_rank_that_fails_stops_the_others_in_one_line(tiny_corpus: Path, tmp_path: Path) -> None:
    """A rank that refused its input left the others with a gloo traceback (and an abort at exit)."""
    base = ["compare", "--quick", "--steps", "2", "--encodings", "rope", "--out", str(tmp_path / "o")]
    base += ["--no-progress", "--device", "cpu", "--data"]
    (status0, err0), (status1, err1) = _by_hand([[*base, str(tiny_corpus)], [*base, str(tmp_path / "none")]])
    assert (status0, status1) == (2, 2), err0 + err1
    assert err1.startswith("posenc compare [rank 1]: error: --data") and err1.count("\n") == 1, err1
    assert err0.startswith("posenc compare [rank 0]: error: another process of this torchrun run stopped"), (
        err0
    )
    assert err0.count("\n") == 1, err0


def test_torchrun_variables_are_named_when_missing_or_wrong(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """WORLD_SIZE without RANK was a KeyError traceback; a RANK that is not a number an unnamed int() error."""
    from posenc.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    assert main(["compare", "--quick", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posenc compare: error: RANK is not set in the environment but WORLD_SIZE=2 is"), (
        err
    )
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one' in the environment is not an integer"):
        setup_world(torch.device("cpu"))
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 in the environment must be below WORLD_SIZE=2"):
        setup_world(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(ValueError, match="WORLD_SIZE=0 in the environment must be at least 1"):
        setup_world(torch.device("cpu"))


def test_agree_names_the_first_setting_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert first_difference({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 2]}}) is None
    assert first_difference({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}) == ("b.c", 2, 3)
    assert first_difference({"a": 1}, {"a": 1, "z": 0}) == ("z", None, 0)
    others: list[dict[str, Any]] = [
        {"seeds": [0], "encodings": ["rope"]},
        {"seeds": [0], "encodings": ["alibi"]},
    ]

    def gather(into: list[Any], mine: Any) -> None:
        into[:] = others

    barriers: list[int] = []
    monkeypatch.setattr(dist_module.dist, "all_gather_object", gather)
    monkeypatch.setattr(dist_module.dist, "barrier", lambda: barriers.append(1))
    with pytest.raises(ValueError, match=r"encodings is \['rope'\] on rank 0 but \['alibi'\] on rank 1"):
        World(0, 2).agree(seeds=[0], encodings=["rope"])
    assert barriers == [1]  # every rank leaves together (a peer tearing the group down aborted one at exit)
    World(0, 1).agree(seeds=[5])  # one process: nothing to compare, no collective
