"""The shared argument checks (posenc.validation): huge numbers, meta tensors, tables of several sizes."""

from __future__ import annotations

import pytest
import torch

import posenc
import posenc.validation
from posenc.validation import check_float, check_table_sizes


def test_check_float_refuses_numbers_past_the_float_range_with_a_value_error() -> None:
    """float(10**400) raised OverflowError through every float argument (fuzz #5)."""
    with pytest.raises(ValueError, match=r"^X: base must be a finite number, got an integer of 1329 bits"):
        check_float("base", 10**400, owner="X")
    for make in (
        lambda: posenc.RoPE(16, base=10**400),
        lambda: posenc.ALiBi(4, max_bias=10**400),
        lambda: posenc.Attention(16, 2, dropout=10**400),
        lambda: posenc.LinearScaling(factor=10**400),
        lambda: posenc.RoPE(16, scaling={"rope_type": "default", "rope_theta": 10**400}),
    ):
        with pytest.raises(ValueError, match="too large for a float"):
            make()


def test_check_float_refuses_a_meta_tensor() -> None:
    """A 0-d meta tensor raised torch's "item() cannot be called on meta tensors" (fuzz #10)."""
    with pytest.raises(ValueError, match="RoPE: base must be a number, got a tensor on the meta device"):
        posenc.RoPE(16, base=torch.tensor(1e4, device="meta"))


def test_check_table_sizes_blames_the_argument_that_can_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """T5Bias(2**40) blamed max_distance ("takes at most 0", not even valid) though heads was the culprit."""
    monkeypatch.setattr(posenc.validation, "host_memory", lambda: 2**22)  # 2 MiB may be used

    def size(n: dict[str, int]) -> int:
        return n["a"] * n["b"]

    with pytest.raises(ValueError, match=r"^T: b=4000000 would take .* b takes at most 2,097 here$"):
        check_table_sizes("T", {"a": (1000, 1), "b": (4_000_000, 1)}, size, "a table")  # a=1 cannot fit
    with pytest.raises(ValueError, match=r"^T: a=3000 would take .* a takes at most 2,097 here$"):
        check_table_sizes("T", {"a": (3000, 1), "b": (1000, 1)}, size, "a table")  # the first that can
    with pytest.raises(ValueError, match=r"^T: a=3000000, b=3000000 would take .*; make them smaller$"):
        check_table_sizes("T", {"a": (3_000_000, 1), "b": (3_000_000, 1)}, size, "a table")
    check_table_sizes("T", {"a": (1000, 1), "b": (2000, 1)}, size, "a table")
    with pytest.raises(ValueError, match=r"^T5Bias: heads=1099511627776 would take .* heads takes at most"):
        posenc.T5Bias(2**40)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: posenc.RoPE(16, cache_len=2**40), "RoPE: cache_len="),
        (lambda: posenc.RoPE(2**70), "RoPE: head_dim="),
        (lambda: posenc.XPos(16, cache_len=2**40, scale_base=1e12), "XPos: cache_len="),
        (lambda: posenc.Sinusoidal(16, cache_len=2**40), "Sinusoidal: cache_len="),
        (lambda: posenc.Sinusoidal(2**40), "Sinusoidal: dim="),
        (lambda: posenc.LearnedAbsolute(2**40), "LearnedAbsolute: dim="),
        (lambda: posenc.FIRE(4, width=2**40), "FIRE: width="),
        (lambda: posenc.FIRE(2**40), "FIRE: heads="),
        (lambda: posenc.Kerple(2**40), "Kerple: heads="),
        (lambda: posenc.ALiBi(2**40), "ALiBi: heads="),
        (lambda: posenc.Attention(2**20, 1), "Attention: dim="),
    ],
)
def test_huge_sizes_are_refused_before_allocating(make: object, name: str) -> None:
    """These raised the allocator's RuntimeError (ALiBi(2**40) hung building a Python list) (fuzz #7)."""
    with pytest.raises(ValueError, match=f"^{name}.* GiB for .* takes at most"):
        make()  # type: ignore[operator]


def test_table_sizes_are_not_limited_by_host_memory_off_the_cpu() -> None:
    """Under ``with torch.device("meta")`` nothing is allocated: a model larger than half this machine's memory
    builds (it was refused by the host-memory check)."""
    from posenc.models import TransformerLM

    with torch.device("meta"):
        model = TransformerLM("rope", vocab_size=256000, dim=16384, depth=1, heads=128)
    assert model.embed.weight.is_meta
    with pytest.raises(ValueError, match="vocab_size=256000 would take"):
        TransformerLM("rope", vocab_size=256000, dim=16384, depth=1, heads=128)


def test_numpy_bools_are_bools() -> None:
    import numpy as np

    from posenc.validation import check_bool

    assert check_bool("flag", np.bool_(True)) is True and check_bool("flag", np.bool_(False)) is False
    with pytest.raises(TypeError, match="flag must be True or False, got 1"):
        check_bool("flag", 1)


def test_rope_positions_are_refused_past_2_31_on_either_side_of_0() -> None:
    """``check_position_range``: ``|p| > 2**31`` is refused, negative positions too (they rotate by angles as
    large and as imprecise); ``-(2**31)`` and ``2**31`` are taken."""
    from posenc.validation import check_position_range

    for p in (-(2**31), 2**31):
        check_position_range(torch.tensor([p, 0]), 2)
    with pytest.raises(ValueError, match=r"position -2147483649 is too far from 0"):
        check_position_range(torch.tensor([0, -(2**31) - 1]), 2)
    with pytest.raises(ValueError, match=r"position -2147483649 is too far from 0"):
        check_position_range(torch.tensor([5]), 1, span=(-(2**31) - 1, 5))
    rope, q = posenc.RoPE(8), torch.randn(1, 1, 2, 8)
    with pytest.raises(ValueError, match=r"RoPE: position -2147484648 is too far from 0"):
        rope(q, q, torch.tensor([-(2**31) - 1000, 0]))
