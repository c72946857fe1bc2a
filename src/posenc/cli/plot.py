"""``posenc plot``: pictures of the encodings as PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "plot", help="draw the encodings (sinusoidal table, RoPE decay, relative indices) as PNGs"
    )
    p.add_argument("--out", type=Path, default=Path("runs/plots"), help="output folder (default runs/plots)")
    p.add_argument("--dim", type=int, default=128, help="model width / head_dim for the pictures")
    p.add_argument("--length", type=int, default=256, help="positions in the sinusoidal heatmap")
    p.add_argument("--max-distance", type=int, default=4, help="clipping distance for the index matrix")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.checkpoints import check_out_dir, save_figure
    from ..plots import relative_index_figure, rope_decay_figure, sinusoidal_figure

    check_out_dir(args.out)
    if args.dim <= 1 or args.dim % 2:
        raise ValueError(f"--dim must be an even number >= 2, got {args.dim}")
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {
        "sinusoidal.png": sinusoidal_figure(args.length, args.dim),
        "rope_decay.png": rope_decay_figure(256, args.dim, bases=(10000.0, 500000.0)),
        "relative_index.png": relative_index_figure(12, args.max_distance),
    }
    for name, fig in figures.items():
        save_figure(fig, args.out / name)
        print(args.out / name)
    return 0
