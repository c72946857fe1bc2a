"""Every rank of a torchrun run compares what it will train before any collective: ``posenc compare`` its
configuration, encodings and seeds; ``posenc tasks`` its configuration, tasks, encodings and seeds. The
comparison is observed here through ``World.agree`` on a two-rank world that never starts a process group."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from posenc.experiments import dist as dist_module
from posenc.experiments.dist import World

WORDS = "def return self value index token position rotary window length".split()


class _Compared(Exception):
    pass


def _corpus(root: Path) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True)
    for i in range(30):
        lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 7))) for _ in range(40))
        (root / f"mod_{i:02d}.py").write_text("\n".join(lines) + "\n")
    return root


def _two_ranks(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def agree(self: World, **settings: Any) -> None:
        seen.append(settings)
        raise _Compared

    monkeypatch.setattr(module, "setup_world", lambda device: World(0, 2))
    monkeypatch.setattr(World, "agree", agree)
    monkeypatch.setattr(dist_module.dist, "barrier", lambda *a, **k: None)
    return seen


def test_compare_ranks_compare_configuration_encodings_and_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from posenc.experiments import compare
    from posenc.experiments.compare import CompareConfig, run_compare

    seen = _two_ranks(monkeypatch, compare)
    cfg = CompareConfig(**{**CompareConfig.quick(steps=2).__dict__, "data": str(_corpus(tmp_path / "c"))})
    with pytest.raises(_Compared):
        run_compare(cfg, encodings=["rope", "alibi"], out=tmp_path / "o", device="cpu", progress=False)
    assert len(seen) == 1
    assert set(seen[0]) >= {"configuration", "encodings", "seeds"}
    assert seen[0]["encodings"] == ["rope", "alibi"] and seen[0]["seeds"] == list(cfg.seeds)
    assert not (tmp_path / "o" / "checkpoints").exists()  # compared before any training


def test_tasks_ranks_compare_configuration_tasks_encodings_and_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from posenc.experiments.tasks import experiment
    from posenc.experiments.tasks.experiment import run_tasks
    from posenc.experiments.tasks.run import TasksConfig

    seen = _two_ranks(monkeypatch, experiment)
    with pytest.raises(_Compared):
        run_tasks(
            TasksConfig.quick(), tasks=["passkey"], encodings=["rope"], seeds=[3], out=tmp_path / "o",
            device="cpu", progress=False, jobs=1,
        )  # fmt: skip
    assert len(seen) == 1
    assert set(seen[0]) >= {"configuration", "tasks", "encodings", "seeds"}
    assert seen[0]["tasks"] == ["passkey"] and seen[0]["encodings"] == ["rope"] and seen[0]["seeds"] == [3]
