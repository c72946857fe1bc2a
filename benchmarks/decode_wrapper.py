"""Compiled decode step on a CPU: inductor's C++ wrapper (``generate(compile=True)``) against its Python one.

For each encoding, three decoders of the decode bench's model (4 layers, dim 256, 4 heads) take turns in one
process: eager, compiled with the Python wrapper, compiled with the C++ wrapper (what ``compile=True`` uses on a
CPU, see ``posenc.models.generate._tuning``). Each runs greedy decoding of 128 tokens after a 16-token prompt as
``generate`` does (guards checked on the first step only); the median of ``--rounds`` rounds gives tokens/s.
All three must give the same tokens.

Usage: ``python benchmarks/decode_wrapper.py [--encodings rope,alibi] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any

import torch

import posenc
from posenc.bench.decode import CACHED, _model
from posenc.models.generate import _Decoder, _own_code, pick

PROMPT, NEW = 16, 128


def _decoder(model: posenc.models.TransformerLM, options: dict[str, Any] | None) -> _Decoder:
    dec = _Decoder(model, 1, CACHED + 1, torch.device("cpu"), False)
    if options is not None:  # the compiled step as generate builds it, with the wrapper chosen here
        dec.compiled = True
        dec.step = torch.compile(_own_code(dec._step), fullgraph=True, dynamic=False, options=options)
    return dec


@torch.no_grad()
def _greedy(dec: _Decoder, prompt: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(PROMPT).unsqueeze(0)
    nxt = pick(dec.prefill(prompt, positions, torch.ones_like(prompt, dtype=torch.bool)), 0, None)
    pos, out = positions[:, -1:] + 1, [nxt]
    for i in range(NEW - 1):
        with contextlib.nullcontext() if i == 0 else dec.trusted():
            logits = dec.step(nxt.unsqueeze(-1), pos)
        nxt = pick(logits, 0, None)
        out.append(nxt)
        pos = pos + 1
    return torch.stack(out, dim=-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encodings", default=",".join(posenc.available()))
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    prompt = torch.randint(0, 256, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    print(
        "| encoding | eager tok/s | Python wrapper tok/s (÷ eager) | C++ wrapper tok/s (÷ eager) | C++ ÷ Python |"
    )
    print("|---|---|---|---|---|")
    for name in args.encodings.split(","):
        model = _model(name, "cpu")
        decs = {"eager": None, "python": {}, "cpp": {"cpp_wrapper": True}}
        built = {k: _decoder(model, o) for k, o in decs.items()}
        want = _greedy(built["eager"], prompt)
        for k, dec in built.items():
            if not torch.equal(_greedy(dec, prompt), want):
                raise SystemExit(f"{name}: the {k} decoder gave other tokens than eager")
        times: dict[str, list[float]] = {k: [] for k in built}
        for _ in range(args.rounds):
            for k, dec in built.items():
                start = time.perf_counter()
                _greedy(dec, prompt)
                times[k].append(time.perf_counter() - start)
        tps = {k: NEW / statistics.median(v) for k, v in times.items()}
        e, py, cpp = tps["eager"], tps["python"], tps["cpp"]
        print(f"| {name} | {e:.0f} | {py:.0f} ({py / e:.2f}) | {cpp:.0f} ({cpp / e:.2f}) | {cpp / py:.2f} |")


if __name__ == "__main__":
    main()
