"""DecodeSession: per-session bias tables read by index equal the formula, and never outlive the session."""

from __future__ import annotations

import contextlib
import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import posenc
import posenc.models.generate as generate_mod
from posenc.bias.base import BiasEncoding
from posenc.models import TransformerLM

SESSION_BIASES = ["alibi", "t5", "kerple", "kerple:kind=power", "fire"]
#: Bitwise equal outside and inside a session (the same float operations at the same integer distances). Not
#: FIRE's MLP, nor Kerple's power kernel, whose ``pow`` rounds differently on one vector and on a batch of rows.
BITWISE_IN_SESSION = ["alibi", "t5", "kerple"]


def _bias(name: str) -> BiasEncoding:
    torch.manual_seed(0)
    name, _, kind = name.partition(":kind=")
    options: dict[str, object] = {"init_threshold": 40.0} if name == "fire" else {}
    if kind:
        options["kind"] = kind
    enc = posenc.build(name, heads=4, **options)
    assert isinstance(enc, BiasEncoding)
    with torch.no_grad():  # learned tables away from their zero / uniform start
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return enc


def _decode_positions(batch: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A decode step as generate makes it: per-row query positions, keys of the written slots then zeros."""
    q_pos = torch.tensor([[slots - 3 - 5 * b] for b in range(batch)])  # (B, 1)
    k_pos = torch.arange(slots).expand(batch, -1) - torch.arange(batch)[:, None] * 5  # left padding
    k_pos = k_pos.clamp(min=0) * (torch.arange(slots) <= slots - 3)  # unwritten slots hold 0
    return q_pos, k_pos


@pytest.mark.parametrize("name", SESSION_BIASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_session_bias_equals_the_formula(name: str, batch: int) -> None:
    enc = _bias(name)
    q_pos, k_pos = _decode_positions(batch, slots=24)
    with torch.no_grad():
        want = enc.pairwise_reference(q_pos, k_pos)
        outside = enc.pairwise(q_pos, k_pos)
        with posenc.DecodeSession(24):
            assert enc.pairwise_in_session(q_pos, k_pos) is not None  # the session's path ran
            got = enc.pairwise(q_pos, k_pos)
    assert got.shape == want.shape == (batch, 4, 1, 24)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    if name in BITWISE_IN_SESSION:  # the formula at the same integer distances: the same float operations
        assert torch.equal(got, outside)
    else:
        torch.testing.assert_close(got, outside, atol=1e-6, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(SESSION_BIASES),
    st.integers(1, 3),
    st.integers(1, 40),
    st.data(),
)
def test_session_bias_equals_the_formula_at_any_positions_below_the_slots(
    name: str, batch: int, slots: int, data: st.DataObject
) -> None:
    """Any batch, slot count and positions in ``[0, slots)`` (per row, keys in any order)."""
    enc = _bias(name)
    q_pos = torch.tensor(data.draw(st.lists(st.integers(0, slots - 1), min_size=batch, max_size=batch)))
    keys = data.draw(st.lists(st.integers(0, slots - 1), min_size=slots, max_size=slots))
    q_pos, k_pos = q_pos[:, None], torch.tensor(keys).expand(batch, -1)  # (B, 1), (B, K)
    with torch.no_grad():
        want = enc.pairwise_reference(q_pos, k_pos)
        with posenc.DecodeSession(slots):
            got = enc.pairwise(q_pos, k_pos)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_fire_past_its_threshold_leaves_the_session() -> None:
    """Beyond |L| FIRE's denominator depends on the query: no per-distance vector, the formula instead."""
    fire = _bias("fire")
    limit = float((fire.threshold_scale * fire.init_threshold).abs())
    k_pos = torch.arange(64)[None]
    with torch.no_grad(), posenc.DecodeSession(64):
        below = torch.tensor([[int(limit)]])
        above = torch.tensor([[int(limit) + 1]])
        assert fire.pairwise_in_session(below, k_pos) is not None
        assert fire.pairwise_in_session(above, k_pos) is None
        torch.testing.assert_close(fire.pairwise(above, k_pos), fire.pairwise_reference(above, k_pos))


@pytest.mark.parametrize("name", posenc.available())
def test_generate_gives_the_same_tokens_without_the_session(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = TransformerLM(name, dim=32, depth=2, heads=2).eval()
    tokens = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[0, :2] = False
    with_session = model.generate(tokens, 12, temperature=0, prompt_mask=mask)
    monkeypatch.setattr(generate_mod, "DecodeSession", lambda slots: contextlib.nullcontext())
    assert torch.equal(model.generate(tokens, 12, temperature=0, prompt_mask=mask), with_session)


@pytest.mark.parametrize("name", SESSION_BIASES)
def test_a_session_too_long_for_the_table_takes_the_per_pair_path(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table past ``SESSION_TABLE_BYTES`` is not built (a loose ``slots`` made one step allocate 361-1,313 MB,
    and ``DecodeSession(10**10)`` failed in the allocator: review s6): the steps then equal the no-session
    path, bitwise. The cap is lowered here to just under a 24-slot table, and the real one is tried with
    absurd slots (refused before anything is allocated)."""
    import posenc.bias.base as base_mod

    enc = _bias(name)
    q_pos, k_pos = _decode_positions(2, slots=24)
    need = (2 * 24 - 1) * enc.session_bytes_per_distance()
    with torch.no_grad():
        outside = enc.pairwise(q_pos, k_pos)
        for slots in (10**10, 2**62):
            with posenc.DecodeSession(slots):
                assert enc.pairwise_in_session(q_pos, k_pos) is None
                assert torch.equal(enc.pairwise(q_pos, k_pos), outside)
        monkeypatch.setattr(base_mod, "SESSION_TABLE_BYTES", need - 1)
        with posenc.DecodeSession(24):
            assert enc.pairwise_in_session(q_pos, k_pos) is None
            assert torch.equal(enc.pairwise(q_pos, k_pos), outside)
        monkeypatch.setattr(base_mod, "SESSION_TABLE_BYTES", need)
        with posenc.DecodeSession(24):
            assert enc.pairwise_in_session(q_pos, k_pos) is not None  # at the cap: the table


@pytest.mark.parametrize("name", ["alibi", "fire", "shaw"])
def test_a_model_step_in_an_absurd_session_equals_one_outside(name: str) -> None:
    """A hand-written decode step inside ``DecodeSession(10**10)`` runs (no table that size is built) and gives
    the logits of the same step without a session, bitwise."""
    torch.manual_seed(0)
    model = TransformerLM(name, dim=32, depth=2, heads=2).eval()
    caches = model.new_caches()
    tokens = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(tokens, caches=caches)
        other = copy.deepcopy(caches)
        with posenc.DecodeSession(10**10):
            got = model(tokens[:, -1:], caches=caches)
        want = model(tokens[:, -1:], caches=other)
    assert torch.equal(got, want)


def test_a_parameter_changed_between_sessions_is_seen() -> None:
    """Even through ``.data`` (no version bump): the table is the session's, never keyed on the parameter."""
    enc = _bias("t5")
    q_pos, k_pos = _decode_positions(1, slots=16)
    with torch.no_grad():
        with posenc.DecodeSession(16):
            first = enc.pairwise(q_pos, k_pos)
        enc.embedding.weight.data.mul_(2.0)  # type: ignore[union-attr]
        with posenc.DecodeSession(16):
            second = enc.pairwise(q_pos, k_pos)
    torch.testing.assert_close(second, 2 * first)


def test_the_session_is_ignored_while_recording_gradients() -> None:
    enc = _bias("kerple")
    q_pos, k_pos = _decode_positions(1, slots=16)
    with posenc.DecodeSession(16):
        assert enc.pairwise_in_session(q_pos, k_pos) is None
        out = enc.pairwise(q_pos, k_pos)
    out.sum().backward()
    assert enc.r1.grad is not None


def test_positions_outside_the_slots_raise_not_misread() -> None:
    enc = _bias("alibi")
    with (
        torch.no_grad(),
        posenc.DecodeSession(8),
        pytest.raises(
            IndexError, match=r"ALiBi: a key-query distance outside the open DecodeSession\(slots=8\).s table"
        ),
    ):
        enc.pairwise(torch.tensor([[12]]), torch.arange(8)[None])  # k - q = -12: past the vector's start


def test_memo_starts_empty_in_copies_and_moves() -> None:
    enc = _bias("t5")
    q_pos, k_pos = _decode_positions(1, slots=16)
    session = posenc.DecodeSession(16)
    with torch.no_grad(), session:
        enc.pairwise(q_pos, k_pos)
        assert enc._session_memo.get(session) is not None
        for other in (copy.deepcopy(enc), pickle.loads(pickle.dumps(enc))):
            assert other._session_memo.get(session) is None
        enc.to(torch.float64)
        assert enc._session_memo.get(session) is None


def test_session_arguments_and_reuse() -> None:
    with pytest.raises(ValueError, match="slots"):
        posenc.DecodeSession(0)
    session = posenc.DecodeSession(4)
    with session:
        assert posenc.session.current_session() is session
        with pytest.raises(RuntimeError, match="already open"), session:
            pass
        with posenc.DecodeSession(8) as inner:
            assert posenc.session.current_session() is inner
        assert posenc.session.current_session() is session
    assert posenc.session.current_session() is None


@pytest.mark.parametrize("name", ["t5", "kerple", "alibi"])
def test_one_session_object_reopened_sees_a_change_and_keeps_no_table_after_its_block(name: str) -> None:
    """Tables are keyed on one ``with`` block, not on the session object: a session reused after a parameter
    change once returned the old table (wrong logits in a hand-written loop), and every table outlived its block
    (a (2 slots - 1, H) tensor per layer after generate)."""
    enc = posenc.build(name, heads=4)
    q, k = torch.tensor([[5]]), torch.arange(8)[None]
    session = posenc.DecodeSession(8)
    with torch.no_grad():
        with session:
            before = enc.pairwise(q, k).clone()
            assert enc._session_memo.get(session) is not None  # built and kept inside the block
        assert enc._session_memo._values == {}  # dropped with the block
        for p in enc.parameters():
            p.data.add_(0.5)
        with session:
            after = enc.pairwise(q, k)
        formula = enc.pairwise(q, k)  # outside any session
    assert torch.equal(after, formula)
    assert name == "alibi" or not torch.equal(after, before)  # ALiBi has no parameters to change
    with pytest.raises(RuntimeError, match="__exit__ without __enter__"):
        posenc.DecodeSession(4).__exit__(None, None, None)


def test_sessions_open_in_two_threads_keep_a_table_each() -> None:
    """One slot per memo: two threads decoding one model, each in its own session, evicted each other's table at
    every step (and the sessions' lists of memos grew by one per step)."""
    import threading

    enc = _bias("alibi")
    built: list[int] = []
    real = enc._session_table

    def counting(session: posenc.DecodeSession, device: torch.device) -> object:
        built.append(1)
        return real(session, device)

    enc._session_table = counting  # type: ignore[method-assign]
    q_pos, k_pos = _decode_positions(1, slots=16)
    barrier = threading.Barrier(2)
    sizes: list[int] = []

    def decode() -> None:
        with torch.no_grad(), posenc.DecodeSession(16) as session:
            for _ in range(20):
                barrier.wait()
                enc.pairwise(q_pos, k_pos)
            sizes.append(len(session._memos))

    threads = [threading.Thread(target=decode) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 2 and sizes == [1, 1]


class _T5Hook(torch.nn.Module):
    """A T5 bias with random table values as a module whose forward is its ``score_bias`` (for functional_call)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = posenc.T5Bias(2)
        with torch.no_grad():
            self.enc.embedding.weight.normal_()

    def forward(self, q: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return self.enc.score_bias(q, q_pos, k_pos)


def test_session_tables_are_not_read_under_forward_mode_ad() -> None:
    """Inside a DecodeSession with grad mode off, ``torch.func.jvp`` read the table built from the plain
    parameters: T5's tangent came out 0 (review s4). The session's tables are read in plain inference only."""
    from torch.func import functional_call, jvp

    hook = _T5Hook()
    params = {k: v.detach() for k, v in hook.named_parameters()}
    tangent = {k: torch.ones_like(v) for k, v in params.items()}
    args = (torch.randn(1, 2, 1, 4), torch.tensor([[4]]), torch.arange(5)[None])

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(hook, p, args)

    with torch.no_grad():
        _, plain = jvp(f, (params,), (tangent,))
    with torch.no_grad(), posenc.DecodeSession(slots=8):
        f(params)  # an ordinary step builds the session's table
        _, inside = jvp(f, (params,), (tangent,))
    assert plain.abs().sum() > 0
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_session_tables_are_not_read_under_dual_level_forward_ad() -> None:
    """``session_tables``: no session tables under forward-mode AD, ``torch.autograd.forward_ad`` included (its
    first dual level is 0, outside functorch's transforms): a table built from the plain parameters carried no
    tangent, T5's came out None."""
    import torch.autograd.forward_ad as fwad
    from torch.func import functional_call

    hook = _T5Hook()
    enc = hook.enc
    args = (torch.randn(1, 2, 1, 4), torch.tensor([[4]]), torch.arange(5)[None])
    weight = enc.embedding.weight.detach()

    def tangent() -> torch.Tensor | None:
        with fwad.dual_level():
            dual = fwad.make_dual(weight, torch.ones_like(weight))
            out = functional_call(hook, {"enc.embedding.weight": dual}, args)
            return fwad.unpack_dual(out).tangent

    with torch.no_grad():
        plain = tangent()
    with torch.no_grad(), posenc.DecodeSession(slots=8):
        hook(*args)  # an ordinary step builds the session's table
        inside = tangent()
    assert plain is not None and plain.abs().sum() > 0
    assert inside is not None
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


@pytest.mark.parametrize("max_len", [None, 64])
def test_shaw_reads_its_session_rows_at_every_step_of_one_sequence(
    max_len: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate's StaticKVCache held 0 in its unwritten slots, so Shaw's keys were 0 .. K-1 only once the cache was
    full: the rows laid out for the session (up to 32 MiB a layer) were built and read at the last step at most,
    the gather ran at every other. The tokens stay those of the run without a session."""
    from posenc.relative.shaw import ShawRelative

    torch.manual_seed(0)
    model = TransformerLM("shaw", dim=32, depth=2, heads=2).eval()
    tokens = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    used: list[bool] = []
    read = ShawRelative._rows_in_session

    def spy(self: ShawRelative, q_pos: torch.Tensor, k_pos: torch.Tensor) -> object:
        rows = read(self, q_pos, k_pos)
        used.append(rows is not None)
        return rows

    monkeypatch.setattr(ShawRelative, "_rows_in_session", spy)
    options = {} if max_len is None else {"max_len": max_len}
    with_session = model.generate(tokens, 12, temperature=0, **options)
    assert len(used) == 11 * 2 and all(used)  # every step after the prefill's, in both layers
    monkeypatch.setattr(generate_mod, "DecodeSession", lambda slots: contextlib.nullcontext())
    assert torch.equal(model.generate(tokens, 12, temperature=0, **options), with_session)


def test_a_static_cache_keeps_its_unwritten_slots_at_their_index() -> None:
    from posenc.attention.static_cache import StaticKVCache

    cache = StaticKVCache(6)
    k = torch.randn(2, 1, 2, 4)
    _, _, positions = cache.update(k, k, torch.tensor([[3, 4], [0, 1]]))
    assert positions.tolist() == [[3, 4, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]
    before = positions.data_ptr()
    cache.reset()  # (a reused decoder: a padded call's positions must not stay in the slots it will not write)
    _, _, positions = cache.update(k[:, :, :1], k[:, :, :1], torch.tensor([[0]]))
    assert positions.tolist() == [[0, 1, 2, 3, 4, 5]] * 2 and positions.data_ptr() == before
