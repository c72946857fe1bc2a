"""RoPE math as properties: rotations preserve norms, scores depend only on m - n, layouts agree."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc.functional import (
    apply_rope,
    apply_rope_reference,
    interleaved_permutation,
    rope_angles,
    rope_cos_sin,
    rope_inv_freq,
)

dims = st.integers(1, 16).map(lambda p: 2 * p)


@st.composite
def rope_case(draw: st.DrawFn) -> tuple[int, int, bool]:
    head_dim = draw(dims)
    rotary_dim = draw(st.integers(1, head_dim // 2)) * 2
    return head_dim, rotary_dim, draw(st.booleans())


def rotate(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, interleaved: bool) -> torch.Tensor:
    cos, sin = rope_cos_sin(positions, rope_inv_freq(rotary_dim), dtype=torch.float64)
    return apply_rope(x, cos, sin, interleaved)


@given(rope_case(), st.integers(1, 12), st.integers(0, 10**6))
def test_rotation_preserves_norms(case: tuple[int, int, bool], seq: int, start: int) -> None:
    torch.manual_seed(0)  # hypothesis replays examples: keep tensors reproducible
    head_dim, rotary_dim, interleaved = case
    x = torch.randn(2, 3, seq, head_dim, dtype=torch.float64)
    y = rotate(x, torch.arange(start, start + seq), rotary_dim, interleaved)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[..., rotary_dim:], x[..., rotary_dim:])  # partial rotary passes through


def score_depends_only_on_distance(rot: object, head_dim: int) -> bool:
    """``<rot(q, m), rot(k, n)>`` equal for (m, n) and (m + t, n + t) for several shifts t."""
    q, k = torch.randn(head_dim, dtype=torch.float64), torch.randn(head_dim, dtype=torch.float64)
    scores = []
    for shift in (0, 7, 1000):
        m, n = torch.tensor([5 + shift]), torch.tensor([2 + shift])
        scores.append((rot(q[None], m) * rot(k[None], n)).sum())  # type: ignore[operator]
    return all(torch.allclose(s, scores[0], atol=1e-9) for s in scores)


@given(rope_case())
def test_score_depends_only_on_relative_distance(case: tuple[int, int, bool]) -> None:
    torch.manual_seed(0)  # hypothesis replays examples: keep tensors reproducible
    head_dim, rotary_dim, interleaved = case
    assert score_depends_only_on_distance(lambda x, p: rotate(x, p, rotary_dim, interleaved), head_dim)


def seed_document_rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The seed's construction, restated from its description: for head_dim 8 the even pairs get cos of
    theta0, theta2, theta0, theta2 and the odd ones sin of theta1, theta3, theta1, theta3 (not a rotation)."""
    d = x.shape[-1]
    inv = rope_inv_freq(d)
    freqs = positions.double()[:, None] * inv  # (S, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (S, d)
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat(
        (x1 * cos[..., 0::2] - x2 * sin[..., 0::2], x1 * sin[..., 1::2] + x2 * cos[..., 1::2]), -1
    )


def test_seed_construction_fails_the_properties_ours_passes() -> None:
    """Regression for the seed's defect, checked through the properties, for head_dim 8."""
    x, pos = torch.randn(1, 8, dtype=torch.float64), torch.tensor([3])
    assert not torch.allclose(seed_document_rope(x, pos).norm(), x.norm())
    assert not score_depends_only_on_distance(seed_document_rope, 8)
    assert torch.allclose(rotate(x, pos, 8, True).norm(), x.norm())
    assert score_depends_only_on_distance(lambda v, p: rotate(v, p, 8, True), 8)


@given(rope_case(), st.integers(1, 9))
def test_layouts_agree_up_to_the_fixed_permutation(case: tuple[int, int, bool], seq: int) -> None:
    torch.manual_seed(0)  # hypothesis replays examples: keep tensors reproducible
    head_dim, rotary_dim, _ = case
    perm = interleaved_permutation(rotary_dim, head_dim)
    x = torch.randn(2, seq, head_dim, dtype=torch.float64)
    pos = torch.arange(seq) * 37
    torch.testing.assert_close(
        rotate(x, pos, rotary_dim, True)[..., perm], rotate(x[..., perm], pos, rotary_dim, False)
    )


