"""Shaw et al. 2018: the lean implementation equals the paper's equations written out, and stays lean."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import posenc
from posenc.attention import AttentionInputs, math_attention
from posenc.attention.inputs import causal_keep
from posenc.base import default_positions
from posenc.functional import shaw_reference


def run_lean(
    enc: posenc.ShawRelative, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
) -> torch.Tensor:
    q_pos = default_positions(q.shape[-2], q.device, k.shape[-2] - q.shape[-2])
    k_pos = default_positions(k.shape[-2], q.device)
    return math_attention(q, k, v, AttentionInputs(enc, q_pos, k_pos, None, causal))


@given(st.integers(1, 8), st.integers(0, 5), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 3))
def test_equals_the_papers_equations(
    k_len: int, max_distance: int, per_head: bool, values: bool, causal: bool, cached: int
) -> None:
    torch.manual_seed(0)  # hypothesis replays examples: keep tensors reproducible
    heads, d = 3, 4
    enc = posenc.ShawRelative(d, max_distance, heads=heads if per_head else None, values=values).double()
    q_len = max(1, k_len - cached)
    q = torch.randn(2, heads, q_len, d, dtype=torch.float64)
    k, v = torch.randn(2, 2, heads, k_len, d, dtype=torch.float64)
    zeros = torch.zeros_like(enc.key_table)
    value_table = enc.value_table if enc.value_table is not None else zeros
    mask = causal_keep(q_len, k_len, q.device) if causal else None
    expected = shaw_reference(q, k, v, enc.key_table, value_table, max_distance, mask)
    torch.testing.assert_close(run_lean(enc, q, k, v, causal), expected)


def test_gradients_reach_both_tables() -> None:
    enc = posenc.ShawRelative(4, 2)
    q, k, v = torch.randn(3, 1, 2, 6, 4)
    run_lean(enc, q, k, v, True).sum().backward()
    assert enc.key_table.grad is not None and enc.key_table.grad.abs().sum() > 0
    assert enc.value_table is not None and enc.value_table.grad is not None


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements any op produced."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_builds_an_n_by_n_by_d_tensor() -> None:
    n, d, heads = 64, 32, 1
    attn = posenc.Attention(d * heads, heads, position=posenc.ShawRelative(d, 8))
    x = torch.randn(1, n, d * heads)
    with LargestTensor() as probe:
        attn(x).sum().backward()
    assert probe.largest < n * n * d // 4  # (n, n) scores are fine; (n, n, d) is not


def test_shaw_in_attention_with_values_uses_math_and_sdpa_refuses() -> None:
    attn = posenc.Attention(16, 2, position=posenc.ShawRelative(8), backend="sdpa")
    with pytest.raises(ValueError, match="attention weights"):
        attn(torch.randn(1, 3, 16))
    key_only = posenc.Attention(16, 2, position=posenc.ShawRelative(8, values=False), backend="sdpa")
    reference = posenc.Attention(16, 2, position=key_only.position, backend="math")
    reference.load_state_dict(key_only.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(key_only(x), reference(x), atol=1e-5, rtol=1e-5)


@given(st.integers(1, 12), st.integers(0, 4), st.booleans(), st.booleans())
def test_kv_rows_give_both_terms_of_one_query(
    k_len: int, max_distance: int, per_head: bool, rows: bool
) -> None:
    """For a single query (shared or per-row positions): ``q . key_rows / sqrt(D) == score_bias`` minus the
    content part, and ``value_term(probs) == probs @ value_rows``."""
    torch.manual_seed(0)
    heads, d = 3, 4
    enc = posenc.ShawRelative(d, max_distance, heads=heads if per_head else None).double()
    batch = 2 if rows else 1
    k_pos = torch.arange(k_len).expand(batch, -1) + torch.arange(batch)[:, None] * 5  # (1|B, K)
    q_pos = k_pos[:, -1:]  # (1|B, 1): the newest key's position
    probs = torch.rand(2, heads, 1, k_len, dtype=torch.float64).softmax(-1)
    q = torch.randn(2, heads, 1, d, dtype=torch.float64)
    key_rows, value_rows = enc.kv_rows(q_pos, k_pos)
    want_v, want_k = enc.value_term(probs, q_pos, k_pos), enc.score_bias(q, q_pos, k_pos)
    assert want_v is not None and want_k is not None and value_rows is not None and key_rows is not None
    torch.testing.assert_close(probs @ value_rows, want_v)
    torch.testing.assert_close(q @ key_rows.transpose(-1, -2) * d**-0.5, want_k)  # (B, H, 1, K)
    assert enc.kv_rows(default_positions(2, q_pos.device), k_pos) == (None, None)  # two queries: no rows
    key_only = posenc.ShawRelative(d, max_distance, values=False)
    assert key_only.kv_rows(q_pos, k_pos)[1] is None


@pytest.mark.parametrize("values", [True, False])
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_a_decode_step_runs_through_sdpa_and_equals_math(per_head: bool, kv_heads: int, values: bool) -> None:
    """One new token after a cache (shared and per-row positions): ``auto`` takes ``sdpa`` with the key and
    value rows folded into ``k`` and ``v``; output and the tables' gradients equal ``math``'s. Two new tokens
    still need ``math`` (sdpa refuses them)."""
    torch.manual_seed(0)
    enc = posenc.ShawRelative(8, 3, heads=4 if per_head else None, values=values)
    attn = {b: posenc.Attention(32, 4, kv_heads=kv_heads, position=enc, backend=b) for b in ("auto", "math")}
    attn["math"].load_state_dict(attn["auto"].state_dict())
    x = torch.randn(2, 9, 32)
    per_row = torch.stack((torch.arange(9), torch.arange(9) + 5))  # (B, 9): rows at other offsets
    outs, grads = {}, {}
    for name, a in attn.items():
        for key, pos in (("shared", None), ("per_row", per_row)):
            cache = posenc.KVCache()
            with torch.no_grad():
                a(x[:, :8], cache=cache, positions=None if pos is None else pos[:, :8])
            out = a(x[:, 8:], cache=cache, positions=None if pos is None else pos[:, 8:])  # one query, 9 keys
            enc.zero_grad()
            out.square().sum().backward()
            tables = [t for t in (enc.key_table, enc.value_table) if t is not None]
            assert all(t.grad is not None for t in tables)
            outs[name, key] = out
            grads[name, key] = [t.grad.clone() for t in tables if t.grad is not None]
    for key in ("shared", "per_row"):
        torch.testing.assert_close(outs["auto", key], outs["math", key], atol=1e-5, rtol=1e-5)
        for got, want in zip(grads["auto", key], grads["math", key], strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if not values:
        return
    from posenc.attention.backends import choose_backend, sdpa_attention

    q_pos = torch.tensor([[8]])
    ctx = AttentionInputs(enc, q_pos, torch.arange(9)[None], None, True)
    assert choose_backend("auto", torch.zeros(2, 4, 1, 8), ctx) is sdpa_attention
    sdpa = posenc.Attention(32, 4, kv_heads=kv_heads, position=enc, backend="sdpa")
    with pytest.raises(ValueError, match="attention weights"):
        sdpa(x[:, :2])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_distance"):
        posenc.ShawRelative(8, -1)
    with pytest.raises(ValueError, match="heads"):
        posenc.ShawRelative(8, 2, heads=0)


def test_shaw_one_query_index_equals_the_general_one() -> None:
    shaw = posenc.build("shaw", head_dim=8, max_distance=3)
    q_pos, k_pos = torch.tensor([[9], [2]]), torch.arange(12).expand(2, -1)
    general = torch.cat([shaw.index(q_pos[i : i + 1], k_pos[i : i + 1, :]) for i in range(2)])
    want = (k_pos[:, None, :] - q_pos[:, :, None]).clamp(-3, 3) + 3  # (B, 1, K)
    assert torch.equal(general, want)
    assert torch.equal(shaw._one_query_index(q_pos, k_pos), want[:, 0])


def test_a_max_distance_whose_tables_do_not_fit_is_refused_before_allocating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """max_distance=10**12 died in the allocator ("can't allocate memory: you tried to allocate 512000000000256
    bytes"); now the argument, the size and the largest max_distance that fits are named."""
    import posenc.validation

    with pytest.raises(
        ValueError,
        match=r"^ShawRelative: max_distance=1000000000000 would take 953,674.3 GiB for key and value tables of "
        r"\(2 \* max_distance \+ 1, head_dim\), more than the [\d,.]+ GiB \(half of this machine's memory\) its "
        r"tables may take; max_distance takes at most [\d,]+ here$",
    ):
        posenc.ShawRelative(64, max_distance=10**12)
    monkeypatch.setattr(posenc.validation, "host_memory", lambda: 2**22)  # tables of 2 MiB at most
    posenc.ShawRelative(16, max_distance=8191)  # two (16383, 16) float32 tables: 2,097,024 bytes
    with pytest.raises(ValueError, match="max_distance takes at most 8,191 here"):
        posenc.ShawRelative(16, max_distance=8192)
    posenc.ShawRelative(16, max_distance=16383, values=False)  # one table: twice the rows
    with pytest.raises(ValueError, match=r"a key table of .* per head \(2 heads\).* at most 8,191 here"):
        posenc.ShawRelative(16, max_distance=16383, heads=2, values=False)


def test_bias_says_it_is_not_available() -> None:
    """ShawRelative(4).bias(3, 4) said "built for head_dim=4, got queries of 1" whatever was asked (fuzz #13)."""
    with pytest.raises(
        ValueError, match=r"ShawRelative: bias\(\) is not available: .* depends on the queries"
    ):
        posenc.ShawRelative(4).bias(3, 4)


def test_score_mod_table_stays_float32_under_autocast() -> None:
    """The flex key term ``q @ a^K`` is documented float32; under CPU autocast the product ran in bf16, 2e-3 off
    (review s4)."""
    torch.manual_seed(0)
    enc = posenc.ShawRelative(16, max_distance=4)
    q = torch.randn(1, 2, 6, 16)
    pos = torch.arange(6).view(1, -1)
    b, h = torch.zeros((), dtype=torch.long), torch.ones((), dtype=torch.long)
    q_idx, kv_idx = torch.arange(6).view(-1, 1), torch.arange(6).view(1, -1)
    zero = torch.zeros(6, 6)
    plain = enc.score_mod(q, pos, pos)(zero, b, h, q_idx, kv_idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = enc.score_mod(q, pos, pos)(zero, b, h, q_idx, kv_idx)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=0, atol=1e-6)
