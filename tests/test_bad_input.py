"""Bad input (issue #12): a table of bad inputs -> exception and words (library, every attention backend alike),
and the CLI: one line on stderr, a non-zero exit, no traceback. File safety: tests/experiments/test_file_safety.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import posenc
from posenc.attention import KVCache
from posenc.attention.backends import BACKENDS
from posenc.attention.inputs import AttentionInputs
from posenc.cli import main
from posenc.experiments.checkpoints import (
    check_run_folder,
    run_lock,
)
from posenc.experiments.data import load_corpus
from posenc.experiments.dist import resolve_device
from posenc.experiments.train import TrainConfig
from posenc.models import TransformerLM

NAN, INF = float("nan"), float("inf")
q4 = torch.randn(2, 4, 5, 16)  # (B, H, S, D)


def _swapped(attn: posenc.Attention, position: posenc.PositionEncoding) -> posenc.Attention:
    """``attn`` with its encoding replaced after construction (which checks sizes), so the call's checks run."""
    attn.position = position
    return attn


def rope_call(**kw: object) -> Callable[[], object]:
    args = {"q": q4, "k": q4, "positions": None, **kw}
    return lambda: posenc.RoPE(16)(args["q"], args["k"], args["positions"])


#: (id, call, exception type, words that must appear in the message)
LIBRARY_CASES: list[tuple[str, Callable[[], object], type[Exception], list[str]]] = [
    ("rope base nan", lambda: posenc.RoPE(16, base=NAN), ValueError, ["base", "finite"]),
    ("rope base inf", lambda: posenc.RoPE(16, base=INF), ValueError, ["base", "finite"]),
    ("rope base 1", lambda: posenc.RoPE(16, base=1.0), ValueError, ["base", "> 1"]),
    ("rope base bool", lambda: posenc.RoPE(16, base=True), TypeError, ["base"]),
    ("rope head_dim 16.9", lambda: posenc.RoPE(16.9), TypeError, ["head_dim", "16.9"]),  # type: ignore[arg-type]
    ("rope interleaved 'no'", lambda: posenc.RoPE(16, interleaved="no"), TypeError, ["interleaved", "'no'"]),  # type: ignore[arg-type]
    ("rope cache_len -5", lambda: posenc.RoPE(16, cache_len=-5), ValueError, ["cache_len", "-5"]),
    ("xpos scale_base inf", lambda: posenc.XPos(16, scale_base=INF), ValueError, ["scale_base", "finite"]),
    ("xpos gamma nan", lambda: posenc.XPos(16, gamma=NAN), ValueError, ["gamma", "finite"]),
    ("sinusoidal base 0", lambda: posenc.Sinusoidal(16, base=0.0), ValueError, ["base", "> 0"]),
    ("sinusoidal base -2", lambda: posenc.Sinusoidal(16, base=-2.0), ValueError, ["base", "> 0"]),
    ("sinusoidal base nan", lambda: posenc.Sinusoidal(16, base=NAN), ValueError, ["base", "finite"]),
    ("learned max_len 2.5", lambda: posenc.build("learned", dim=16, max_len=2.5), TypeError, ["max_len"]),
    ("fire init_c nan", lambda: posenc.FIRE(2, init_c=NAN), ValueError, ["init_c", "finite"]),
    ("fire width 2.5", lambda: posenc.FIRE(2, width=2.5), TypeError, ["width", "2.5"]),  # type: ignore[arg-type]
    ("kerple eps nan", lambda: posenc.Kerple(2, eps=NAN), ValueError, ["eps", "finite"]),
    ("kerple eps 0", lambda: posenc.Kerple(2, eps=0.0), ValueError, ["eps", "> 0"]),
    (
        "t5 bidirectional 'yes'",
        lambda: posenc.build("t5", heads=2, bidirectional="yes"),
        TypeError,
        ["bidirectional"],
    ),
    ("shaw values 'no'", lambda: posenc.build("shaw", head_dim=8, values="no"), TypeError, ["values"]),
    ("build heads 2.7", lambda: posenc.build("alibi", heads=2.7), TypeError, ["heads", "2.7"]),  # type: ignore[arg-type]
    ("build heads True", lambda: posenc.build("alibi", heads=True), TypeError, ["heads", "bool"]),
    ("build heads 0", lambda: posenc.build("alibi", heads=0), ValueError, ["heads", ">= 1"]),
    ("build dim/heads 0", lambda: posenc.build("rope", dim=64, heads=0), ValueError, ["heads"]),
    ("build head_dim 16.9", lambda: posenc.build("rope", head_dim=16.9), TypeError, ["head_dim", "16.9"]),  # type: ignore[arg-type]
    (
        "attention dropout -0.1",
        lambda: posenc.Attention(64, 4, dropout=-0.1),
        ValueError,
        ["dropout", "-0.1"],
    ),
    (
        "attention dropout nan",
        lambda: posenc.Attention(64, 4, dropout=NAN),
        ValueError,
        ["dropout", "finite"],
    ),
    ("attention heads 2.5", lambda: posenc.Attention(64, 2.5), TypeError, ["heads", "2.5"]),  # type: ignore[arg-type]
    ("attention causal 'yes'", lambda: posenc.Attention(64, 4, causal="yes"), TypeError, ["causal"]),  # type: ignore[arg-type]
    ("kvcache max_len 2.5", lambda: KVCache(max_len=2.5), TypeError, ["max_len", "2.5"]),  # type: ignore[arg-type]
    ("kvcache max_len 0", lambda: KVCache(max_len=0), ValueError, ["max_len", ">= 1"]),
    (
        "rope bool positions",
        rope_call(positions=torch.ones(5, dtype=torch.bool)),
        TypeError,
        ["positions", "bool"],
    ),
    ("rope int q", rope_call(q=q4.long(), k=q4.long()), TypeError, ["floating-point", "int64"]),
    ("rope complex q", rope_call(q=q4.to(torch.complex64)), TypeError, ["floating-point", "complex64"]),
    ("rope positions too long", rope_call(positions=torch.arange(6)), ValueError, ["positions", "seq=5"]),
    (
        "rope positions batch 3",
        rope_call(positions=torch.zeros(3, 5, dtype=torch.long)),
        ValueError,
        ["1 or 2"],
    ),
    ("rope position 2**40", rope_call(positions=torch.arange(5) + 2**40), ValueError, ["2**31"]),
    (
        "rope 0-d position of a decode step",
        lambda: posenc.RoPE(16)(torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16), torch.tensor(3)),
        ValueError,
        ["positions", "got ()"],
    ),
    ("rope q, k on two devices", rope_call(k=q4.to("meta")), ValueError, ["device"]),
    (
        "xpos bool positions",
        lambda: posenc.XPos(16)(q4, q4, torch.ones(5, dtype=torch.bool)),
        TypeError,
        ["bool"],
    ),
    (
        "attention bool positions",
        lambda: posenc.Attention(64, 4)(torch.randn(2, 5, 64), positions=torch.ones(5, dtype=torch.bool)),
        TypeError,
        ["positions", "bool"],
    ),
    (
        "lm caches shorter than depth",
        lambda: TransformerLM(vocab_size=11, dim=16, depth=2, heads=2)(
            torch.zeros(1, 3, dtype=torch.long), caches=[KVCache()]
        ),
        ValueError,
        ["one KVCache per layer", "2"],
    ),
    (
        "sinusoidal positions batch 3 for 2",
        lambda: posenc.Sinusoidal(16).embed(torch.randn(2, 5, 16), torch.zeros(3, 5, dtype=torch.long)),
        ValueError,
        ["1 or 2"],
    ),
    (
        "attention x 2-d",
        lambda: posenc.Attention(64, 4)(torch.randn(5, 64)),
        ValueError,
        ["(batch, seq, 64)"],
    ),
    (
        "sinusoidal x integer",
        lambda: posenc.Sinusoidal(4)(torch.zeros(1, 3, 4, dtype=torch.long)),
        TypeError,
        ["Sinusoidal", "floating-point", "torch.int64"],
    ),
    (
        "learned x wrong dim",
        lambda: posenc.build("learned", dim=4)(torch.randn(1, 3, 5)),
        ValueError,
        ["LearnedAbsolute", "(..., seq, 4)", "(1, 3, 5)"],
    ),
    (
        "shaw head_dim mismatch (at construction)",
        lambda: posenc.Attention(16, 4, position=posenc.ShawRelative(8, 3)),
        ValueError,
        ["ShawRelative was built for head_dim=8", "this Attention has head_dim=4"],
    ),
    (
        "shaw head_dim mismatch (math)",
        lambda: _swapped(posenc.Attention(16, 4, backend="math"), posenc.ShawRelative(8, 3))(
            torch.randn(1, 5, 16)
        ),
        ValueError,
        ["head_dim=8", "of 4"],
    ),
    (
        "shaw head_dim mismatch (one query, sdpa)",
        lambda: _swapped(posenc.Attention(16, 4, backend="sdpa"), posenc.ShawRelative(8, 3))(
            torch.randn(1, 1, 16)
        ),
        ValueError,
        ["rows of 8 dims", "head_dim 4"],
    ),
    (
        "attention x integer",
        lambda: posenc.Attention(64, 4)(torch.zeros(2, 5, 64, dtype=torch.long)),
        TypeError,
        ["floating-point", "torch.int64"],
    ),
    (
        "apply_rope int x",
        lambda: posenc.functional.apply_rope(
            torch.ones(1, 4, dtype=torch.long), torch.ones(1, 2), torch.ones(1, 2)
        ),
        TypeError,
        ["floating-point"],
    ),
    (
        "lm vocab_size 0",
        lambda: TransformerLM(vocab_size=0, dim=16, depth=1, heads=2),
        ValueError,
        ["vocab_size"],
    ),
    (
        "lm float tokens",
        lambda: TransformerLM(vocab_size=11, dim=16, depth=1, heads=2)(torch.zeros(1, 3)),
        ValueError,
        ["integer ids", "float32"],
    ),
    ("alibi bias q_len 2.5", lambda: posenc.ALiBi(2).bias(2.5, 3), TypeError, ["q_len", "2.5"]),  # type: ignore[arg-type]
    ("train seed 2**70", lambda: TrainConfig(seed=2**70), ValueError, ["seed", "2**32"]),
    ("train lr nan", lambda: TrainConfig(lr=NAN), ValueError, ["lr", "finite"]),
    ("train steps 1.5", lambda: TrainConfig(steps=1.5), TypeError, ["steps"]),  # type: ignore[arg-type]
    ("device meta", lambda: resolve_device("meta"), ValueError, ["--device meta"]),
    (  # (torch has no mps backend on this machine; it was refused later as "cannot be trained at dim ...")
        "device mps",
        lambda: resolve_device("mps" if not torch.backends.mps.is_available() else "xpu"),
        ValueError,
        ["device here; use cpu, cuda or auto"],
    ),
]


