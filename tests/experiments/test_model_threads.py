"""Threads per model are a function of the flags and the machine, never of how many models a run holds (review
s7): with the defaults a lone model (an encoding or seed added to a folder later) trained in-process on every
core while the first run's models trained side by side on one thread each, so it was not bitwise the model the
first run would have trained; ``--jobs 2`` with one model recorded 1 thread while it trained on 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posenc.experiments import pool
from posenc.experiments.compare import CompareConfig, run_compare
from posenc.experiments.pool import map_jobs, model_threads, using_threads
from posenc.experiments.report import _mixed_threads


def threads_here(x: int) -> tuple[int, int]:
    return x, torch.get_num_threads()


def test_model_threads_follow_the_flags_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "available_cores", lambda: 8)
    cpu = torch.device("cpu")
    assert model_threads(None, cpu) == 1  # the default: one thread per model, side by side
    assert model_threads(4, cpu) == 2 and model_threads(16, cpu) == 1
    with using_threads(3):
        assert model_threads(1, cpu) == 3  # --jobs 1 (or --threads N): this process's threads
        assert model_threads(None, torch.device("cuda")) == 3
        assert model_threads(None, cpu, distributed=True) == 3
    assert torch.get_num_threads() != 3 or model_threads(1, cpu) == 3  # (restored)


def test_a_lone_call_runs_here_with_the_threads_asked() -> None:
    before = torch.get_num_threads()
    assert map_jobs(threads_here, [(7,)], workers=2, threads=1) == [(7, 1)]
    assert map_jobs(threads_here, [(1,), (2,)], workers=1, threads=1) == [(1, 1), (2, 1)]
    assert torch.get_num_threads() == before


def test_an_encoding_added_later_is_the_model_a_joint_run_trains(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "available_cores", lambda: 2)
    cfg = CompareConfig(**{**CompareConfig.quick(steps=6).__dict__, "data": str(tiny_corpus)})
    with using_threads(2):  # (as the CLI sets the process: every core; jobs=None as its default)
        joint = run_compare(
            cfg, encodings=["rope", "alibi"], out=tmp_path / "joint", device="cpu", progress=False, jobs=None
        )
        run_compare(cfg, encodings=["rope"], out=tmp_path / "added", device="cpu", progress=False, jobs=None)
        added = run_compare(
            cfg, encodings=["alibi"], out=tmp_path / "added", device="cpu", progress=False, jobs=None
        )
    for name in ("rope", "alibi"):
        a, b = joint["runs"][name]["0"], added["runs"][name]["0"]
        assert a["perplexity"] == b["perplexity"] and a["final_train_loss"] == b["final_train_loss"]
        assert a["threads"] == b["threads"] == 1
    assert joint["settings"]["jobs"] == 2 and joint["settings"]["threads"] == 1
    assert added["settings"]["jobs"] == 1 and added["settings"]["threads"] == 1
    joint_state = torch.load(tmp_path / "joint" / "checkpoints" / "alibi" / "seed0.pt", weights_only=True)
    added_state = torch.load(tmp_path / "added" / "checkpoints" / "alibi" / "seed0.pt", weights_only=True)
    for key, value in joint_state["state_dict"].items():
        assert torch.equal(value, added_state["state_dict"][key]), key


def test_the_report_says_when_a_folder_mixes_threads() -> None:
    runs = {"rope": {"0": {"threads": 1}}, "alibi": {"0": {"threads": 2}, "1": {"threads": None}}}
    note = _mixed_threads({"runs": runs})
    assert "trained with 1, 2 threads each" in note and "--threads" in note
    assert _mixed_threads({"runs": {"rope": {"0": {"threads": 1}, "1": {}}}}) == ""
