"""Sinusoidal and learned absolute encodings."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import posenc


@given(st.integers(1, 33), st.integers(0, 10**6))
def test_sinusoidal_matches_the_papers_formula(dim: int, start: int) -> None:
    torch.manual_seed(0)  # hypothesis replays examples: keep tensors reproducible
    enc = posenc.Sinusoidal(dim).double()
    pos = torch.arange(start, start + 3)
    pe = enc(torch.zeros(1, 3, dim, dtype=torch.float64), pos)[0]  # (3, dim)
    for row, p in enumerate(pos.tolist()):
        for i in range(dim):
            angle = p / 10000 ** ((i - i % 2) / dim)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(pe[row, i].item() - expected) < 1e-9


def test_sinusoidal_any_length_and_positions() -> None:
    enc = posenc.Sinusoidal(16)
    x = torch.randn(2, 20_000, 16)  # far past any max_len a table would have had
    y = enc(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(enc(x[:, :5]), enc(x[:, :5], torch.arange(5)))
    per_batch = enc(x[:, :4], torch.tensor([[0, 1, 2, 3], [9, 10, 11, 12]]))
    torch.testing.assert_close(per_batch[1], enc(x[1:, :4], torch.arange(9, 13))[0])


def test_sinusoidal_dropout_and_dtype() -> None:
    enc = posenc.Sinusoidal(8, dropout=0.5).train()
    y = enc(torch.ones(4, 6, 8))
    assert (y == 0).any()
    assert posenc.Sinusoidal(8)(torch.ones(1, 2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_learned_rejects_positions_past_its_table() -> None:
    enc = posenc.LearnedAbsolute(8, max_len=10)
    assert enc(torch.randn(2, 10, 8)).shape == (2, 10, 8)
    with pytest.raises(ValueError, match="^LearnedAbsolute: sequence length 11 exceeds .*max_len=10"):
        enc(torch.randn(2, 11, 8))
    with pytest.raises(ValueError, match=r"^LearnedAbsolute: positions must lie in \[0, 10\)"):
        enc(torch.randn(1, 2, 8), torch.tensor([8, 10]))


def test_nope_is_identity() -> None:
    x = torch.randn(2, 3, 4)
    assert torch.equal(posenc.NoPE()(x), x)


@pytest.mark.parametrize("name", posenc.available(family="absolute"))
@pytest.mark.parametrize("shape", [(6, 8), (3, 6, 8), (2, 3, 6, 8)], ids=["2d", "3d", "4d"])
def test_absolute_output_has_the_inputs_shape(name: str, shape: tuple[int, ...]) -> None:
    """x (S, dim) with explicit positions came back (1, S, dim) (and learned, or sinusoidal past its table, did so
    without positions too); x (A, B, S, dim) checked per-row positions against A, not B. The output has x's shape,
    each row the encoding of its own positions."""
    enc = posenc.build(name, dim=8, **({"max_len": 32} if name == "learned" else {"cache_len": 4})).eval()
    x = torch.randn(shape)
    rows = shape[-3] if len(shape) > 2 else 1
    per_row = torch.arange(rows * 6).reshape(rows, 6) % 30
    for positions in (None, torch.arange(6) + 1, per_row):
        out = enc(x, positions)
        assert out.shape == x.shape
        want = positions if positions is not None else torch.arange(6)
        want = want.expand(rows, 6)
        flat = x.reshape(-1, rows, 6, 8)
        for r in range(rows):
            ref = enc(flat[:, r], want[r])  # (A, 6, 8) rows of one position row
            torch.testing.assert_close(out.reshape(-1, rows, 6, 8)[:, r], ref)


def test_sinusoidal_float64_default_positions_are_computed_in_float64() -> None:
    """float64 x with default positions read the float32 table (3e-8 off); explicit positions computed it."""
    enc = posenc.Sinusoidal(64)
    x = torch.zeros(1, 300, 64, dtype=torch.float64)
    exact = posenc.functional.sinusoidal_table(torch.arange(300), 64, dtype=torch.float64)
    assert torch.equal(enc(x)[0], exact)
    assert torch.equal(enc(x), enc(x, torch.arange(300)))


@pytest.mark.parametrize("name", posenc.available(family="absolute"))
def test_bad_positions_and_table_arguments_are_named(name: str) -> None:
    """positions as a list was an AttributeError ('list' object has no attribute 'is_floating_point'); rows that
    match no batch said '(1 or 1, seq)'; sinusoidal_table(base=-1) was a silent NaN table."""
    enc = posenc.build(name, dim=8)
    owner = type(
        enc
    ).__name__  # the errors name the encoding (as_positions said only "positions must be ...")
    with pytest.raises(TypeError, match=rf"^{owner}: positions must be an integer tensor, got list$"):
        enc(torch.randn(1, 2, 8), [0, 1])
    with pytest.raises(
        TypeError, match=rf"^{owner}: positions must be an integer tensor, got torch.float32$"
    ):
        enc(torch.randn(1, 2, 8), torch.zeros(2))
    with pytest.raises(
        ValueError, match=rf"^{owner}: positions must be \(seq,\) or \(1, seq\) with seq=2, got \(3, 2\)$"
    ):
        enc(torch.randn(1, 2, 8), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="sinusoidal_table: base must be > 0, got -1"):
        posenc.functional.sinusoidal_table(torch.arange(3), 8, base=-1.0)
    with pytest.raises(TypeError, match="sinusoidal_table: dim must be an integer"):
        posenc.functional.sinusoidal_table(torch.arange(3), 7.5)  # type: ignore[arg-type]


def test_a_max_len_whose_table_does_not_fit_is_refused_before_allocating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LearnedAbsolute(64, max_len=10**12) died in the allocator; now the argument, the size and the largest
    max_len that fits are named."""
    import posenc.validation

    with pytest.raises(
        ValueError,
        match=r"^LearnedAbsolute: max_len=1000000000000 would take 238,418.6 GiB for a \(max_len, dim\) table, "
        r".* max_len takes at most [\d,]+ here$",
    ):
        posenc.LearnedAbsolute(64, max_len=10**12)
    monkeypatch.setattr(posenc.validation, "host_memory", lambda: 2**22)  # 2 MiB at most
    posenc.LearnedAbsolute(16, max_len=32768)  # (32768, 16) float32: exactly 2 MiB
    with pytest.raises(ValueError, match="max_len takes at most 32,768 here"):
        posenc.LearnedAbsolute(16, max_len=32769)