@pytest.mark.parametrize(
    ("call", "exc", "words"), [c[1:] for c in LIBRARY_CASES], ids=[c[0] for c in LIBRARY_CASES]
)
def test_library_refuses(call: Callable[[], object], exc: type[Exception], words: list[str]) -> None:
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# -- every backend accepts and refuses the same inputs ------------------------------------------------------
def backend_case(**kw: object) -> tuple[torch.Tensor, AttentionInputs]:
    q = torch.randn(2, 4, 5, 8)
    fields: dict[str, object] = {
        "position": posenc.ALiBi(4),
        "q_pos": torch.arange(5)[None],
        "k_pos": torch.arange(5)[None],
        "keep": None,
        "causal": True,
    }
    fields.update(kw)
    return q, AttentionInputs(**fields)  # type: ignore[arg-type]


BACKEND_CASES = [
    ("key mask batch 3 for batch 2", {"keep": torch.ones(3, 1, 1, 5, dtype=torch.bool)}, ["mask", "1 or 2"]),
    (
        "4-d mask with 4 query rows for 5",
        {"keep": torch.ones(2, 1, 4, 5, dtype=torch.bool)},
        ["mask", "1 or 5"],
    ),
    (
        "mask with 4 keys for 5",
        {"keep": torch.ones(2, 1, 1, 4, dtype=torch.bool)},
        ["mask", "got (2, 1, 1, 4)"],
    ),
    (
        "positions batch 3 for batch 2",
        {"q_pos": torch.zeros(3, 5, dtype=torch.long)},
        ["query positions", "1 or 2"],
    ),
    ("key positions too short", {"k_pos": torch.arange(4)[None]}, ["key positions", "5"]),
    ("mask on another device", {"keep": torch.ones(2, 1, 1, 5, dtype=torch.bool, device="meta")}, ["device"]),
    ("float mask", {"keep": torch.ones(2, 1, 1, 5)}, ["bool"]),
]


