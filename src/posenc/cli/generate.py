"""``posenc generate``: sample bytes from a model trained by ``posenc compare``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .output import silence_stdout
from .paths import path_arg

if TYPE_CHECKING:
    from torch import Tensor


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("generate", help="continue a prompt with a trained checkpoint (bytes in, bytes out)")
    p.add_argument(
        "--checkpoint",
        type=path_arg,
        required=True,
        help="a .pt written by posenc compare or posenc tasks, or a folder holding one",
    )
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--prompt",
        type=str,
        help="text to continue: its exact bytes as the shell passed them (UTF-8 for text)",
    )
    given.add_argument(
        "--prompt-file",
        type=path_arg,
        help="continue the bytes of this file instead ('-' for standard input): long prompts, any bytes",
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


#: The longest --prompt-file read (bytes): far past any length a byte model of this size is trained at.
MAX_PROMPT_FILE = 1 << 20


def file_bytes(path: Path) -> bytes:
    """The bytes of ``--prompt-file`` (``-``: standard input), at most :data:`MAX_PROMPT_FILE`.

    Raises:
        ValueError: nothing there, a folder, closed stdin, no bytes, or over the limit.
        OSError: a path that cannot be read (the CLI prints it in one line).
    """
    if str(path) == "-":
        if sys.stdin is None:  # (started with stdin closed: `<&-`)
            raise ValueError("--prompt-file -: standard input is closed; give a file, or pipe the prompt in")
        data = sys.stdin.buffer.read(MAX_PROMPT_FILE + 1)
    elif path.is_dir() or not path.exists():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"--prompt-file {path} {what}; give a file of the bytes to continue, or - for stdin")
    else:  # a file, a pipe, a FIFO, /dev/fd/N (`--prompt-file <(head -c 300 notes.txt)`)
        with open(path, "rb") as f:
            data = f.read(MAX_PROMPT_FILE + 1)
    if len(data) > MAX_PROMPT_FILE:
        raise ValueError(f"--prompt-file {path} holds over {MAX_PROMPT_FILE} bytes; give a shorter prompt")
    if not data:
        raise ValueError(f"--prompt-file {path} is empty; give at least one byte to continue")
    return data


def checkpoint_file(path: Path) -> Path:
    """The checkpoint ``--checkpoint`` names: the file itself, or the one ``.pt`` of a folder (an encoding's folder
    of a ``posenc compare`` run with one seed, ``runs/compare/checkpoints/rope``).

    Raises:
        ValueError: nothing at ``path``, or a folder holding no ``.pt`` or several (they are named).
    """
    if path.is_file():
        return path
    if not path.exists():
        raise ValueError(f"--checkpoint {path} does not exist; give a .pt written by posenc compare or tasks")
    if not path.is_dir():
        raise ValueError(f"--checkpoint {path} is not a file; give a .pt written by posenc compare or tasks")
    found = sorted(p.name for p in path.glob("*.pt") if p.is_file())
    if len(found) == 1:
        return path / found[0]
    if not found:
        inside = sorted((path / "checkpoints").rglob("*.pt"))  # a compare or tasks run's own folder?
        if inside:
            raise ValueError(
                f"--checkpoint {path} is a run's folder; give one of its checkpoints, e.g. {inside[0]}"
            )
        raise ValueError(f"--checkpoint {path} is a folder holding no checkpoint (.pt); give a .pt file")
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    raise ValueError(
        f"--checkpoint {path} is a folder of {len(found)} checkpoints ({shown}); give one of them"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..experiments.checkpoints import load_model
    from ..experiments.dist import resolve_device
    from ..validation import check_float, check_int, check_seed

    if args.tokens < 1:
        raise ValueError(f"--tokens must be a positive number of bytes, got {args.tokens}")
    check_seed("--seed", args.seed)
    check_float("--temperature", args.temperature, at_least=0)  # (finite: 0 is greedy)
    if args.top_k is not None:
        check_int("--top-k", args.top_k, at_least=1)
    prompt = prompt_bytes(args.prompt) if args.prompt_file is None else file_bytes(args.prompt_file)
    device = resolve_device(args.device)
    path = checkpoint_file(args.checkpoint)
    model, ckpt = load_model(path, device, hint="give a .pt written by posenc compare or posenc tasks")
    need = len(prompt) + args.tokens - 1  # (the last byte is not fed back)
    limit = model.max_length_in(model.head.weight.dtype)
    if limit is not None and need > limit:
        raise ValueError(
            f"{path}: this {ckpt['encoding']} model takes positions below {limit} only, but the prompt "
            f"({len(prompt)} bytes) + --tokens {args.tokens} - 1 = {need}; ask for fewer --tokens or give a "
            "shorter prompt"
        )
    torch.manual_seed(args.seed)
    tokens = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    if sys.stdout is None:  # (started with stdout closed: `>&-`)
        raise ValueError("standard output is closed; the bytes go there (redirect it to a file)")
    out = sys.stdout.buffer

    def emit(new: Tensor) -> None:  # each byte as it is picked, so a long run shows its progress
        out.write(bytes((int(new[0]),)))
        out.flush()

    options = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "compile": args.compile,
        "on_token": emit,
    }
    if args.compile:  # seconds to tens of seconds before the first byte: say why
        print(
            "posenc generate: compiling the decode step first (once per process)", file=sys.stderr, flush=True
        )
    try:
        _generate(model, ckpt, tokens, args, options)
        if sys.stdout.isatty():  # the prompt back on a line of its own; a file or pipe gets the bytes only
            out.write(b"\n")
        out.flush()
    except BrokenPipeError:  # the reader left (`| head -c 100`): stop quietly, as any writer into a pipe does
        silence_stdout()
        return 141  # 128 + SIGPIPE, the status of a writer that the pipe ended
    return 0


def _generate(
    model: Any, ckpt: dict[str, Any], tokens: Tensor, args: argparse.Namespace, options: Any
) -> None:
    """``model.generate`` with ``options``, under ``--scaling`` when given."""
    if args.scaling is None:
        model.generate(tokens, args.tokens, **options)
    else:
        from ..experiments.evaluate import rope_extensions, rope_scaled

        methods = rope_extensions()
        if args.scaling not in methods:
            raise ValueError(f"--scaling must be one of {', '.join(sorted(methods))}, got {args.scaling!r}")
        train_len = int(ckpt["config"]["train"].get("train_len", 128))
        longest = (
            tokens.shape[1] + args.tokens - 1
        )  # positions generate uses (the last token is not fed back)
        scaling = methods[args.scaling].extension(train_len, max(longest, train_len))
        try:
            manager = rope_scaled(model, scaling)
        except (ValueError, TypeError) as err:  # a model without RoPE layers: name the flag and the encoding
            raise ValueError(
                f"--scaling {args.scaling}: this checkpoint's encoding is {ckpt['encoding']}; {err}"
            ) from None
        with manager as scaled:
            scaled.generate(tokens, args.tokens, **options)