@pytest.mark.parametrize("make", [lambda: posenc.Sinusoidal(16), lambda: posenc.LearnedAbsolute(16)])
def test_inputs_on_meta_against_real_tables_are_refused(make: object) -> None:
    """x on meta for a CPU module raised torch's "not on the expected device meta", meta positions with CPU x
    "Cannot copy out of meta tensor" (fuzz #10)."""
    enc = make()  # type: ignore[operator]
    name = type(enc).__name__
    with pytest.raises(
        ValueError, match=f"{name}: x is on meta but the module's tables are on a real device"
    ):
        enc.embed(torch.randn(2, 5, 16, device="meta"))
    with pytest.raises(ValueError, match=f"{name}: positions are on the meta device"):
        enc.embed(torch.randn(2, 5, 16), torch.arange(5, device="meta"))


def test_sinusoidal_refuses_positions_whose_angles_would_be_noise() -> None:
    """Past 2**31 the float64 angles drift (9e-4 off at 1e15, noise at 2**62): refused, as RoPE refuses them."""
    enc = posenc.Sinusoidal(8)
    x = torch.randn(1, 2, 8)
    enc.embed(x, torch.tensor([5, 2**31]))
    with pytest.raises(
        ValueError, match=r"Sinusoidal: position 1099511627776 is too far from 0.*use smaller positions$"
    ):
        enc.embed(x, torch.tensor([5, 2**40]))


def test_learned_range_check_trusts_an_open_session_off_the_cpu() -> None:
    """A decode step on a GPU waited for the device twice per token (min and max) to check positions that the
    open DecodeSession already keeps below its slots (review s4); on a CPU the check is free and always runs."""
    enc = posenc.LearnedAbsolute(8, max_len=16)
    off_cpu = torch.zeros(1, 1, dtype=torch.long, device="meta")  # (stands for a CUDA tensor: not on the CPU)
    assert not enc._session_vouches(off_cpu)
    with posenc.DecodeSession(slots=16):
        assert enc._session_vouches(off_cpu)
        assert not enc._session_vouches(torch.zeros(1, 1, dtype=torch.long))
        with pytest.raises(ValueError, match=r"positions must lie in \[0, 16\)"):
            enc.embed(torch.randn(1, 1, 8), torch.tensor([[16]]))
    with posenc.DecodeSession(slots=17):  # a session longer than the table promises nothing about it
        assert not enc._session_vouches(off_cpu)