@pytest.mark.parametrize("backend", ["math", "sdpa", "flex"])
@pytest.mark.parametrize(("kw", "words"), [c[1:] for c in BACKEND_CASES], ids=[c[0] for c in BACKEND_CASES])
def test_every_backend_refuses_the_same(backend: str, kw: dict[str, object], words: list[str]) -> None:
    q, ctx = backend_case(**kw)
    with torch.no_grad(), pytest.raises((ValueError, TypeError)) as info:
        BACKENDS.get(backend)(q, q, q, ctx)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_attention_refuses_a_mask_of_another_batch() -> None:
    attn = posenc.Attention(32, 4, position=posenc.ALiBi(4), backend="flex").eval()
    with torch.no_grad(), pytest.raises(ValueError, match="1 or 2"):
        attn(torch.randn(2, 5, 32), mask=torch.ones(3, 5, dtype=torch.bool))


def test_valid_edge_values_are_accepted() -> None:
    """Nothing valid is refused: numpy-free ints, int32 positions, float64 q, large but exact positions."""
    posenc.RoPE(16, base=500000, cache_len=0)
    posenc.Sinusoidal(15, base=10000, dropout=1.0)
    posenc.Attention(64, 4, kv_heads=2, dropout=0.0)
    KVCache(max_len=1)
    rope = posenc.RoPE(16)
    rope(q4.double(), q4.double(), torch.arange(5, dtype=torch.int32) + 2**31 - 10)
    rope(q4, q4, torch.arange(5) + 2**31 - 5)  # the stated limit itself


