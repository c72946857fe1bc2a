"""The ``decode`` suite: what positions cost per generated token (issue #10).

Three groups, each with its baseline timed round-robin in the same run:

* ``rope call``: ``posenc.RoPE(128)(q, k, positions)`` at a decode shape (q ``(1, 32, 1, 128)``, k
  ``(1, 8, 1, 128)``, position 1000) against transformers' ``apply_rotary_pos_emb`` given its cos/sin, and
  a copy of q and k (the floor). Goal: ``<= 1.5x`` transformers on CPU.
* ``decode step``: one eager decode step of a 4-layer, dim-256 :class:`TransformerLM` after 256 cached
  tokens, per encoding, as :func:`posenc.models.generate.generate` runs it. Goal: ``rope/none <= 1.05``,
  every encoding ``<= 1.15x none``.
* ``generate``: tokens/s of greedy ``generate`` eager and compiled (the compiled tokens are checked equal to
  the eager ones first), ratio compiled/eager (goal ``>= 2``), and transformers' ``LlamaForCausalLM`` of the
  same size with a static cache as the anchor. Compiling costs tens of seconds per encoding on a small CPU,
  so ``--quick`` compiles only the encodings of families ``none`` and ``rotary``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

import posenc

from ..models import TransformerLM
from ..models.generate import _decoder
from .runner import synchronize, time_round_robin
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
    times = time_round_robin(_batched(fns, 200), device, repeats=5 if quick else 20)
    base = times.get("transformers apply_rotary_pos_emb")
    return [
        {
            "group": "rope call",
            "name": name,
            "us": t / 200 * 1e6,
            "x transformers": None if base is None else t / base,
        }
        for name, t in times.items()
    ]


def _batched(fns: dict[str, Callable[[], object]], n: int) -> dict[str, Callable[[], object]]:
    """Each function repeated ``n`` times per timed call (microsecond work, millisecond timer)."""

    def rep(f: Callable[[], object]) -> Callable[[], object]:
        return lambda: [f() for _ in range(n)]

    return {name: rep(f) for name, f in fns.items()}


def _model(name: str, device: str) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(name, dim=DIM, depth=DEPTH, heads=HEADS).to(device).eval()


def _step_fn(model: TransformerLM, device: str, compile: bool | str = False) -> Callable[[], object]:
    """One decode step after ``CACHED`` tokens, rewound before each call (so it can repeat)."""
    dec = _decoder(model, 1, CACHED + 1, torch.device(device), compile)
    tokens = torch.randint(0, 256, (1, CACHED), device=device)
    positions = torch.arange(CACHED, device=device).unsqueeze(0)
    with torch.no_grad():
        dec.prefill(tokens, positions, torch.ones_like(tokens, dtype=torch.bool))
    tok, pos = tokens[:, -1:], positions[:, -1:] + 1

    def step() -> object:
        for c in dec.caches:
            assert c.index is not None
            c.index.fill_(CACHED)
        with torch.no_grad():
            return dec.step(tok, pos)

    return step


def _decode_steps(device: str, quick: bool) -> list[Row]:
    fns = {name: _step_fn(_model(name, device), device) for name in posenc.available()}
    times = time_round_robin(_batched(fns, 5), device, repeats=5 if quick else 20)
    base = times["none"]
    return [
        {"group": "decode step", "name": name, "ms": t / 5 * 1e3, "x none": t / base}
        for name, t in times.items()
    ]


def _tokens_per_s(fn: Callable[[], Tensor], n: int, device: str) -> tuple[float, Tensor]:
    fn()  # warm-up (compilation)
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return n / (time.perf_counter() - start), out


def _generate(device: str, quick: bool) -> list[Row]:
    n = 32 if quick else 128
    prompt = torch.randint(0, 256, (1, 16), device=device)
    rows: list[Row] = []
    for name in posenc.available():
        model = _model(name, device)
        eager, want = _tokens_per_s(partial(model.generate, prompt, n, temperature=0), n, device)
        row: Row = {"group": "generate", "name": name, "eager tok/s": eager}
        if not quick or posenc.encoding_class(name).family in ("none", "rotary"):
            compiled, got = _tokens_per_s(
                partial(model.generate, prompt, n, temperature=0, compile=True), n, device
            )
            if not torch.equal(got, want):
                raise RuntimeError(f"decode bench: compiled generate of {name} gave other tokens than eager")
            row.update({"compiled tok/s": compiled, "compiled / eager": compiled / eager})
        rows.append(row)
    rows.extend(_llama_anchor(prompt, n, device))
    return rows


def _llama_anchor(prompt: Tensor, n: int, device: str) -> list[Row]:
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
    rows: list[Row] = []
    for cache in ("dynamic", "static"):
        extra = {"cache_implementation": "static"} if cache == "static" else {}
        tps, _ = _tokens_per_s(partial(llama.generate, prompt, **common, **extra), n, device)  # type: ignore[operator]
        rows.append({"group": "generate", "name": f"transformers Llama ({cache} cache)", "eager tok/s": tps})
    return rows


@register_suite("decode")
def decode_suite(quick: bool, device: str) -> list[Row]:
    """Rows of the three groups above."""
    return _rope_call(device, quick) + _decode_steps(device, quick) + _generate(device, quick)
