"""The one-launch RoPE-at-positions Triton kernel against the table lookup + reference rotation, run on CPU by
Triton's interpreter; one more test compiles it for an sm_90 target (PTX, no GPU needed)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
import torch

import posenc
from posenc.functional import apply_rope

pytest.importorskip("triton")


@pytest.fixture
def at_module(triton_interpreted: tuple[ModuleType, ModuleType]) -> ModuleType:
    return triton_interpreted[1]


@pytest.fixture
def at_for_gpu(triton_for_gpu: tuple[ModuleType, ModuleType]) -> ModuleType:
    return triton_for_gpu[1]


POSITIONS = {
    "inside": torch.tensor([[5, 6, 7, 8]]),
    "decode_step": torch.tensor([[63]]),
    "past_the_table": torch.tensor([[62, 63, 64, 10**6]]),
    "per_row": torch.tensor([[-3, 0, 1, 2], [60, 61, 5000, 2**31]]),
    "one_dim": torch.tensor([9, 10, 11, 12]),
}


def _reference(
    rope: posenc.RoPE, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    cos, sin = rope.cos_sin(q.shape[-2], pos, q.device)  # the module's own lookup (rows_at)
    return apply_rope(q, cos, sin, rope.interleaved), apply_rope(k, cos, sin, rope.interleaved)


@pytest.mark.parametrize("case", POSITIONS)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize(("rotary_dim", "scaling"), [(16, None), (8, None), (16, "yarn")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_lookup_and_reference(
    at_module: ModuleType,
    case: str,
    interleaved: bool,
    rotary_dim: int,
    scaling: str | None,
    dtype: torch.dtype,
) -> None:
    torch.manual_seed(0)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    rope = posenc.RoPE(
        16, cache_len=64, interleaved=interleaved, rotary_dim=rotary_dim, scaling=yarn if scaling else None
    )
    pos = POSITIONS[case]
    b, n = (pos.shape[0] if pos.dim() == 2 else 1), pos.shape[-1]
    q = torch.randn(b, n, 3, 16, dtype=dtype).transpose(1, 2).requires_grad_()  # strided, as in Attention
    k = torch.randn(b, 1, n, 16, dtype=dtype).requires_grad_()
    got = at_module.rope_qk_at(
        q, k, pos.view(1, -1) if pos.dim() == 1 else pos, (rope.cos_cached, rope.sin_cached, rope.inv_freq),
        rope.attention_scale, interleaved,
    )  # fmt: skip
    want = _reference(rope, q, k, pos)
    tol = {"atol": 1e-6, "rtol": 0.0} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1.6e-2}
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, **tol)
    if case in ("inside", "decode_step", "one_dim") and dtype == torch.float32:
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))  # table rows: bit for bit
    grads = (torch.randn_like(got[0]), torch.randn_like(got[1]))
    for g, w in zip(
        torch.autograd.grad(got, (q, k), grads), torch.autograd.grad(want, (q, k), grads), strict=True
    ):
        torch.testing.assert_close(g, w, **tol)  # bfloat16: within one rounding step


def test_double_backward_is_the_forward_rotation(at_module: ModuleType) -> None:
    rope = posenc.RoPE(8, cache_len=4)
    q = torch.randn(1, 2, 3, 8, requires_grad=True)
    pos = torch.tensor([[2, 3, 9]])
    tables = (rope.cos_cached, rope.sin_cached, rope.inv_freq)
    oq, _ = at_module.rope_qk_at(q, q, pos, tables, 1.0, False)
    g = torch.randn_like(oq, requires_grad=True)
    (dq,) = torch.autograd.grad(oq, q, g, create_graph=True)
    u = torch.randn_like(q)
    (ddg,) = torch.autograd.grad(dq, g, u)
    torch.testing.assert_close(ddg, at_module.rope_qk_at(u, u, pos, tables, 1.0, False)[0], atol=1e-6, rtol=0)


def test_module_with_impl_triton_uses_it_and_matches_reference(
    at_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = at_module.rope_qk_at
    monkeypatch.setattr(at_module, "rope_qk_at", lambda *a: calls.append(1) or real(*a))
    fast, ref = posenc.RoPE(16, cache_len=32, impl="triton"), posenc.RoPE(16, cache_len=32, impl="reference")
    q, k = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 3, 16)
    pos = torch.tensor([[30, 31, 32], [0, 1, 2]])
    for g, w in zip(fast(q, k, pos), ref(q, k, pos), strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=0)
    assert calls == [1]


def test_float64_is_rotated_in_float64(at_module: ModuleType) -> None:
    """float64 q/k at positions get the reference's float64 arithmetic (was float32, 2e-7 off)."""
    fast, ref = posenc.RoPE(16, cache_len=32, impl="triton"), posenc.RoPE(16, cache_len=32, impl="reference")
    q, k = torch.randn(2, 4, 3, 16, dtype=torch.float64), torch.randn(2, 2, 3, 16, dtype=torch.float64)
    pos = torch.tensor([[30, 31, 32], [0, 1, 10**6]])
    for g, w in zip(fast(q, k, pos), ref(q, k, pos), strict=True):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, atol=1e-14, rtol=0)


