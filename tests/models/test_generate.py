"""generate: prefill + static-cache decoding against full forwards over the growing sequence."""

from __future__ import annotations

import pytest
import torch

import posenc
from posenc.models import TransformerLM
from posenc.models import generate as gen
from posenc.models.decoders import kept_decoders


def _model(name: str) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(name, dim=32, depth=2, heads=2).eval()


def _greedy_full(model: TransformerLM, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """The slow obvious reference: a full forward over the whole sequence for every new token."""
    seq = tokens
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=-1)
    return seq


@pytest.mark.parametrize("name", posenc.available())
def test_greedy_generate_equals_full_forwards(name: str) -> None:
    model = _model(name)
    tokens = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.generate(tokens, 6, temperature=0), _greedy_full(model, tokens, 6))


@pytest.mark.parametrize("name", posenc.available())
def test_left_padded_row_decodes_like_the_prompt_alone(name: str) -> None:
    model = _model(name)
    short = torch.tensor([[7, 8, 9]])
    long = torch.tensor([[1, 2, 3, 4, 5]])
    batch = torch.cat((torch.cat((torch.zeros(1, 2, dtype=torch.long), short), dim=-1), long))
    mask = batch != 0
    mask[1] = True
    out = model.generate(batch, 5, temperature=0, prompt_mask=mask)
    assert torch.equal(out[0, 5:], _greedy_full(model, short, 5)[0, 3:])
    assert torch.equal(out[1], _greedy_full(model, long, 5)[0])


@pytest.mark.parametrize("name", ["rope", "alibi", "xpos", "sinusoidal"])
def test_compiled_step_gives_the_eager_tokens_with_one_graph(name: str) -> None:
    model = _model(name)
    tokens = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(2))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    got = model.generate(tokens, 6, temperature=0, compile="aot_eager")
    again = model.generate(tokens, 6, temperature=0, compile="aot_eager")  # reuses the compiled step
    assert torch.equal(got, model.generate(tokens, 6, temperature=0)) and torch.equal(got, again)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_inductor_step_on_cpu_runs_from_cpp_and_gives_the_eager_tokens() -> None:
    """``compile=True`` on a CPU: inductor with ``cpp_wrapper`` (the step's kernels called from C++), the same
    tokens as eager, and a second call reuses the graph. The one inductor compile of this file (seconds)."""
    from posenc.models.decoders import _decoder, _tuning

    assert _tuning("inductor", torch.device("cpu")) == {"options": {"cpp_wrapper": True}}
    assert _tuning("inductor", torch.device("cuda")) == {"mode": "reduce-overhead"}
    assert _tuning("aot_eager", torch.device("cuda")) == {}
    model = _model("rope")
    tokens = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(3))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    got = model.generate(tokens, 5, temperature=0, compile=True)
    assert torch.equal(got, model.generate(tokens, 5, temperature=0))
    assert torch.equal(got, model.generate(tokens, 5, temperature=0, compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert _decoder(model, 1, 9, tokens.device, True).compiled


def test_compiled_generate_sees_changes_made_between_calls() -> None:
    """Guards are skipped only within a call, after its first step: a model changed between two calls (new
    weights, another encoding) decodes like eager, never with the stale compiled step."""
    model = _model("rope")
    tokens = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(3))
    torch._dynamo.reset()
    model.generate(tokens, 6, temperature=0, compile="aot_eager")
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)  # in place: same tensors, new values
    assert torch.equal(
        model.generate(tokens, 6, temperature=0, compile="aot_eager"), _greedy_full(model, tokens, 6)
    )
    before = _greedy_full(model, tokens, 6)
    with model.positions_replaced(lambda p: posenc.NoPE()):
        want = _greedy_full(model, tokens, 6)
        assert not torch.equal(want, before)  # the change shows in the tokens
        assert torch.equal(model.generate(tokens, 6, temperature=0, compile="aot_eager"), want)


