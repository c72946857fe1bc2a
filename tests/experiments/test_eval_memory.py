"""The memory check covers evaluation at the longest length, not only training: Shaw (the ``math`` backend) trained
at L = 2048 fit, then its evaluation at 16L = 32,768 took an ``(H, Lv, Lv)`` tensor per layer, about 70 GB, and
the system killed the process after the training (review s7). ``math`` now attends in blocks of queries there
(``tests/attention/test_math_blocks.py``), and the check counts evaluation beside training."""

from __future__ import annotations

from pathlib import Path

import pytest

from posenc.experiments.evaluate import EVAL_BATCH_TOKENS, eval_lengths, eval_passes
from posenc.experiments.memory import (
    EVALUATION_FIXED_BYTES,
    check_training_memory,
    evaluation_bytes,
    training_bytes,
)
from posenc.experiments.train import TrainConfig

MIB = 2**20


@pytest.fixture
def memory_512mib(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has 512 MiB, whatever it really has (the check reads ``posenc.validation.host_memory``)."""
    monkeypatch.setattr("posenc.validation.host_memory", lambda: 512 * MIB)


#: One layer, batch 1: Shaw trains at L = 1024 in about 240 MiB, and evaluates at 16L in about 700 MiB.
SMALL = TrainConfig(dim=128, depth=1, heads=4, train_len=1024, batch_size=1, steps=1)


def test_eval_passes_score_batch_tokens_a_pass() -> None:
    assert eval_passes([128, 2048, 4096]) == [(EVAL_BATCH_TOKENS // 128, 128), (1, 2048), (1, 4096)]
    assert eval_passes([100], batch_tokens=8192) == [(81, 100)]


def test_evaluation_is_linear_in_the_length_for_every_encoding() -> None:
    """No ``(H, Lv, Lv)`` tensor at evaluation: SDPA (causal), FlexAttention (bias encodings, CPU, no grad), and
    ``math`` (Shaw) a block of queries at a time."""
    cfg = TrainConfig(dim=128, depth=4, heads=4, train_len=256)

    def pairs(name: str, length: int) -> int:  # bytes over the same pass without attention's (Q, K) tensors
        return evaluation_bytes(cfg, name, 1, length) - evaluation_bytes(cfg, None, 1, length)

    assert pairs("rope", 4096) == pairs("rope", 8192) == 0  # SDPA, is_causal: nothing (Q, K)
    assert pairs("alibi", 8192) <= 4 * 8192 * 8192  # (the masks, on SDPA where flex cannot run)
    assert (
        pairs("shaw", 4 * 8192) == pairs("shaw", 8192) < 2**30
    )  # one block of rows: as many logits at any Lv
    base = evaluation_bytes(cfg, None, 1, 8192) - EVALUATION_FIXED_BYTES
    assert base == 4 * (256 * 128 + 4 * 12 * 128**2 + 8192 * (8 * 128 + 3 * 256))


def test_a_run_whose_evaluation_does_not_fit_is_refused_naming_the_encoding(memory_512mib: None) -> None:
    passes = eval_passes(eval_lengths(1024))  # 16L = 16384, one window a pass
    assert training_bytes(SMALL, "shaw") < 512 * MIB < evaluation_bytes(SMALL, "shaw", 1, 16384)
    check_training_memory(SMALL, ["shaw"])  # (no passes: training only, which fits)
    check_training_memory(SMALL, ["rope"], passes)
    with pytest.raises(
        ValueError, match=r"evaluating shaw's model at 16384 bytes \(1 window a pass, L = 1024\)"
    ):
        check_training_memory(SMALL, ["rope", "shaw"], passes)


def test_compare_refuses_it_in_one_line_before_any_file(
    memory_512mib: None, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from posenc.cli import main

    out = tmp_path / "out"
    args = ["compare", "--no-progress", "--data", str(tiny_corpus), "--steps", "1", "--train-len", "1024"]
    args += ["--depth", "1", "--batch-size", "1", "--threads", "1"]
    assert main([*args, "--encodings", "rope,shaw", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "evaluating shaw's model at 16384 bytes" in err and "or leave shaw out" in err
    assert err.count("\n") == 1 and not out.exists()


def test_tasks_checks_its_own_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """posenc tasks scores ``batch_tokens // Lv`` examples a pass (8,192 bytes), not compare's 2,048."""
    from posenc.experiments.tasks import experiment
    from posenc.experiments.tasks.run import TasksConfig

    seen: list[object] = []
    monkeypatch.setattr("posenc.experiments.specs.check_training_memory", lambda *a: seen.append(a[-1]))
    cfg = TasksConfig.quick()
    experiment.check_request(cfg, ["passkey"], ["rope"], None)
    assert seen == [eval_passes(cfg.lengths, cfg.batch_tokens)]