def test_several_blocks_of_positions_per_head(at_module: ModuleType) -> None:
    """300 positions per row in blocks of 128 (P = 8), crossing the table's end in the second block."""
    fast, ref = (
        posenc.RoPE(16, cache_len=200, impl="triton"),
        posenc.RoPE(16, cache_len=200, impl="reference"),
    )
    q, k = torch.randn(2, 3, 300, 16), torch.randn(2, 1, 300, 16)
    pos = torch.stack((torch.arange(300), torch.arange(300).flip(0) * 7))
    for g, w in zip(fast(q, k, pos), ref(q, k, pos), strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=0)


def test_grid_takes_any_number_of_heads(
    at_module: ModuleType, record_grids: Callable[[ModuleType, str], list[tuple[int, ...]]]
) -> None:
    """batch * (heads + kv_heads) past 65535 launches a one-dimensional grid (was a ValueError)."""
    grids = record_grids(at_module, "_rope_qk_at_kernel")
    rope = posenc.RoPE(8)
    q, k = torch.zeros(1, 1, 1, 8).expand(30000, 2, 1, 8), torch.zeros(1, 1, 1, 8).expand(30000, 1, 1, 8)
    tables = (rope.cos_cached, rope.sin_cached, rope.inv_freq)
    at_module.rope_qk_at_triton(q, k, torch.zeros(1, 1, dtype=torch.long), tables, 1.0, False)
    assert grids == [(90000,)]


def test_bad_shapes_raise(at_module: ModuleType) -> None:
    rope = posenc.RoPE(8)
    tables = (rope.cos_cached, rope.sin_cached, rope.inv_freq)
    q, k = torch.randn(2, 2, 3, 8), torch.randn(2, 1, 3, 8)
    with pytest.raises(ValueError, match="positions must be"):
        at_module.rope_qk_at_triton(q, k, torch.zeros(3, 3, dtype=torch.long), tables, 1.0, False)
    with pytest.raises(ValueError, match="must agree"):
        at_module.rope_qk_at_triton(q, k[..., :4], torch.zeros(1, 3, dtype=torch.long), tables, 1.0, False)


@pytest.mark.parametrize(
    ("interleaved", "pairs", "block_rest", "dtype"), [(False, 64, 0, "bf16"), (True, 32, 64, "fp64")]
)
def test_kernel_compiles_for_gpu(
    at_for_gpu: ModuleType,
    compile_sm90: Callable[..., str],
    interleaved: bool,
    pairs: int,
    block_rest: int,
    dtype: str,
) -> None:
    """The float64 fallback (fmod, cos, sin from libdevice) and the branch compile for sm_90."""
    constants = {
        "P": pairs, "D": 128, "BLOCK_S": 1, "BLOCK_P": pairs, "BLOCK_REST": block_rest,
        "INTERLEAVED": interleaved, "INVERSE": False, "F64": dtype == "fp64",
    }  # fmt: skip
    pointers = {name: f"*{dtype}" for name in ("q_ptr", "k_ptr", "oq_ptr", "ok_ptr")}
    pointers.update({"pos_ptr": "*i64", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "freq_ptr": "*fp64"})
    pointers["const_ptr"] = "*fp64"
    ptx = compile_sm90(at_for_gpu._rope_qk_at_kernel, pointers, constants)
    assert "ld.global" in ptx and "f64" in ptx


def test_an_empty_table_reads_no_row(at_module: ModuleType) -> None:
    """``cache_len=0``: the kernel read row 0 of an empty table for every position (a segfault in the
    interpreter, a null read on a GPU); every row is computed exactly instead."""
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8)
    pos = torch.tensor([[5, 6, 7]])
    ref = posenc.RoPE(8, impl="reference")
    empty = posenc.RoPE(8, cache_len=0)
    tables = (empty.cos_cached, empty.sin_cached, empty.inv_freq)
    got = at_module.rope_qk_at(q, k, pos, tables, 1.0, False)
    for g, want in zip(got, ref(q, k, pos), strict=True):
        torch.testing.assert_close(g, want, rtol=0, atol=1e-6)


def test_positions_advanced_in_place_after_the_call_leave_backward_alone(at_module: ModuleType) -> None:
    """The kernel's backward reads the positions it saved: the caller's tensor was saved itself, so a loop that
    advanced it in place (``pos += S``) before ``backward()`` failed, on CUDA's ``auto`` path (review s7)."""
    grads = []
    for impl in ("triton", "reference"):
        torch.manual_seed(0)
        rope = posenc.RoPE(8, cache_len=16, impl=impl)
        q = torch.randn(1, 2, 3, 8, requires_grad=True)
        k = torch.randn(1, 2, 3, 8, requires_grad=True)
        pos, loss = torch.arange(3), torch.zeros(())
        for _ in range(2):
            qr, kr = rope(q, k, pos)
            loss = loss + (qr * kr).sum()
            pos += 3
        loss.backward()
        grads.append((q.grad, k.grad))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-6)
