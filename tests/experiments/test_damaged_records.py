"""A damaged field of a ``results.json`` record or of a checkpoint is refused before any training, as one line
naming the file, the field and what it holds (``posenc compare`` and ``posenc tasks``, exit code 2).

These crashed after training with a traceback (a curve without ``steps``: ``KeyError``; a perplexity of 0:
``ZeroDivisionError``; empty ``losses``: ``ZeroDivisionError``; seeds whose passkey depth groups differ:
``KeyError``), failed with a message naming no file (``losses: "abc"``, a ``train_seconds`` that is not a number),
or showed a silent n/a (a perplexity row missing one length)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from posenc.cli import main

Damage = Callable[[dict[str, Any]], Any]

# ---------------------------------------------------------------------------------------------- posenc compare
COMPARE = ["compare", "--quick", "--steps", "4", "--threads", "1", "--no-progress"]
# "none" is new to the rerun and first: it would be trained before the records and checkpoints of the others are read
RERUN = ["--encodings", "none,rope,alibi"]


@pytest.fixture(scope="module")
def compare_run(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One trained compare run (rope, alibi; seed 0) and its data flag, copied by each case."""
    out = tmp_path_factory.mktemp("damaged") / "compare"
    data = ["--data", str(tiny_corpus)]
    assert main([*COMPARE, *data, "--encodings", "rope,alibi", "--out", str(out)]) == 0
    return out, data


def _checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoints/**/*.pt"))