@given(rope_case(), st.integers(1, 9), st.sampled_from([torch.float32, torch.float64]))
def test_fast_path_equals_complex_reference(
    case: tuple[int, int, bool], seq: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)  # hypothesis replays examples: keep tensors reproducible
    head_dim, rotary_dim, interleaved = case
    x = torch.randn(2, 2, seq, head_dim, dtype=dtype)
    pos = torch.arange(seq) + 123_456
    angles = rope_angles(pos, rope_inv_freq(rotary_dim))
    expected = apply_rope_reference(x, angles, interleaved)
    tol = 1e-5 if dtype == torch.float32 else 1e-7
    torch.testing.assert_close(rotate(x, pos, rotary_dim, interleaved), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize(("rotary_dim", "base"), [(8, 10000.0), (64, 10000.0), (128, 500000.0)])
def test_angles_are_reduced_to_minus_pi_pi(rotary_dim: int, base: float) -> None:
    """``rope_angles`` returns ``m * theta_i`` reduced mod 2 pi into ``[-pi, pi)``, for positions up to
    ``+-2**31`` (``ROPE_MAX_POSITION``), so that a float32 cos or sin of them (what a device without float64,
    such as MPS, computes) stays within 2e-7 of the float64 table. Unreduced angles reach 2e9 there, whose
    float32 cos is 0.4 off (review s5); on a CPU the float64 tables alone would not show it."""
    gen = torch.Generator().manual_seed(rotary_dim)
    edges = torch.tensor([0, 1, 7, -1, -7, 10**6, -(10**6), 2**31 - 1, 2**31, -(2**31)])
    positions = torch.cat([edges, torch.randint(-(2**31), 2**31 + 1, (200,), generator=gen)])
    inv_freq = rope_inv_freq(rotary_dim, base)
    for pos in (positions, positions.view(2, -1)):  # (S,) and (B, S)
        angles = rope_angles(pos, inv_freq)
        assert angles.shape == (*pos.shape, rotary_dim // 2) and angles.dtype == torch.float64
        assert bool((angles >= -torch.pi).all()) and bool((angles < torch.pi).all())
        turns = (pos.double().unsqueeze(-1) * inv_freq - angles) / (2 * torch.pi)  # whole turns removed
        assert float((turns - turns.round()).abs().max()) * 2 * torch.pi <= 1e-6
        cos, sin = rope_cos_sin(pos, inv_freq, dtype=torch.float64)
        torch.testing.assert_close(angles.float().cos().double(), cos, atol=2e-7, rtol=0)
        torch.testing.assert_close(angles.float().sin().double(), sin, atol=2e-7, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_rotate_in_float32_and_keep_their_dtype(dtype: torch.dtype) -> None:
    x = torch.randn(1, 2, 5, 16).to(dtype)
    pos = torch.arange(5)
    y = rotate(x, pos, 16, False)
    assert y.dtype == dtype
    ref = rotate(x.float(), pos, 16, False).to(dtype)
    assert torch.equal(y, ref)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="even"):
        rope_inv_freq(7)
    cos, sin = rope_cos_sin(torch.arange(3), rope_inv_freq(16))
    with pytest.raises(ValueError, match="rotary dims"):
        apply_rope(torch.randn(3, 8), cos, sin)
    with pytest.raises(ValueError, match="same shape"):
        apply_rope(torch.randn(3, 16), cos, sin[:, :4])


def _rotated(form: str, x: torch.Tensor, pos: torch.Tensor, interleaved: bool) -> torch.Tensor:
    from posenc.functional.rotary import apply_rope_full, apply_rope_pairs, rope_full_tables, rope_pair_tables

    inv = rope_inv_freq(x.shape[-1], 10000.0)
    cos, sin = rope_cos_sin(pos, inv)
    if form == "apply_rope":
        return apply_rope(x, cos, sin, interleaved)
    if form == "apply_rope_full":
        return apply_rope_full(x, *rope_full_tables(cos, sin, interleaved), interleaved)
    if form == "apply_rope_pairs":
        return apply_rope_pairs(x, rope_pair_tables(cos, sin, interleaved), interleaved)
    return apply_rope_reference(x, rope_angles(pos, inv), interleaved)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize(
    "form", ["apply_rope", "apply_rope_full", "apply_rope_pairs", "apply_rope_reference"]
)
def test_tables_that_would_reshape_x_are_refused(form: str, interleaved: bool) -> None:
    """Every functional form returns a tensor shaped like ``x`` or refuses: tables for more positions (or more rows)
    than ``x`` has used to broadcast ``x`` to their shape."""
    for x, pos in [
        (torch.randn(2, 3, 1, 8), torch.arange(5)),  # one position in x, five in the tables
        (torch.randn(1, 3, 4, 8), torch.arange(4).expand(3, 1, 4)),  # batch 1 in x, 3 in the tables
    ]:
        with pytest.raises(ValueError, match=rf"{form}: tables of shape .* do not fit x of shape"):
            _rotated(form, x, pos, interleaved)
    x = torch.randn(2, 3, 4, 8)
    assert (
        _rotated(form, x, torch.arange(4).expand(2, 1, 4), interleaved).shape == x.shape
    )  # what fits still runs


def test_functional_rotary_checks_its_arguments() -> None:
    """interleaved="no" rotated as True; numpy rotary dims were refused; a NaN tensor base, a NaN scale and an
    integer dtype were accepted; a 0-d x, a list or a str device gave internal errors (fuzz #3, #9, #11)."""
    import numpy as np

    from posenc.functional import check_rotary_dim
    from posenc.functional.rotary import phase_dtype

    x = torch.randn(1, 1, 3, 8)
    cos, sin = rope_cos_sin(torch.arange(3), rope_inv_freq(8))
    with pytest.raises(TypeError, match="apply_rope: interleaved must be True or False, got 'no'"):
        apply_rope(x, cos, sin, interleaved="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="apply_rope: x must be a floating-point tensor"):
        apply_rope([1.0], cos, sin)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="apply_rope: x must be .* got a 0-d tensor"):
        apply_rope(torch.tensor(1.0), cos, sin)
    assert torch.equal(rope_inv_freq(np.int64(16)), rope_inv_freq(16))  # type: ignore[arg-type]
    assert check_rotary_dim(np.int64(8), np.int64(16)) == 8  # type: ignore[arg-type]
    assert torch.equal(interleaved_permutation(np.int64(8)), interleaved_permutation(8))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rotary_dim must be an integer, got the bool True"):
        check_rotary_dim(True)
    with pytest.raises(ValueError, match="RoPE base must be a finite number"):
        rope_inv_freq(16, base=torch.tensor(float("nan")))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RoPE base must be a finite number"):
        rope_inv_freq(16, base=torch.tensor(float("inf")))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rope_inv_freq: base must be a finite number, got an integer of"):
        rope_inv_freq(16, base=10**400)
    with pytest.raises(ValueError, match="rope_cos_sin: scale must be a finite number, got nan"):
        rope_cos_sin(torch.arange(3), rope_inv_freq(8), scale=float("nan"))
    with pytest.raises(TypeError, match="rope_cos_sin: dtype must be a floating-point dtype"):
        rope_cos_sin(torch.arange(3), rope_inv_freq(8), dtype=torch.long)
    with pytest.raises(TypeError, match="phase_dtype: device must be a torch.device"):
        phase_dtype("cpu")  # type: ignore[arg-type]


def test_apply_rope_reference_takes_a_float64_view_at_an_odd_offset() -> None:
    """A float64 view at an odd storage offset raised "Tensor must have a storage_offset divisible by 2"
    (view_as_complex) (fuzz #12)."""
    base = torch.randn(1, 1, 1, 5, dtype=torch.float64)
    angles = torch.full((1, 1), 0.3, dtype=torch.float64)
    view = base[..., 1:3]
    for interleaved in (True, False):
        want = apply_rope_reference(view.clone(), angles, interleaved=interleaved)
        assert torch.equal(apply_rope_reference(view, angles, interleaved=interleaved), want)
