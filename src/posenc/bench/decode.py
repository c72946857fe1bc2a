"""The ``decode`` suite: what positions cost per generated token (issue #10).

Three groups, each with its baseline timed round-robin in the same run, written row by row as timed (a
failing encoding is a row of status "error"):

* ``rope call``: ``posenc.RoPE(128)(q, k, positions)`` at a decode shape (q ``(1, 32, 1, 128)``, k
  ``(1, 8, 1, 128)``, position 1000) against transformers' ``apply_rotary_pos_emb`` given its cos/sin, and
  a copy of q and k (the floor). Goal: ``<= 1.5x`` transformers on CPU.
* ``decode step``: one decode step of a 4-layer, dim-256 :class:`TransformerLM` after 256 cached tokens, per
  encoding, as :func:`posenc.models.generate.generate` runs it (eager steps inside one
  :class:`posenc.DecodeSession`, as generate's loop): eager (all models in turns against ``none``, and
  against ``none`` with the two alone in the turns, ``x none (paired)``), then compiled (``decode step,
  compiled``: one row per encoding, timed in turns with ``none``'s compiled step). Goal: ``rope/none <= 1.05``,
  every encoding ``<= 1.15x none``.
* ``generate``: tokens/s of greedy ``generate`` eager and compiled (the compiled tokens are checked equal to
  the eager ones first), ratio compiled/eager (goal ``>= 2``), and transformers' ``LlamaForCausalLM`` of the
  same size with a static cache as the anchor. Compiling costs tens of seconds per encoding on a small CPU,
  so ``--quick`` compiles only the encodings of families ``none`` and ``rotary``; each model's step is
  compiled once and serves both groups.

On CUDA the compiled step runs with ``mode="reduce-overhead"``; the ``cuda graph`` column says whether inductor
turned it into a CUDA graph (it counts the graphs it skips).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial

import torch
from torch import Tensor

import posenc

from ..models import TransformerLM
from ..models.decoders import _decoder
from ..session import DecodeSession
from .runner import error_note, synchronize, time_round_robin
from .suites import Row, register_suite

DIM, DEPTH, HEADS, CACHED = 256, 4, 4, 256


def _rope_call(device: str, quick: bool) -> list[Row]:
    q, k = torch.randn(1, 32, 1, 128, device=device), torch.randn(1, 8, 1, 128, device=device)
    pos = torch.tensor([[1000]], device=device)
    rope = posenc.RoPE(128).to(device)
    fns: dict[str, Callable[[], object]] = {
        "posenc RoPE": lambda: rope(q, k, pos),
        "copy q, k": lambda: (q.clone(), k.clone()),
    }
    if importlib.util.find_spec("transformers") is not None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = (torch.cat((t, t), dim=-1) for t in rope.cos_sin(1, pos, q.device))  # (1, 1, 1, 128)
        fns["transformers apply_rotary_pos_emb"] = lambda: apply_rotary_pos_emb(q, k, cos, sin)
    errors: dict[str, str] = {}
    times = time_round_robin(_batched(fns, 200), device, repeats=5 if quick else 20, errors=errors)
    base = times.get("transformers apply_rotary_pos_emb")
    rows: list[Row] = []
    for name in fns:
        row: Row = {"group": "rope call", "name": name}
        if name in times:
            row.update(
                {
                    "us": times[name] / 200 * 1e6,
                    "x transformers": None if base is None else times[name] / base,
                }
            )
        else:  # a call that raised (a kernel that does not compile on this card): its row says why
            row["status"], _, row["note"] = errors[name].partition(": ")
        rows.append(row)
    return rows


def _batched(fns: dict[str, Callable[[], object]], n: int) -> dict[str, Callable[[], object]]:
    """Each function repeated ``n`` times per timed call (microsecond work, millisecond timer)."""

    def rep(f: Callable[[], object]) -> Callable[[], object]:
        return lambda: [f() for _ in range(n)]

    return {name: rep(f) for name, f in fns.items()}


def _model(name: str, device: str) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(name, dim=DIM, depth=DEPTH, heads=HEADS).to(device).eval()


def _compiles(name: str, quick: bool) -> bool:
    """Whether the compiled rows are timed for this encoding (all of them unless ``quick``)."""
    return not quick or posenc.encoding_class(name).family in ("none", "rotary")


def _step_fn(model: TransformerLM, device: str, compile: bool | str = False) -> Callable[[], object]:
    """One decode step after ``CACHED`` tokens, rewound before each call (so it can repeat). Compiled, it runs as
    the later steps of a ``generate`` call do: guards checked once (here, at the prefill's first step), then
    trusted."""
    dec = _decoder(model, 1, CACHED + 1, torch.device(device), compile)
    tokens = torch.randint(0, 256, (1, CACHED), device=device)
    positions = torch.arange(CACHED, device=device).unsqueeze(0)
    with torch.no_grad():
        dec.prefill(tokens, positions, torch.ones_like(tokens, dtype=torch.bool))
    # the token with the strides generate feeds (dynamo guards them): a slice of `tokens` would recompile
    tok = tokens[:, -1:].clone(memory_format=torch.contiguous_format)
    pos = positions[:, -1:] + 1

    def step() -> object:
        for c in dec.caches:
            assert c.index is not None
            c.index.fill_(CACHED)
        with torch.no_grad(), dec.trusted():
            return dec.step(tok, pos)

    with torch.no_grad():
        dec.step(tok, pos)  # compiles (and checks the guards) outside the trusted stance
    return step


def _paired_ratio(fns: Mapping[str, Callable[[], object]], name: str, device: str, quick: bool) -> float:
    """``name``'s eager step over ``none``'s, the two alone in the rounds (two steps each per turn): the other
    models' turns do not evict their weights between them, so this is the steadier of the two figures."""
    pair = time_round_robin(
        _batched({"none": fns["none"], name: fns[name]}, 2), device, repeats=5 if quick else 150
    )
    return pair[name] / pair["none"]


def _cudagraph_skips() -> int:
    """Inductor's count of compiled graphs it did not turn into CUDA graphs (see ``cudagraph_utils``)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _decode_steps(models: dict[str, TransformerLM], device: str, quick: bool) -> list[Row]:
    """The eager step of every encoding, in turns, against ``none``'s (and paired with it alone); an encoding
    whose step raises is a row of status "error"."""
    errors: dict[str, str] = {}
    fns: dict[str, Callable[[], object]] = {}
    for name, model in models.items():
        try:
            fns[name] = _step_fn(model, device)
        except Exception as err:  # noqa: BLE001 - this encoding's row, the others still run
            errors[name] = error_note(err)
    with DecodeSession(CACHED + 1):  # as generate's loop runs its steps (tables kept for the session)
        times = time_round_robin(_batched(fns, 5), device, repeats=5 if quick else 20, errors=errors)
        paired = {
            name: _paired_ratio(fns, name, device, quick)
            for name in times
            if name != "none" and "none" in times
        }
    rows: list[Row] = []
    for name in models:
        row: Row = {"group": "decode step", "name": name}
        if name in times:
            none = times.get("none")
            row.update({"ms": times[name] / 5 * 1e3, "x none": None if none is None else times[name] / none})
            row["x none (paired)"] = paired.get(name, 1.0 if name == "none" else None)
        else:
            row["status"], _, row["note"] = errors[name].partition(": ")
        rows.append(row)
    return rows


def _compiled_steps(models: dict[str, TransformerLM], device: str, quick: bool) -> Iterator[Row]:
    """The compiled step of each encoding (``none`` first), timed in turns with ``none``'s; one row per
    encoding, yielded as it is timed (a compile costs seconds to tens of seconds), a failure its row's
    status."""
    base: Callable[[], object] | None = None
    for name, model in models.items():
        if not _compiles(name, quick):
            continue
        row: Row = {"group": "decode step, compiled", "name": name, "status": "ok"}
        try:
            skips = _cudagraph_skips()
            step = _step_fn(model, device, True)
            graphed = _cudagraph_skips() == skips
        except Exception as err:  # noqa: BLE001 - this encoding's row, the others still run
            row["status"], _, row["note"] = error_note(err).partition(": ")
            yield row
            continue
        base = step if base is None and name == "none" else base
        fns = {name: step} if base is None or name == "none" else {"none": base, name: step}
        errors: dict[str, str] = {}
        times = time_round_robin(_batched(fns, 5), device, repeats=5 if quick else 20, errors=errors)
        if name in times:
            row["compiled ms"] = times[name] / 5 * 1e3
            row["compiled x none"] = times[name] / times["none"] if "none" in times else None
            if name != "none" and "none" in times:  # the ratio's denominator: none timed in these rounds
                row["none ms (same rounds)"] = times["none"] / 5 * 1e3
        else:
            row["status"], _, row["note"] = errors[name].partition(": ")
        if device.startswith("cuda"):  # compiled with mode="reduce-overhead": replayed as a CUDA graph?
            row["cuda graph"] = "yes" if graphed else "no (inductor skipped it)"
        yield row


def _tokens_per_s(
    fns: Mapping[str, Callable[[], Tensor]], n: int, device: str, repeats: int
) -> dict[str, float]:
    """Tokens/s of each ``generate`` call (``n`` new tokens), median over ``repeats`` round-robin rounds (so the
    rows share the machine's load) after one warm-up call each (compilation). Every call must give the first
    call's tokens: a compiled path that decodes differently is an error, not a figure."""
    want = None
    for name, fn in fns.items():
        got = fn()
        if want is None:
            want = got
        elif not torch.equal(got, want):
            raise RuntimeError(f"decode bench: {name} generate gave other tokens than {next(iter(fns))}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: n / statistics.median(ts) for name, ts in times.items()}


def _generate(models: dict[str, TransformerLM], device: str, quick: bool) -> Iterator[Row]:
    n = 32 if quick else 128
    prompt = torch.randint(0, 256, (1, 16), device=device)
    for name, model in models.items():
        # the decode-step group's cache length, so the compiled step is the one compiled there
        run = partial(model.generate, prompt, n, temperature=0, max_len=CACHED + 1)
        fns = {"eager": run}
        if _compiles(name, quick):
            fns["compiled"] = partial(run, compile=True)
        row: Row = {"group": "generate", "name": name, "status": "ok"}
        try:
            tps = _tokens_per_s(fns, n, device, repeats=1 if quick else 5)
        except Exception as err:  # noqa: BLE001 - this encoding's row (other tokens included), the rest run
            row["status"], _, row["note"] = error_note(err).partition(": ")
            yield row
            continue
        row["eager tok/s"] = tps["eager"]
        if "compiled" in tps:
            row.update(
                {"compiled tok/s": tps["compiled"], "compiled / eager": tps["compiled"] / tps["eager"]}
            )
        yield row
    try:
        yield from _llama_anchor(prompt, n, device, repeats=1 if quick else 5)
    except Exception as err:  # noqa: BLE001 - the anchor's row
        status, _, note = error_note(err).partition(": ")
        yield {"group": "generate", "name": "transformers Llama", "status": status, "note": note}


def _llama_anchor(prompt: Tensor, n: int, device: str, repeats: int) -> list[Row]:
    """transformers' LlamaForCausalLM of the same size, greedy, static cache (and the default one)."""
    if importlib.util.find_spec("transformers") is None:
        return [{"group": "generate", "name": "transformers Llama", "eager tok/s": "not installed"}]
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=DIM,
        intermediate_size=4 * DIM,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config).to(device).eval()  # type: ignore[arg-type]
    common = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}
    fns = {
        f"transformers Llama ({cache} cache)": partial(llama.generate, prompt, **common, **extra)  # type: ignore[operator]
        for cache, extra in (("dynamic", {}), ("static", {"cache_implementation": "static"}))
    }
    tps = _tokens_per_s(fns, n, device, repeats)
    return [{"group": "generate", "name": name, "eager tok/s": t} for name, t in tps.items()]


@register_suite("decode")
def decode_suite(quick: bool, device: str) -> Iterator[Row]:
    """Rows of the groups above, in this order: the RoPE call, the eager steps, each compiled step, each
    encoding's ``generate``, the Llama anchor; each written as it is timed (a compile is seconds on CUDA too,
    and ``make gpu-check`` gives this suite a minute), a failing encoding a row of status "error"."""
    yield from _rope_call(device, quick)
    models = {name: _model(name, device) for name in posenc.available()}
    yield from _decode_steps(models, device, quick)
    yield from _compiled_steps(models, device, quick)
    yield from _generate(models, device, quick)