def test_compiled_decoders_of_several_models_stay_apart() -> None:
    """Each decoder compiles its own copy of the step's code. Dynamo keeps graphs per code object: shared by
    every decoder, the graphs of all models piled up on one code object (measured: one per encoding) until the
    ninth hit dynamo's recompile limit, which ``fullgraph=True`` turns into an error (the full decode bench of
    all 10 encodings did). Models alive together and used in turn give their eager tokens."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from posenc.models.decoders import _Decoder

    models = [_model(name) for name in posenc.available()]  # alive together, as in a benchmark
    tokens = torch.tensor([[5, 6, 7]])
    want = [model.generate(tokens, 4, temperature=0) for model in models]
    for _ in range(2):
        for model, expected in zip(models, want, strict=True):
            assert torch.equal(model.generate(tokens, 4, temperature=0, compile="eager"), expected)
    assert _debug_get_cache_entry_list(_Decoder._step.__code__) == []  # nothing on the shared code object


def test_overflow_and_bad_arguments_raise_before_any_work() -> None:
    model = _model("rope")
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"cache would overflow: prompt 4 \+ max_new_tokens 6 - 1 .* = 9 .*max_len=8"
    ):
        model.generate(tokens, 6, max_len=8)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(tokens, 5, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(tokens, 5, top_k=0)
    with pytest.raises(ValueError, match="left padding"):
        model.generate(tokens, 5, prompt_mask=torch.tensor([[True, True, False, True]]))
    with pytest.raises(ValueError, match="vocabulary"):
        model.generate(tokens + 300, 5)
    with pytest.raises(ValueError, match="temperature must be a finite number, got inf"):
        model.generate(tokens, 5, temperature=float("inf"))
    for eos in (256, -1):  # a row would never stop
        with pytest.raises(ValueError, match=r"eos must be a token id in \[0, 256\)"):
            model.generate(tokens, 5, eos=eos)
    for eos in (True, 2.0, "3"):  # another type: the docstring's TypeError
        with pytest.raises(TypeError, match=r"eos must be a token id \(an integer\) or None"):
            model.generate(tokens, 5, eos=eos)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_len must be an integer, got the bool True"):
        model.generate(tokens, 5, max_len=True)
    with pytest.raises(TypeError, match="max_len must be an integer, got 10.0"):
        model.generate(tokens, 5, max_len=10.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="compile must be a bool or a torch.compile backend name"):
        model.generate(tokens, 5, compile=1)  # type: ignore[arg-type]
    for name in ("bogus", ""):  # torch named a bad backend only at the first step; "" ran eagerly
        with pytest.raises(
            ValueError, match=f"compile must be True, False or a torch.compile backend name .*got '{name}'"
        ):
            model.generate(tokens, 5, compile=name)
    with pytest.raises(TypeError, match="generate: max_new_tokens must be an integer, got 2.0"):
        model.generate(tokens, 2.0)  # type: ignore[arg-type]
    for bad in (tokens.bool(), tokens.float()):  # bool ids were read as 0 and 1
        with pytest.raises(TypeError, match=f"tokens must be an integer tensor .*got {bad.dtype}"):
            model.generate(bad, 5)
    with pytest.raises(TypeError, match="tokens must be an integer tensor .*got list"):
        model.generate([[1, 2]], 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"tokens must hold at least one prompt \(row\), got batch=0"):
        model.generate(tokens[:0], 5)  # was a raw RuntimeError from min() of an empty tensor
    assert calls == []
    np = pytest.importorskip("numpy")  # numpy integers are integers
    got = model.generate(tokens, np.int64(3), temperature=0, top_k=np.int64(5), eos=np.int64(7))
    assert got.shape[1] <= 7
    assert model.generate(tokens, 5, max_len=8, temperature=0).shape == (
        1,
        9,
    )  # the last token is not fed back


def test_positions_past_the_encoding_limit_are_refused_before_any_work() -> None:
    """A learned table or xPos's scale range ends somewhere: generate refused it only when a step got there
    (after the prefill and many steps; compiled, an inductor index error, or for xPos NaN logits read as
    token 0)."""
    for name, options, limit in (("learned", {"max_len": 10}, 10), ("xpos", {"scale_base": 1}, 66)):
        model = TransformerLM(name, dim=32, depth=2, heads=2, position_options=options).eval()
        assert model.max_length == limit
        calls: list[int] = []
        model.register_forward_hook(lambda *_, seen=calls: seen.append(1))
        tokens = torch.zeros(1, 6, dtype=torch.long)
        with pytest.raises(ValueError, match=f"positions below {limit} only"):
            model.generate(tokens, limit - 4)
        assert calls == []
        # positions 0 .. limit - 1 are used: the last new token (at position limit) is returned, not fed back
        assert model.generate(tokens, limit - 5, temperature=0).shape == (1, limit + 1)


def test_a_tiny_temperature_samples_the_argmax() -> None:
    """logits / 1e-45 overflowed to inf and softmax gave NaN, which multinomial refused after the prefill."""
    model = _model("rope")
    tokens = torch.randint(0, 256, (2, 5))
    greedy = model.generate(tokens, 4, temperature=0)
    for temperature in (1e-45, 1e-300, 5e-324):
        assert torch.equal(model.generate(tokens, 4, temperature=temperature), greedy)


def test_sampling_top_k_1_is_greedy_and_eos_stops() -> None:
    model = _model("rope")
    tokens = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(4))
    greedy = model.generate(tokens, 6, temperature=0)
    assert torch.equal(model.generate(tokens, 6, temperature=0.7, top_k=1), greedy)
    eos = int(greedy[0, 4])  # row 0's first new token
    out = model.generate(tokens, 6, temperature=0, eos=eos)
    assert (out[0, 4:] == eos).all()


def test_sampled_rows_are_eos_after_their_first_eos() -> None:
    """``eos``: "later tokens of that row are eos", sampling too. Greedy decoding of an untrained model repeats
    its token, so a row stayed eos by chance there (review s5: dropping the forcing went unnoticed); at
    temperature 1 the row would move on to other tokens."""
    model = _model("rope")
    tokens = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(1)
    free = model.generate(tokens, 8, temperature=1.0)
    eos = int(free[0, 4])  # row 0 ends at its first new token
    assert not (free[0, 4:] == eos).all()  # sampled on, the row does not repeat it by itself
    torch.manual_seed(1)
    out = model.generate(tokens, 8, temperature=1.0, eos=eos)
    assert out.shape == free.shape  # row 1 has not ended: all 8 steps run
    for row in out[:, 4:]:
        ends = (row == eos).nonzero().flatten()
        if len(ends):
            assert (row[int(ends[0]) :] == eos).all()
    assert (out[0, 4:] == eos).all()


def test_pick_samples_only_among_the_top_k() -> None:
    """``pick(top_k=k)`` samples among the k most likely tokens, for every k from 1 to the vocabulary size: a
    ``top_k`` of V - 1 could be ignored unnoticed, since only ``top_k=1`` was tested (review s5)."""
    torch.manual_seed(0)
    vocab = 5
    order = torch.randperm(vocab)  # token order[i] is the i-th most likely
    logits = torch.empty(vocab)
    logits[order] = -torch.arange(vocab, dtype=torch.float)
    for k in range(1, vocab + 1):
        got = set(gen.pick(logits.expand(4000, -1), 1.0, k).tolist())
        assert got == set(order[:k].tolist()), k  # (each of the k has probability >= 1/86: all are drawn)


def test_on_token_sees_every_new_token_as_it_is_picked() -> None:
    """Streaming: the callback gets each step's tokens (B,) in order, before the next step runs, and together they
    are the new part of the result (eos-filled rows included); compiled the same."""
    model = _model("rope")
    tokens = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(5))
    for options in (
        {},
        {"compile": "aot_eager"},
        {"eos": int(model.generate(tokens, 1, temperature=0)[0, 4])},
    ):
        seen: list[torch.Tensor] = []
        out = model.generate(tokens, 6, temperature=0, on_token=seen.append, **options)
        assert all(t.shape == (2,) and t.dtype == torch.long for t in seen)
        assert torch.equal(torch.stack(seen, dim=-1), out[:, 4:])

    class Enough(Exception):
        pass

    def stop_at_two(t: torch.Tensor) -> None:  # a reader that leaves (a closed pipe) ends the call there
        seen.append(t)
        if len(seen) == 2:
            raise Enough

    seen = []
    with pytest.raises(Enough):
        model.generate(tokens, 6, temperature=0, on_token=stop_at_two)
    assert len(seen) == 2
    assert model.generate(tokens, 2).shape == (2, 6)  # the call's lock was released
    with pytest.raises(TypeError, match="on_token must be a callable"):
        model.generate(tokens, 2, on_token="print")


def test_autocast_and_inference_mode_calls_mix_with_plain_ones() -> None:
    """A decoder's caches hold one dtype and one kind of tensor: a call under autocast (bf16 keys) or
    inference_mode (inference tensors) and a plain call each get their own, in either order (both used to raise
    in the second call)."""
    model = _model("rope")
    tokens = torch.randint(0, 256, (1, 5))
    plain = model.generate(tokens, 4, temperature=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.generate(tokens, 4, temperature=0)
    with torch.inference_mode():
        assert torch.equal(model.generate(tokens, 4, temperature=0), plain)
    assert torch.equal(model.generate(tokens, 4, temperature=0), plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.generate(tokens, 4, temperature=0), mixed)
    model = _model("rope")  # the other order: the inference-mode and autocast decoders made first
    with torch.inference_mode():
        assert torch.equal(model.generate(tokens, 4, temperature=0), plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.generate(tokens, 4, temperature=0), mixed)
    assert torch.equal(model.generate(tokens, 4, temperature=0), plain)


def test_a_padded_call_leaves_no_padding_to_the_next_call() -> None:
    """A decoder is reused by calls with the same batch and ``max_len``: each prefill resets its padding mask, so
    a short unpadded prompt after a long left-padded one decodes as on a fresh copy of the model (review s5: the
    old padding slots, written by new tokens, could stay hidden)."""
    import copy

    model = _model("rope")
    with torch.no_grad():  # weights of std 1: the outputs depend on the context (at init they hardly do)
        for w in model.parameters():
            w.normal_(generator=torch.Generator().manual_seed(w.numel()))
    fresh = copy.deepcopy(model)
    g = torch.Generator().manual_seed(6)
    long, short = torch.randint(0, 256, (2, 8), generator=g), torch.randint(0, 256, (2, 3), generator=g)
    pad = torch.ones(2, 8, dtype=torch.bool)
    pad[1, :6] = False  # row 1: six padding slots
    model.generate(long, 4, temperature=0, prompt_mask=pad, max_len=16)
    assert len(kept_decoders(model)) == 1
    got = model.generate(short, 10, temperature=0, max_len=16)
    assert len(kept_decoders(model)) == 1  # the same decoder
    assert torch.equal(got, fresh.generate(short, 10, temperature=0, max_len=16))


def test_decoders_live_with_the_model_and_stay_few() -> None:
    """A module-level map kept every model that ever called generate alive (its decoders refer to it), with
    one decoder and its caches per (batch, length) ever used. Now they sit on the model (not in its state_dict,
    not copied or pickled), the least recently used dropped past KEEP_DECODERS, and go with the model."""
    import copy
    import gc
    import pickle
    import weakref

    from posenc.models.decoders import KEEP_DECODERS

    for compile in (False, "eager"):
        model = _model("rope")
        for batch in (1, 2, 3):
            for prompt in (2, 3, 4):
                tokens = torch.randint(0, 256, (batch, prompt))
                model.generate(tokens, 3, temperature=0, compile=compile)
                assert 1 <= len(kept_decoders(model)) <= KEEP_DECODERS
        assert len(kept_decoders(model)) == KEEP_DECODERS
        assert kept_decoders(model)[-1].valid.shape == (3, 6)  # the latest call's decoder is kept
        assert not any("decoder" in name for name in model.state_dict())
        twin = copy.deepcopy(model)
        assert kept_decoders(twin) == [] and kept_decoders(pickle.loads(pickle.dumps(model))) == []
        tokens = torch.randint(0, 256, (2, 4))
        assert torch.equal(twin.generate(tokens, 3, temperature=0), model.generate(tokens, 3, temperature=0))
        shallow = copy.copy(model)  # shares the table object: its first call gets a table of its own
        shallow.generate(tokens, 3, temperature=0)
        assert all(dec.model is shallow for dec in kept_decoders(shallow))
        assert all(dec.model is model for dec in kept_decoders(model))
        ref, cache = weakref.ref(model), weakref.ref(kept_decoders(model)[0].caches[0].k)
        del model, twin, shallow
        gc.collect()
        assert ref() is None and cache() is None


def test_threads_generating_on_one_model_take_turns() -> None:
    """Two threads on one model shared its decoder's caches: one's prefill reset the other's write position
    partway (an IndexError past the cache, or wrong tokens). Calls on one model now run one at a time."""
    import threading

    model = _model("rope")
    prompts = [torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    want = [_greedy_full(model, p, 24) for p in prompts]
    errors: list[BaseException] = []
    wrong: list[int] = []
    start = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            start.wait()
            for _ in range(4):
                if not torch.equal(model.generate(prompts[i], 24, temperature=0), want[i]):
                    wrong.append(i)
        except BaseException as e:  # reported below, from the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and wrong == []


def test_generate_called_from_inside_its_own_call_raises() -> None:
    """A hook that calls generate on the same model would share the running call's caches (or, with a plain
    lock, wait for itself forever)."""
    model = _model("rope")
    tokens = torch.zeros(1, 3, dtype=torch.long)
    seen: list[BaseException] = []

    def hook(*_: object) -> None:
        if not seen:
            with pytest.raises(RuntimeError, match="from inside its own generate call") as info:
                model.generate(tokens, 2)
            seen.append(info.value)

    model.register_forward_hook(hook)
    model.generate(tokens, 2)
    assert len(seen) == 1
    assert model.generate(tokens, 2).shape == (1, 5)  # the lock was released


def test_generate_refuses_a_list_mask_and_meta_tokens_up_front() -> None:
    """A list prompt_mask raised AttributeError, meta tokens the .item() RuntimeError (fuzz #10)."""
    model = TransformerLM("alibi", vocab_size=11, dim=16, depth=1, heads=2).eval()
    tokens = torch.randint(0, 11, (2, 5))
    with pytest.raises(TypeError, match="prompt_mask must be a bool tensor shaped like tokens .* got list"):
        model.generate(tokens, 2, prompt_mask=[[True] * 5] * 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokens are on meta but the model on cpu"):
        model.generate(tokens.to("meta"), 2)


def test_a_tensor_count_of_tokens_reuses_the_decoder() -> None:
    """``max_new_tokens=torch.tensor(7)`` keyed the decoder on a tensor: a new one (and its caches) every call."""
    model, tokens = _model("rope"), torch.zeros(1, 4, dtype=torch.long)
    for _ in range(3):
        model.generate(tokens, torch.tensor(7), temperature=0)  # type: ignore[arg-type]
    assert len(kept_decoders(model)) == 1


def test_a_half_precision_xpos_model_is_refused_before_any_work() -> None:
    """xPos in float16 holds fewer positions than its float32 tables: generate refused only the float32 limit
    and failed partway through the stream."""
    model = TransformerLM("xpos", dim=32, depth=1, heads=2, position_options={"scale_base": 8}).eval().half()
    limit = model.max_length_in(torch.float16)
    assert limit is not None and model.max_length is not None and limit < model.max_length
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=f"positions below {limit} only"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), limit)
    assert calls == []


def test_an_xpos_model_under_half_precision_autocast_is_refused_before_any_work() -> None:
    """A float32 model under float16 autocast computes xPos in float16: generate checked the float32 limit and
    failed after streaming tokens (review s4)."""
    model = TransformerLM("xpos", dim=32, depth=1, heads=2, position_options={"scale_base": 8}).eval()
    limit = model.max_length_in(torch.float16)
    assert limit is not None and limit < (model.max_length_in(torch.float32) or 0)
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with (
        torch.autocast("cpu", dtype=torch.float16),
        pytest.raises(ValueError, match=f"positions below {limit} only"),
    ):
        model.generate(torch.zeros(1, 4, dtype=torch.long), limit)
    assert calls == []


def test_autocast_limits_only_float32_models() -> None:
    """Autocast casts float32 operands only: a float64 xPos model under float16 autocast computes in float64 and
    keeps its float64 limit (review s4: it was refused at the float16 one)."""
    from posenc.models.generate import _compute_dtype

    model = TransformerLM("xpos", dim=32, depth=1, heads=2, position_options={"scale_base": 8}).eval()
    cpu = torch.device("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        assert _compute_dtype(model, cpu) == torch.float16
        assert _compute_dtype(model.double(), cpu) == torch.float64
