"""The Triton RoPE kernel against the reference, run on CPU by Triton's interpreter (``TRITON_INTERPRET=1``).

The interpreter accepts some code the GPU compiler rejects, so one more test compiles the kernel for an sm_90
target (PTX, no GPU needed) where triton's CUDA backend is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
import torch

from posenc.functional import apply_rope, rope_cos_sin, rope_inv_freq
from posenc.kernels import rope_qk

pytest.importorskip("triton")


@pytest.fixture
def interpreted(triton_interpreted: tuple[ModuleType, ModuleType]) -> Iterator[ModuleType]:
    mod = triton_interpreted[0]
    assert mod.interpreting() and mod.runs_on(torch.device("cpu"))
    yield mod


@pytest.fixture
def for_gpu(triton_for_gpu: tuple[ModuleType, ModuleType]) -> Iterator[ModuleType]:
    yield triton_for_gpu[0]


def _tables(positions: torch.Tensor, rot: int, per_batch: bool) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = rope_cos_sin(positions, rope_inv_freq(rot))  # (S, P) or (B, S, P)
    return (cos.unsqueeze(1), sin.unsqueeze(1)) if per_batch else (cos, sin)


TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 1e-2, "rtol": 1e-2}}


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize(("rot", "dim"), [(16, 16), (8, 16), (6, 10)])
@pytest.mark.parametrize("positions", ["default", "offset", "per_batch", "batch_of_one"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_grad_match_reference(
    interpreted: ModuleType, interleaved: bool, rot: int, dim: int, positions: str, dtype: torch.dtype
) -> None:
    b, h, g, s = 2, 3, 1, 5  # grouped-query: k has fewer heads
    q = torch.randn(b, s, h, dim, dtype=dtype).transpose(1, 2).requires_grad_()  # strided, as in Attention
    k = torch.randn(b, g, s, dim, dtype=dtype).requires_grad_()
    pos = {
        "default": torch.arange(s),
        "offset": torch.arange(s) + 1000,
        "per_batch": torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]]),  # cos: (B, 1, S, P)
        "batch_of_one": torch.arange(s)[None] + 3,  # cos: (1, 1, S, P)
    }[positions]
    cos, sin = _tables(pos, rot, per_batch=pos.dim() == 2)
    out = rope_qk(q, k, cos, sin, interleaved, impl="triton")
    ref = (apply_rope(q, cos, sin, interleaved), apply_rope(k, cos, sin, interleaved))
    grads = (torch.randn_like(out[0]), torch.randn_like(out[1]))
    got_grad = torch.autograd.grad(out, (q, k), grads)
    ref_grad = torch.autograd.grad(ref, (q, k), grads)
    for got, want in zip((*out, *got_grad), (*ref, *ref_grad), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, **TOL[dtype])
    # dims past R pass through bit for bit
    assert torch.equal(out[0][..., rot:], q[..., rot:])


def test_double_backward_is_the_forward_rotation(interpreted: ModuleType) -> None:
    """d/dg <R^T g, u> = R u: differentiating the backward gives the rotation back."""
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    cos, sin = rope_cos_sin(torch.arange(4), rope_inv_freq(8))
    oq, _ = rope_qk(q, q, cos, sin, impl="triton")
    g = torch.randn_like(oq, requires_grad=True)
    (dq,) = torch.autograd.grad(oq, q, g, create_graph=True)
    u = torch.randn_like(dq)
    (dg,) = torch.autograd.grad(dq, g, u)
    torch.testing.assert_close(dg, apply_rope(u, cos, sin))


@pytest.mark.parametrize("interleaved", [False, True])
def test_float64_is_rotated_in_float64(interpreted: ModuleType, interleaved: bool) -> None:
    """float64 q/k get the reference's float64 arithmetic (was float32: 2e-7 off at position 10**6, while
    ``auto`` picks this kernel for every CUDA dtype)."""
    q, k = torch.randn(2, 3, 5, 10, dtype=torch.float64), torch.randn(2, 1, 5, 10, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(5) + 10**6, rope_inv_freq(8))
    out = rope_qk(q, k, cos, sin, interleaved, impl="triton")
    assert torch.equal(out[0], apply_rope(q, cos, sin, interleaved))
    assert torch.equal(out[1], apply_rope(k, cos, sin, interleaved))


@pytest.mark.parametrize("interleaved", [False, True])
def test_several_blocks_of_positions_per_head(interpreted: ModuleType, interleaved: bool) -> None:
    """300 positions with P = 4 pairs are two blocks of 256, 212 past the end masked; every (block, head)
    of q and k (grouped-query, per-row positions) is rotated by the right rows."""
    q, k = torch.randn(2, 3, 300, 10), torch.randn(2, 1, 300, 10)
    pos = torch.stack((torch.arange(300), torch.arange(300) + 5000))
    cos, sin = _tables(pos, 8, per_batch=True)
    out = rope_qk(q, k, cos, sin, interleaved, impl="triton")
    torch.testing.assert_close(out[0], apply_rope(q, cos, sin, interleaved), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], apply_rope(k, cos, sin, interleaved), atol=1e-6, rtol=0)


def test_grid_takes_any_number_of_heads(
    interpreted: ModuleType, record_grids: Callable[[ModuleType, str], list[tuple[int, ...]]]
) -> None:
    """batch * (heads + kv_heads) past 65535 (CUDA's limit on a grid's second dimension) launches a
    one-dimensional grid (was a ValueError, also under ``impl="auto"``, which picks triton on CUDA)."""
    grids = record_grids(interpreted, "_rope_qk_kernel")
    q, k = torch.zeros(1, 1, 3, 8).expand(30000, 2, 3, 8), torch.zeros(1, 1, 3, 8).expand(30000, 1, 3, 8)
    cos, sin = rope_cos_sin(torch.arange(3), rope_inv_freq(8))
    interpreted.rope_qk_triton(q, k, cos, sin, False)
    assert grids == [(90000,)]  # one block of 4 positions for each of 30000 * 3 heads
    with pytest.raises(ValueError, match="grid limit"):
        interpreted.launch_grid(2**20, 1, 2**12)


def test_bad_shapes_raise(interpreted: ModuleType) -> None:
    cos, sin = rope_cos_sin(torch.arange(4), rope_inv_freq(8))
    with pytest.raises(ValueError, match="B, H, S, D"):
        interpreted.rope_qk_triton(torch.randn(4, 8), torch.randn(4, 8), cos, sin, False)
    with pytest.raises(ValueError, match="agree"):
        interpreted.rope_qk_triton(torch.randn(1, 2, 4, 8), torch.randn(2, 2, 4, 8), cos, sin, False)
    with pytest.raises(ValueError, match="same dtype"):
        interpreted.rope_qk_triton(
            torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8, dtype=torch.float16), cos, sin, False
        )


def test_cpu_without_interpreter_raises(for_gpu: ModuleType) -> None:
    cos, sin = rope_cos_sin(torch.arange(4), rope_inv_freq(8))
    with pytest.raises(ValueError, match="CUDA"):
        for_gpu.rope_qk_triton(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8), cos, sin, False)


@pytest.mark.parametrize(
    ("interleaved", "pairs", "block_rest", "dtype"), [(False, 64, 0, "bf16"), (True, 32, 64, "fp64")]
)
def test_kernel_compiles_for_gpu(
    for_gpu: ModuleType,
    compile_sm90: Callable[..., str],
    interleaved: bool,
    pairs: int,
    block_rest: int,
    dtype: str,
) -> None:
    constants = {
        "P": pairs, "D": 128, "BLOCK_S": 64, "BLOCK_P": pairs, "BLOCK_REST": block_rest, "INTERLEAVED": interleaved,
        "F64": dtype == "fp64",
    }  # fmt: skip
    pointers = {name: f"*{dtype}" for name in ("q_ptr", "k_ptr", "oq_ptr", "ok_ptr")}
    pointers.update({"cos_ptr": "*fp32", "sin_ptr": "*fp32"})
    assert "ld.global" in compile_sm90(for_gpu._rope_qk_kernel, pointers, constants)


def test_launches_keep_products_and_sums_apart(
    for_gpu: ModuleType, compile_sm90: Callable[..., str], triton_for_gpu: tuple[ModuleType, ModuleType]
) -> None:
    """The CUDA backend fuses ``x1 * c - x2 * s`` into an fma by default (1 ulp off ``apply_rope`` in a fifth of
    the outputs, invisible to the interpreter): both kernels launch with ``NO_FUSION``, which keeps them apart."""
    import inspect
    import re

    constants = {
        "P": 32, "D": 64, "BLOCK_S": 32, "BLOCK_P": 32, "BLOCK_REST": 0, "INTERLEAVED": False, "F64": False,
    }  # fmt: skip
    pointers = {name: "*fp32" for name in ("q_ptr", "k_ptr", "oq_ptr", "ok_ptr", "cos_ptr", "sin_ptr")}
    fused = compile_sm90(for_gpu._rope_qk_kernel, pointers, constants)
    apart = compile_sm90(for_gpu._rope_qk_kernel, pointers, constants, for_gpu.NO_FUSION)
    assert re.search(r"fma\.rn\.f32", fused) and not re.search(r"fma\.rn\.f32", apart)
    for module, launch in ((for_gpu, "rope_qk_triton"), (triton_for_gpu[1], "rope_qk_at_triton")):
        assert "**NO_FUSION" in inspect.getsource(getattr(module, launch))


def test_edge_tables_rotate_as_the_reference(interpreted: ModuleType) -> None:
    """No pairs (R = 0) divided by zero; float64 tables for float64 inputs were rounded to float32."""
    q, k = torch.randn(1, 2, 3, 8, dtype=torch.float64), torch.randn(1, 1, 3, 8, dtype=torch.float64)
    empty = torch.zeros(3, 0, dtype=torch.float64)
    oq, ok = interpreted.rope_qk_triton(q, k, empty, empty, False)
    assert torch.equal(oq, q) and torch.equal(ok, k)
    cos, sin = rope_cos_sin(torch.arange(3), rope_inv_freq(8), dtype=torch.float64)
    oq, _ = interpreted.rope_qk_triton(q, k, cos, sin, False)
    assert torch.equal(oq, apply_rope(q, cos, sin))
