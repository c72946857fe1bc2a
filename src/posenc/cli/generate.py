"""``posenc generate``: sample bytes from a model trained by ``posenc compare``."""

from __future__ import annotations

import argparse
import os
import sys

from .paths import path_arg


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("generate", help="continue a prompt with a trained checkpoint (bytes in, bytes out)")
    p.add_argument("--checkpoint", type=path_arg, required=True, help="a .pt written by posenc compare")
    p.add_argument(
        "--prompt",
        type=str,
        required=True,
        help="text to continue: its exact bytes as the shell passed them (UTF-8 for text)",
    )
    p.add_argument("--tokens", type=int, default=200, help="bytes to generate (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely bytes")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for sampling: an integer in [-2**63, 2**64 - 1], what torch.manual_seed takes "
        "(default 0)",
    )
    p.add_argument("--scaling", type=str, default=None, help="RoPE context extension at inference, e.g. yarn")
    p.add_argument("--compile", action="store_true", help="compile the decode step (torch.compile)")
    p.add_argument("--device", type=str, default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    p.set_defaults(func=run)


def prompt_bytes(text: str) -> bytes:
    """The bytes of ``--prompt``: exactly those the shell passed (Python decoded them with the file-system
    encoding and ``surrogateescape``, which :func:`os.fsencode` undoes), so bytes that are not UTF-8 are a prompt
    too; the model reads bytes.

    Raises:
        ValueError: an empty prompt, or a string that is no bytes (a lone surrogate given from Python).
    """
    try:
        prompt = os.fsencode(text)
    except UnicodeEncodeError as err:
        bad = text[err.start]
        raise ValueError(
            f"--prompt holds {bad!r} (U+{ord(bad):04X}) at {err.start}, which no bytes encode; give text or bytes"
        ) from None
    if not prompt:
        raise ValueError("--prompt must not be empty")
    return prompt


def run(args: argparse.Namespace) -> int:
    import torch

    from ..experiments.checkpoints import load_model
    from ..experiments.dist import resolve_device
    from ..validation import check_seed

    if args.tokens < 1:
        raise ValueError(f"--tokens must be a positive number of bytes, got {args.tokens}")
    check_seed("--seed", args.seed)
    prompt = prompt_bytes(args.prompt)
    device = resolve_device(args.device)
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist")
    model, ckpt = load_model(args.checkpoint, device)
    torch.manual_seed(args.seed)
    tokens = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    options = {"temperature": args.temperature, "top_k": args.top_k, "compile": args.compile}
    if args.scaling is None:
        out = model.generate(tokens, args.tokens, **options)
    else:
        from ..experiments.evaluate import rope_extensions, rope_scaled

        methods = rope_extensions()
        if args.scaling not in methods:
            raise ValueError(f"--scaling must be one of {', '.join(sorted(methods))}, got {args.scaling!r}")
        train_len = int(ckpt["config"]["train"].get("train_len", 128))
        scaling = methods[args.scaling].extension(train_len, max(tokens.shape[1] + args.tokens, train_len))
        with rope_scaled(model, scaling) as scaled:
            out = scaled.generate(tokens, args.tokens, **options)
    sys.stdout.buffer.write(bytes(out[0, len(prompt) :].tolist()))
    sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return 0
