"""Review s7, items 3-5: a refused run leaves its folder as it was (no config.json of its own), a run holding the
folder's lock removes the temporaries a killed run left (only those), and a refusal names the flag that changed."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from posenc.experiments.checkpoints import remove_temporaries, run_lock
from posenc.experiments.compare import CompareConfig, run_compare
from posenc.experiments.fingerprints import flag_differences
from posenc.experiments.tasks import TasksConfig, run_tasks

FAST = CompareConfig.quick(steps=8)
TASKS_FAST = TasksConfig.quick(steps=4)


def _cfg(corpus: Path, **train: object) -> CompareConfig:
    cfg = CompareConfig(**{**FAST.__dict__, "data": str(corpus)})
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train)) if train else cfg


@pytest.fixture(scope="module")
def compared(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("refusals") / "run"
    run_compare(_cfg(tiny_corpus), encodings=["none", "alibi"], out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def tasked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("refusals") / "tasks"
    run_tasks(TASKS_FAST, tasks=["copy"], encodings=["none"], out=out, device="cpu", progress=False)
    return out


def _checkpoints_only(src: Path, dst: Path) -> Path:
    """A copy of a run folder without its config.json and results.json (deleted by hand)."""
    shutil.copytree(src, dst)
    (dst / "config.json").unlink()
    (dst / "results.json").unlink()
    return dst


# -- a refused run writes nothing ------------------------------------------------------------------------------
def test_a_compare_refused_by_a_checkpoint_leaves_the_folder_as_it_was(
    compared: Path, tmp_path: Path, tiny_corpus: Path
) -> None:
    out = _checkpoints_only(compared, tmp_path / "run")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(
        ValueError,
        match=r"alibi/seed0\.pt was not made by this run \(--steps or --preset/--quick \(train\.steps\): 8 -> 9",
    ):
        run_compare(_cfg(tiny_corpus, steps=9), encodings=["alibi", "none"], out=out, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no config.json of 9 steps
    again = run_compare(_cfg(tiny_corpus), encodings=["alibi", "none"], out=out, progress=False)
    assert again["this_run"]["resumed"] == ["alibi/0", "none/0"]  # the checkpoints' own command resumes


def test_a_tasks_run_refused_by_a_checkpoint_leaves_the_folder_as_it_was(
    tasked: Path, tmp_path: Path
) -> None:
    out = _checkpoints_only(tasked, tmp_path / "run")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(
        ValueError,
        match=r"none-s0\.pt was not made by this run \(--steps or --quick \(train\.steps\): 4 -> 5",
    ):
        run_tasks(
            TasksConfig.quick(steps=5),
            tasks=["copy"],
            encodings=["none"],
            out=out,
            device="cpu",
            progress=False,
        )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    again = run_tasks(TASKS_FAST, tasks=["copy"], encodings=["none"], out=out, device="cpu", progress=False)
    assert again["resumed"] == ["copy/none/s0"]


# -- temporaries of a killed run ---------------------------------------------------------------------------------
def _plant(out: Path, outside: Path) -> tuple[list[Path], list[Path]]:
    """Temporaries as the safe writer names them (to be removed) and look-alikes (to be kept) under ``out``."""
    ckpt = out / "checkpoints" / "rope"
    (ckpt / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / ".seed0.pt.abcd1234.tmp").write_text("not ours")
    (outside / "victim").write_text("precious")
    gone = [out / ".results.json.k2_x9q0z.tmp", ckpt / ".seed0.pt.abcd1234.tmp"]
    kept = [
        out / ".results.json.tmp",  # no random part
        out / "results.json.abcd1234.tmp",  # no leading dot
        ckpt / ".seed0.pt.ABCD1234.tmp",  # mkstemp's names are lower case
        ckpt / ".seed0.pt.abcd123.tmp",  # seven characters
        ckpt / ".seed0.pt.abcd1234.tmp.bak",
        ckpt / "sub" / ".seed0.pt.abcd1234.tmp",  # not a folder the run writes in
    ]
    for path in gone + kept:
        path.write_text("half")
    for path in gone + kept:  # left by a run killed an hour ago
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    fresh = ckpt / ".seed1.pt.abcd1234.tmp"  # a write in progress (posenc plot --out into the run folder)
    fresh.write_text("writing")
    kept.append(fresh)
    (ckpt / ".link.pt.abcd1234.tmp").symlink_to(
        outside / "victim"
    )  # a link named like one: kept, not followed
    (out / "checkpoints" / "linked").symlink_to(outside, target_is_directory=True)  # never entered
    (ckpt / ".dir.pt.abcd1234.tmp").mkdir()  # not a regular file
    kept += [
        ckpt / ".link.pt.abcd1234.tmp",
        ckpt / ".dir.pt.abcd1234.tmp",
        outside / ".seed0.pt.abcd1234.tmp",
    ]
    return gone, kept


def test_the_lock_holder_removes_only_the_safe_writers_temporaries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    gone, kept = _plant(out, tmp_path / "outside")
    with caplog.at_level(logging.INFO, logger="posenc.experiments.checkpoints"), run_lock(out):
        pass
    assert not any(p.exists() for p in gone)
    assert all(os.path.lexists(p) for p in kept)
    assert (tmp_path / "outside" / "victim").read_text() == "precious"
    assert all(f"removed {p}" in caplog.text for p in gone)
    assert remove_temporaries(out) == []  # nothing left to remove


def test_a_rerun_holding_the_lock_clears_a_killed_runs_temporary(
    compared: Path, tmp_path: Path, tiny_corpus: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(compared, out)
    half = out / "checkpoints" / "alibi" / ".seed0.pt.q1w2e3r4.tmp"  # a checkpoint write cut by SIGKILL
    half.write_bytes(b"PK\x03")
    os.utime(half, (time.time() - 3600, time.time() - 3600))  # (the kill was a while ago)
    with run_lock(out):
        again = run_compare(_cfg(tiny_corpus), encodings=["alibi"], out=out, progress=False)
    assert again["this_run"]["resumed"] == ["alibi/0"]
    assert not half.exists() and not list(out.rglob("*.tmp"))


# -- refusals name the flag -------------------------------------------------------------------------------------
def test_a_changed_eval_bytes_is_named_by_its_flag(compared: Path, tmp_path: Path, tiny_corpus: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(compared, out)
    cfg = _cfg(tiny_corpus)
    fewer = dataclasses.replace(cfg, eval_bytes=cfg.train.train_len * 16)  # one block of 16L
    with pytest.raises(
        ValueError, match=r"configuration \(--eval-bytes or --preset/--quick \(eval_tokens\): \d+ -> 256\)"
    ):
        run_compare(fewer, encodings=["alibi"], out=out, progress=False)


def test_a_changed_train_len_says_the_bytes_scored_follow_from_it(
    compared: Path, tmp_path: Path, tiny_corpus: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(compared, out)
    with pytest.raises(ValueError) as info:
        run_compare(_cfg(tiny_corpus, train_len=8), encodings=["alibi"], out=out, progress=False)
    message = str(info.value)
    assert "--eval-bytes or --preset/--quick (eval_tokens, follows from --train-len too): " in message
    assert "--train-len or --preset/--quick (train.train_len): 16 -> 8" in message


def test_flags_are_named_as_each_command_has_them() -> None:
    fp = {"eval_layout": 1, "train": {"precision": "fp32", "weight_decay": 0.1}, "data": {"sha256": "a"}}
    other = {"eval_layout": 1, "train": {"precision": "bf16", "weight_decay": 0.2}, "data": {"sha256": "b"}}
    assert flag_differences(fp, other) == [
        "--data (data.sha256): 'a' -> 'b'",
        "--precision or --preset/--quick (train.precision, as resolved): 'fp32' -> 'bf16'",
        "train.weight_decay: 0.1 -> 0.2",  # set by a preset, no flag of its own
    ]
    diffs = flag_differences(TASKS_FAST.fingerprint(), TasksConfig().fingerprint())
    assert "train.dim: 32 -> 64" in diffs  # posenc tasks has no --dim (--quick sets it)
    assert "--steps or --quick (train.steps): 4 -> 2000" in diffs


def test_a_changed_text_is_one_entry_and_leaves_room_for_the_rest() -> None:
    """Other text changes its digest, sizes, split and source: five entries took the refusal's room (review s7)."""
    fp = {"eval_layout": 1, "train": {"steps": 8}, "data": {"sha256": "a", "train_bytes": 1, "val_bytes": 2}}
    other = {
        "eval_layout": 1,
        "train": {"steps": 9},
        "data": {"sha256": "b", "train_bytes": 3, "val_bytes": 4},
    }
    assert flag_differences(fp, other) == [
        "--data (data.sha256, and 2 more of data): 'a' -> 'b'",
        "--steps or --preset/--quick (train.steps): 8 -> 9",
    ]
