"""The memory check covers evaluation at the longest length, not only training: Shaw (the ``math`` backend, an
``(H, Lv, Lv)`` tensor) trained at L = 2048 fits, then its evaluation at 16L = 32,768 needs about 70 GB, and the
process was killed by the system after the training (review s7)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from posenc.experiments.evaluate import EVAL_BATCH_TOKENS, eval_lengths, eval_passes
from posenc.experiments.memory import EVALUATION_FIXED_BYTES, check_training_memory, evaluation_bytes
from posenc.experiments.train import TrainConfig

GIB = 2**30


@pytest.fixture
def memory_8gib(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has 8 GiB, whatever it really has (the check reads ``posenc.validation.host_memory``)."""
    monkeypatch.setattr("posenc.validation.host_memory", lambda: 8 * GIB)


def test_eval_passes_score_batch_tokens_a_pass() -> None:
    assert eval_passes([128, 2048, 4096]) == [(EVAL_BATCH_TOKENS // 128, 128), (1, 2048), (1, 4096)]
    assert eval_passes([100], batch_tokens=8192) == [(81, 100)]


def test_evaluation_grows_with_the_square_of_the_length_only_where_a_layer_builds_q_by_k() -> None:
    cfg = TrainConfig(dim=128, depth=4, heads=4, train_len=256)

    def pairs(name: str, length: int) -> int:  # bytes over the same pass without attention's (Q, K) tensors
        return evaluation_bytes(cfg, name, 1, length) - evaluation_bytes(cfg, None, 1, length)

    assert pairs("rope", 4096) == pairs("rope", 8192) == 0  # SDPA, is_causal: nothing (Q, K)
    shaw = pairs("shaw", 4096)
    assert pairs("alibi", 4096) < shaw / 4  # FlexAttention (no grad, CPU): nothing; SDPA where flex cannot run
    assert shaw >= 4 * 4 * 4 * 4096**2  # logits, bias, softmax, weights: (4 heads, Lv, Lv) float32 each
    assert pairs("shaw", 8192) == 4 * shaw
    base = evaluation_bytes(cfg, None, 1, 8192) - EVALUATION_FIXED_BYTES
    assert base == 4 * (256 * 128 + 4 * 12 * 128**2 + 8192 * (8 * 128 + 3 * 256))


def test_a_run_whose_evaluation_does_not_fit_is_refused_naming_the_encoding(memory_8gib: None) -> None:
    cfg = TrainConfig(dim=128, depth=4, heads=4, train_len=512, batch_size=1)
    passes = eval_passes(eval_lengths(512))  # 16L = 8192: Shaw about 4.5 GB, under 8 GiB
    check_training_memory(cfg, ["rope", "shaw"], passes)
    long = replace(cfg, train_len=1024)  # 16L = 16384: about 18 GB
    with pytest.raises(ValueError, match=r"evaluating shaw's model at 16384 bytes \(1 window a pass, L = 1024\)"):
        check_training_memory(long, ["rope", "shaw"], eval_passes(eval_lengths(1024)))
    check_training_memory(long, ["rope", "alibi"], eval_passes(eval_lengths(1024)))  # linear in Lv there
    check_training_memory(long, ["rope", "shaw"])  # (no passes: training only, which fits)


def test_compare_refuses_it_in_one_line_before_any_file(
    memory_8gib: None, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from posenc.cli import main

    out = tmp_path / "out"
    args = ["compare", "--no-progress", "--data", str(tiny_corpus), "--steps", "1", "--train-len", "1024"]
    assert main([*args, "--encodings", "rope,shaw", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "evaluating shaw's model at 16384 bytes" in err and "or leave shaw out" in err
    assert err.count("\n") == 1 and not out.exists()


def test_tasks_counts_its_own_passes(memory_8gib: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """posenc tasks scores ``8192 // Lv`` examples a pass: at L = 512 two of 4,096 bytes, one of 8,192."""
    from posenc.cli import main

    out = tmp_path / "out"
    args = ["tasks", "--no-progress", "--tasks", "passkey", "--steps", "1", "--train-len", "1024"]
    assert main([*args, "--encodings", "shaw", "--out", str(out)]) == 2
    assert "evaluating shaw's model at 16384 bytes" in capsys.readouterr().err
    assert not out.exists()
