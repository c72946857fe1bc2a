"""The RoPE benchmark suite's peers: a peer that is not installed is reported as missing, not faked."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from posenc.bench import SUITES
from posenc.bench.rope import _peers

#: Every peer the RoPE suite times, each a row even when missing or broken.
PEER_NAMES = {
    "transformers eager",
    "transformers compiled",
    "rotary-embedding-torch",
    "flash-attn rotary",
    "liger",
}


def test_suite_is_registered() -> None:
    assert "rope" in SUITES


def test_missing_peers_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            None
            if name in ("transformers", "rotary_embedding_torch", "flash_attn", "liger_kernel")
            else real(name, *a)
        ),
    )
    peers = _peers(torch.randn(1, 1, 4, 8), torch.ones(4, 4), torch.zeros(4, 4), quick=True)
    assert set(peers) == PEER_NAMES
    assert all(isinstance(v, str) and v.startswith("missing:") for v in peers.values())


def test_installed_peers_agree_with_posenc() -> None:
    """The peers compute the same rotation (so the timings compare like with like)."""
    pytest.importorskip("transformers")
    from posenc.rotary.rope import RoPE

    q = torch.randn(1, 2, 4, 8)
    cos, sin = RoPE(8).cos_sin(4, None, q.device)
    peers = _peers(q, cos, sin, quick=True)
    hf = peers["transformers eager"]
    assert callable(hf)
    want = RoPE(8)(q, q)
    torch.testing.assert_close(hf(q, q)[0], want[0], atol=1e-5, rtol=1e-5)


def test_liger_is_timed_in_its_own_layout_and_agrees_with_posenc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Liger rotates ``(B, H, S, D)`` views of ``(B, S, H, D)`` tensors in place; the suite hands it such copies,
    made before timing, forward and backward (run on CPU in Triton's interpreter where liger-kernel is installed)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read by triton when liger's kernels are first defined
    pytest.importorskip("liger_kernel")
    pytest.importorskip("triton")
    from posenc.bench.rope import _backward, _inputs, liger_rotation
    from posenc.rotary.rope import RoPE

    q, k = torch.randn(2, 4, 16, 32), torch.randn(2, 2, 16, 32)  # grouped-query keys
    cos, sin = RoPE(32).cos_sin(16, None, q.device)
    fn = liger_rotation(q, cos, sin)
    qa, ka = _inputs(fn, q, k)
    assert qa.transpose(1, 2).is_contiguous() and torch.equal(qa, q)
    want = RoPE(32)(q, k)
    got = fn(qa, ka)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    dq, dk = _backward(fn, q, k)()
    assert dq.shape == q.shape and dk.shape == k.shape


def test_a_peer_failing_to_build_its_backward_is_an_error_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that raises while its backward graph is built (before timing: a compiled peer compiles there) is
    a row of status "error" with its reason; the other rows of the pass are timed. Rows come bfloat16 first."""
    from posenc.bench import rope

    def broken(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if a.requires_grad:
            raise RuntimeError("out of resource: shared memory\nmore")
        return a.clone(), b.clone()

    monkeypatch.setattr(rope, "QUICK_SHAPES", ((1, 2, 8, 8, 2),))
    monkeypatch.setattr(rope, "_peers", lambda q, cos, sin, quick: {"broken peer": broken})
    rows = list(rope.rope_suite(True, "cpu"))
    assert [(r["dtype"], r["pass"]) for r in rows[::4]] == [
        ("bfloat16", "forward"),
        ("bfloat16", "backward"),
        ("float32", "forward"),
        ("float32", "backward"),
    ]
    by = {(r["dtype"], r["pass"], r["impl"]): r for r in rows}
    assert by[("bfloat16", "forward", "broken peer")]["status"] == "ok"
    failed = by[("bfloat16", "backward", "broken peer")]
    assert failed["status"] == "error" and failed["ratio"] is None
    assert failed["note"] == "RuntimeError: out of resource: shared memory"
    assert by[("bfloat16", "backward", "posenc")]["status"] == "ok"


def test_peers_run_with_room_for_recompiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled peer recompiles per shape, dtype and pass (12 cases on CUDA): the suite raises dynamo's
    recompile limit (8 by default, past which it runs the peer eager under its compiled name) while timing."""
    from posenc.bench import rope

    seen: set[int] = set()

    def peer(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.add(torch._dynamo.config.recompile_limit)
        return a * 1, b * 1

    monkeypatch.setattr(rope, "QUICK_SHAPES", ((1, 2, 8, 8, 2),))
    monkeypatch.setattr(rope, "_peers", lambda q, cos, sin, quick: {"peer": peer})
    rows = list(rope.rope_suite(True, "cpu"))
    assert all(r["status"] == "ok" for r in rows if r["impl"] == "peer")
    assert seen == {rope.RECOMPILE_LIMIT} and rope.RECOMPILE_LIMIT > 12


def test_a_peer_failing_to_import_is_an_error_and_the_others_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer's wheel that does not import on this torch / Triton (Liger is brought along to the GPU machine)
    is that peer's "error" row; the other peers and the rest of the suite still run."""
    from posenc.bench import rope

    def broken(*args: object) -> object:
        raise ImportError("cannot import name 'libdevice' from 'triton.language.extra'")

    monkeypatch.setattr(rope, "_liger", broken)
    peers = _peers(torch.randn(1, 1, 4, 8), torch.ones(4, 4), torch.zeros(4, 4), quick=True)
    assert peers["liger"] == "error: ImportError: cannot import name 'libdevice' from 'triton.language.extra'"
    assert set(peers) == PEER_NAMES
    monkeypatch.setattr(rope, "QUICK_SHAPES", ((1, 2, 8, 8, 2),))
    rows = [r for r in rope.rope_suite(True, "cpu") if r["impl"] == "liger"]
    assert rows and all(r["status"] == "error" and r["note"].startswith("ImportError") for r in rows)


def test_ratio_is_the_median_over_the_copy_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ratio`` is each row's time divided by the copy floor's of the same rounds (rope_suite's docstring: "ratio
    (to the copy)"), so 4 ms against a 1 ms copy is 4, not 0.25. Timings faked: only the arithmetic is checked."""
    from posenc.bench import rope

    fake = {rope.FLOOR: 1e-3, "posenc": 4e-3, "posenc reference": 2e-3}
    monkeypatch.setattr(rope, "_peers", lambda *a, **kw: {})
    monkeypatch.setattr(rope, "time_round_robin", lambda fns, *a, **kw: {n: fake[n] for n in fns})
    for rows in rope._group((1, 2, 8, 16, 2), torch.float32, "cpu", True):
        assert {r["impl"]: r["ratio"] for r in rows} == {
            rope.FLOOR: 1.0,
            "posenc": 4.0,
            "posenc reference": 2.0,
        }
        for row in rows:
            assert row["status"] == "ok" and row["median_ms"] == pytest.approx(fake[row["impl"]] * 1e3)