def _refused(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv`` and return its one line of error; nothing was trained (no checkpoint added or rewritten)."""
    before = {p: p.stat().st_mtime_ns for p in _checkpoints(out)}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert {p: p.stat().st_mtime_ns for p in _checkpoints(out)} == before  # refused before any training
    return err


def _curve_short(r: dict[str, Any]) -> None:
    r["curve"]["16"] = r["curve"]["16"][:1]


RECORDS: list[tuple[str, Damage, str]] = [
    ("curve_no_steps", lambda r: r["curve"].pop("steps"), "curve has no 'steps'"),
    ("curve_steps_str", lambda r: r["curve"].update(steps=["a", "b"]), "curve.steps is ['a', 'b'], not step"),
    ("curve_short", _curve_short, "curve.16 holds 1 value(s), not one per step"),
    ("ppl_empty", lambda r: r.update(perplexity={}), "perplexity has no row 'alibi' (the encoding's own)"),
    ("ppl_other_row", lambda r: r["perplexity"].update(rope={"16": 2.0}), "perplexity has the row 'rope'"),
    ("ppl_no_length", lambda r: r["perplexity"]["alibi"].pop("32"), "perplexity.alibi has no length 32"),
    ("ppl_zero", lambda r: r["perplexity"]["alibi"].update({"16": 0}), "perplexity.alibi.16 is 0, not a"),
    (
        "ppl_negative",
        lambda r: r["perplexity"]["alibi"].update({"16": -1}),
        "perplexity.alibi.16 is -1, not a",
    ),
    (
        "ppl_bool",
        lambda r: r["perplexity"]["alibi"].update({"64": True}),
        "perplexity.alibi.64 is True, not a",
    ),
    ("loss_str", lambda r: r.update(final_train_loss="abc"), "final_train_loss is 'abc', not a number"),
    ("secs_str", lambda r: r.update(train_seconds="x"), "train_seconds is 'x', not a number"),
    ("rate_list", lambda r: r.update(tokens_per_second=[1]), "tokens_per_second is [1], not a number"),
]


@pytest.mark.parametrize(("damage", "named"), [c[1:] for c in RECORDS], ids=[c[0] for c in RECORDS])
def test_compare_damaged_record_is_one_line_before_training(
    compare_run: tuple[Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Damage,
    named: str,
) -> None:
    out = tmp_path / "run"
    shutil.copytree(compare_run[0], out)
    results = json.loads((out / "results.json").read_text())
    damage(results["runs"]["alibi"]["0"])
    (out / "results.json").write_text(json.dumps(results))
    err = _refused([*COMPARE, *compare_run[1], *RERUN, "--out", str(out)], out, capsys)
    assert err.startswith(
        f"posenc compare: error: {out / 'results.json'} is damaged (runs.alibi.0.{named}"
    ), err
    assert not (out / "checkpoints" / "none").exists()


CHECKPOINTS: list[tuple[str, Damage, str]] = [
    ("losses_empty", lambda c: c.update(losses=[]), "losses is [], not a non-empty list of numbers"),
    ("losses_missing", lambda c: c.pop("losses"), "losses is missing, not a non-empty list of numbers"),
    ("losses_str", lambda c: c.update(losses="abc"), "losses is 'abc', not a non-empty list of numbers"),
    (
        "ppl_str",
        lambda c: c["perplexity"]["alibi"].update({"16": "abc"}),
        "perplexity.alibi.16 is 'abc', not a",
    ),
    (
        "ppl_row_list",
        lambda c: c["perplexity"].update(alibi=[1, 2]),
        "perplexity.alibi is [1, 2], not length",
    ),
    ("ppl_no_length", lambda c: c["perplexity"]["alibi"].pop("32"), "perplexity.alibi has no length 32"),
    ("curve_no_steps", lambda c: c["curve"].pop("steps"), "curve has no 'steps'"),
    ("secs_str", lambda c: c.update(train_seconds="x"), "train_seconds is 'x', not a number"),
    ("secs_missing", lambda c: c.pop("eval_seconds"), "eval_seconds is missing, not a number"),
    ("rate_none", lambda c: c.update(tokens_per_second=None), "tokens_per_second is None, not a number"),
]


@pytest.mark.parametrize(("damage", "named"), [c[1:] for c in CHECKPOINTS], ids=[c[0] for c in CHECKPOINTS])
def test_compare_damaged_checkpoint_field_is_one_line_before_training(
    compare_run: tuple[Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Damage,
    named: str,
) -> None:
    out = tmp_path / "run"
    shutil.copytree(compare_run[0], out)
    path = out / "checkpoints" / "alibi" / "seed0.pt"
    ckpt = torch.load(path, weights_only=True)
    damage(ckpt)
    torch.save(ckpt, path)
    err = _refused([*COMPARE, *compare_run[1], *RERUN, "--out", str(out)], out, capsys)
    assert err.startswith(f"posenc compare: error: {path} is damaged ({named}"), err
    assert "delete it and rerun to retrain alibi seed 0" in err
    assert not (out / "checkpoints" / "none").exists()


def test_compare_sound_run_resumes(
    compare_run: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checks accept what a run writes: its rerun loads every checkpoint and trains nothing."""
    out = tmp_path / "run"
    shutil.copytree(compare_run[0], out)
    assert main([*COMPARE, *compare_run[1], "--encodings", "rope,alibi", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["this_run"]["resumed"] == ["rope/0", "alibi/0"]


# ------------------------------------------------------------------------------------------------ posenc tasks
TASKS = ["tasks", "--quick", "--steps", "4", "--encodings", "alibi", "--jobs", "1", "--no-progress"]
# "copy" is new to the rerun and first: it would be trained before the passkey records and checkpoints are read
TASKS_RERUN = ["--tasks", "copy,passkey", "--seeds", "0,1"]


@pytest.fixture(scope="module")
def tasks_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trained tasks run (passkey, alibi, seeds 0 and 1), copied by each case."""
    out = tmp_path_factory.mktemp("damaged") / "tasks"
    assert main([*TASKS, "--tasks", "passkey", "--seeds", "0,1", "--out", str(out)]) == 0
    return out


def _drop_group(runs: dict[str, Any]) -> None:
    """Seed 1 lacks passkey depth 1 (seed 0 has it)."""
    for groups in runs["1"]["cells"]["alibi"].values():
        groups.pop("1")


TASK_RECORDS: list[tuple[str, Damage, str]] = [
    (
        "loss_str",
        lambda s: s["0"].update(final_train_loss="abc"),
        "0.final_train_loss is 'abc', not a number",
    ),
    ("secs_str", lambda s: s["0"].update(train_seconds="abc"), "0.train_seconds is 'abc', not a number"),
    ("secs_list", lambda s: s["0"].update(eval_seconds=[1]), "0.eval_seconds is [1], not a number"),
    ("depth_groups_differ", _drop_group, "1.cells.alibi.16 holds the depth groups 0, not 0, 1"),
    ("cells_other_row", lambda s: s["0"].update(cells={"rope": {}}), "0.cells has no row 'alibi'"),
]


@pytest.mark.parametrize(("damage", "named"), [c[1:] for c in TASK_RECORDS], ids=[c[0] for c in TASK_RECORDS])
def test_tasks_damaged_record_is_one_line_before_training(
    tasks_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Damage, named: str
) -> None:
    out = tmp_path / "run"
    shutil.copytree(tasks_run, out)
    results = json.loads((out / "results.json").read_text())
    damage(results["runs"]["passkey"]["alibi"])
    (out / "results.json").write_text(json.dumps(results))
    err = _refused([*TASKS, "--tasks", "copy", "--out", str(out)], out, capsys)
    assert err.startswith(
        f"posenc tasks: error: {out / 'results.json'} is damaged (runs.passkey.alibi.{named}"
    ), err
    assert not (out / "checkpoints" / "copy").exists()


TASK_CHECKPOINTS: list[tuple[str, Damage, str]] = [
    ("losses_empty", lambda c: c.update(losses=[]), "losses is [], not a non-empty list of numbers"),
    ("secs_str", lambda c: c.update(train_seconds="x"), "train_seconds is 'x', not a number"),
    (
        "group_missing",
        lambda c: c["cells"]["alibi"]["32"].pop("1"),
        "cells.alibi.32 holds the depth groups 0, not",
    ),
]


@pytest.mark.parametrize(
    ("damage", "named"), [c[1:] for c in TASK_CHECKPOINTS], ids=[c[0] for c in TASK_CHECKPOINTS]
)
def test_tasks_damaged_checkpoint_field_is_one_line_before_training(
    tasks_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Damage, named: str
) -> None:
    out = tmp_path / "run"
    shutil.copytree(tasks_run, out)
    path = out / "checkpoints" / "passkey" / "alibi-s1.pt"
    ckpt = torch.load(path, weights_only=True)
    damage(ckpt)
    torch.save(ckpt, path)
    err = _refused([*TASKS, *TASKS_RERUN, "--out", str(out)], out, capsys)
    assert err.startswith(f"posenc tasks: error: {path} is damaged ({named}"), err
    assert "delete it and rerun to retrain passkey/alibi seed 1" in err
    assert not (out / "checkpoints" / "copy").exists()
