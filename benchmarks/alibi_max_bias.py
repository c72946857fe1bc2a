"""ALiBi in ``posenc compare``'s default run with other slopes: ``ALiBi(heads, max_bias=B)`` instead of the paper's 8.

With the demo's 4 heads the paper's slopes are 1/4, 1/16, 1/64, 1/256; ``max_bias=4`` gives 1/2, 1/4, 1/8, 1/16.
This runs ``posenc compare`` for ``alibi`` alone, in this process (``--jobs 1``), with ALiBi's training options
(:meth:`posenc.PositionEncoding.training_options`, what ``compare`` builds each model with) set to
``max_bias=B``; every other setting is the preset's, so the perplexities sit beside a ``make demo`` run's.
``--max-bias 8`` reproduces the default ``alibi`` row bit for bit. The slopes are not stored in the checkpoints (they
are recomputed from the options), so resume or add seeds to such a folder only through this script.

Usage: ``python benchmarks/alibi_max_bias.py --max-bias 4 --out runs/alibi-max-bias-4 [compare flags, e.g. --seeds 3]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import posenc
from posenc.cli import main


def run(max_bias: float, out: str, extra: list[str]) -> int:
    """``posenc compare --encodings alibi --jobs 1 --out OUT EXTRA`` with ALiBi built with ``max_bias``."""

    def options(cls: type[posenc.ALiBi], train_len: int) -> dict[str, Any]:
        return {"max_bias": max_bias}

    posenc.ALiBi.training_options = classmethod(options)  # type: ignore[method-assign,assignment]
    return main(["compare", "--encodings", "alibi", "--jobs", "1", "--out", out, *extra])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-bias", type=float, required=True, help="ALiBi's max_bias (the paper: 8)")
    parser.add_argument("--out", required=True, help="a new output folder")
    args, rest = parser.parse_known_args()
    sys.exit(run(args.max_bias, args.out, rest))