# -- RoPE's stated precision limit --------------------------------------------------------------------------
def test_rope_within_2e7_of_exact_up_to_the_limit() -> None:
    """The bound behind ROPE_MAX_POSITION: cos/sin within 2e-7 of the exact angle at 2**31 (mpmath, 200 bits)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 200
    rope = posenc.RoPE(32, cache_len=0)
    p = 2**31
    cos, sin = rope.cos_sin(1, torch.tensor([[p]]), torch.device("cpu"))
    for i, theta in enumerate(rope.inv_freq.tolist()):
        angle = mpmath.mpf(p) * mpmath.mpf(theta)
        assert abs(float(mpmath.cos(angle)) - cos[0, 0, 0, i].item()) <= 2e-7
        assert abs(float(mpmath.sin(angle)) - sin[0, 0, 0, i].item()) <= 2e-7


# -- the CLI: one line on stderr, non-zero exit, nothing written ---------------------------------------------
def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("hello world, some text. " * 4000)
    return path


CLI_CASES = [
    ("compare out under a file", ["compare", "--out", "{afile}/sub"], ["afile is a file"]),
    ("compare out is a file", ["compare", "--out", "{afile}"], ["is a file"]),
    ("compare device meta", ["compare", "--out", "{tmp}/o", "--device", "meta"], ["--device meta"]),
    ("compare seed 2**70", ["compare", "--out", "{tmp}/o", "--seed", str(2**70)], ["seed"]),
    (
        "compare binary data",
        ["compare", "--quick", "--out", "{tmp}/o", "--data", "{binary}"],
        ["binary file"],
    ),
    (
        "compare unknown encoding",
        ["compare", "--out", "{tmp}/o", "--encodings", "nope"],
        ["unknown encoding"],
    ),
    ("bench device meta", ["bench", "--quick", "--device", "meta"], ["--device meta"]),
    ("bench out is a file", ["bench", "--quick", "--out", "{afile}"], ["is a file"]),
    ("plot out is a file", ["plot", "--out", "{afile}"], ["is a file"]),
]


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], words: list[str]
) -> None:
    afile, binary = tmp_path / "afile", tmp_path / "lib.so"
    afile.write_text("x")
    binary.write_bytes(b"\0" * 100)
    args = [a.format(afile=afile, tmp=tmp_path, binary=binary) for a in argv]
    err = one_line_error(capsys, args)
    for word in words:
        assert word in err
    assert not (tmp_path / "o" / "config.json").exists()
    assert capsys.readouterr().out == ""  # bench: refused before any suite ran


def quick_compare_args(out: Path, data: Path) -> list[str]:
    return [
        "compare",
        "--quick",
        "--out",
        str(out),
        "--encodings",
        "none",
        "--data",
        str(data),
        "--no-progress",
    ]


def test_cli_corrupt_checkpoint_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text_file: Path
) -> None:
    """A damaged checkpoint of a matching run: the file is named and deleting it retrains that encoding."""
    from posenc.experiments.compare import CompareConfig, eval_token_count, fingerprint
    from posenc.experiments.evaluate import eval_lengths

    cfg = CompareConfig.quick()
    lengths = eval_lengths(cfg.train.train_len, cfg.multiples)
    corpus = load_corpus(text_file, min_train_tokens=cfg.train.train_len + 1, min_val_tokens=lengths[-1] + 1)
    n_tokens = eval_token_count(corpus.val.numel(), lengths[-1], cfg.eval_windows)
    out = tmp_path / "run"
    check_run_folder(out, fingerprint(cfg, corpus, n_tokens), write=True)
    (out / "checkpoints" / "none").mkdir(parents=True)
    (out / "checkpoints" / "none" / "seed0.pt").write_bytes(b"PK\x03\x04 truncated")
    err = one_line_error(capsys, quick_compare_args(out, text_file))
    assert "checkpoints/none/seed0.pt" in err and "delete it and rerun to retrain" in err


def test_cli_ctrl_c(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import posenc.experiments.compare as compare

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "run_compare", interrupted)
    err = one_line_error(capsys, ["compare", "--out", str(tmp_path / "run")], code=130)
    assert "interrupted; no model had finished, so there is nothing to resume from yet" in err
    monkeypatch.undo()
    assert main(["compare", "--out", str(tmp_path / "run"), "--encodings", "nope"]) == 2  # lock released


def test_cli_second_run_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, text_file: Path) -> None:
    with run_lock(tmp_path / "run"):
        err = one_line_error(capsys, quick_compare_args(tmp_path / "run", text_file))
    assert "another posenc run" in err


@pytest.mark.parametrize(
    "command", [["compare", "--out", "{afile}/sub"], ["bench", "--quick", "--out", "{afile}"]]
)
def test_cli_subprocess_no_traceback(tmp_path: Path, command: list[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    env = {**os.environ, "PYTHONPATH": str(Path(posenc.__file__).parents[1])}
    argv = [sys.executable, "-m", "posenc", *(a.format(afile=afile) for a in command)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "afile" in proc.stderr
