"""Byte-level text corpora for ``posenc compare``: the Python standard library by default, or the user's text.

The split into training and validation text is deterministic: a file belongs to validation when the SHA-256 of
its path (relative to the corpus root, ``/``-separated) falls in the first ``val_fraction`` of the hash range.
Within each split files are read in hash order (a fixed shuffle of the sorted paths), so a byte cap keeps a
deterministic, varied subset rather than the alphabetically first modules. A single file, or a folder whose files
all land on one side, is split by position instead: the last ``val_fraction`` of its bytes is validation.

Tokens are bytes (``0..255``), stored as ``uint8``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sysconfig
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: Folders under the standard library that are not the standard library.
_NOT_STDLIB = frozenset({"site-packages", "dist-packages", "__pycache__"})
#: Files are joined with this separator (a blank line) so no token pair spans two files unannounced.
_SEPARATOR = b"\n\n"
#: Bytes sniffed to tell a binary file (it holds a NUL byte) from text.
_SNIFF = 4096


@dataclass(frozen=True)
class Corpus:
    """Training and validation bytes of one corpus.

    Attributes:
        train: ``(N_train,)`` uint8 tokens.
        val: ``(N_val,)`` uint8 tokens.
        source: where the text came from (the stdlib folder or ``--data``).
        split: "by file" or "by position".
        train_files, val_files: how many files went into each side.
        digest: SHA-256 of the training bytes then the validation bytes (identifies the corpus in results).
    """

    train: Tensor
    val: Tensor
    source: str
    split: str
    train_files: int
    val_files: int
    digest: str

    def describe(self) -> dict[str, object]:
        """JSON-safe summary for results files."""
        return {
            "source": self.source,
            "split": self.split,
            "train_bytes": int(self.train.numel()),
            "val_bytes": int(self.val.numel()),
            "train_files": self.train_files,
            "val_files": self.val_files,
            "sha256": self.digest,
        }


def path_hash(relpath: str) -> float:
    """A number in ``[0, 1)`` from the SHA-256 of ``relpath``: the same on every machine and Python."""
    # surrogateescape: a file name that is not UTF-8 hashes its raw bytes (valid names are unchanged)
    return int(hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).hexdigest()[:12], 16) / 16**12


def is_validation(relpath: str, val_fraction: float) -> bool:
    """Whether the file at ``relpath`` belongs to the validation split."""
    return path_hash(relpath) < val_fraction


def stdlib_root() -> Path:
    """The running interpreter's standard library folder (``sysconfig.get_paths()["stdlib"]``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """``(relpath, path)`` of every ``.py`` file of the standard library, sorted by relpath (third-party
    ``site-packages`` / ``dist-packages`` and ``__pycache__`` excluded)."""
    root = stdlib_root() if root is None else root
    found = [
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*.py")
        if p.is_file() and not _NOT_STDLIB.intersection(p.relative_to(root).parts)
    ]
    return sorted(found)


def text_files(root: Path) -> list[tuple[str, Path]]:
    """``(relpath, path)`` of every non-hidden regular file under ``root`` that is not binary, sorted."""
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if _is_binary(p):
            continue
        found.append((rel.as_posix(), p))
    return sorted(found)


def _is_binary(path: Path) -> bool:
    """Whether ``path`` holds a NUL byte in its first bytes (text files never do)."""
    with path.open("rb") as fh:
        return b"\0" in fh.read(_SNIFF)


def load_corpus(
    path: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    min_train_tokens: int = 2,
    min_val_tokens: int = 2,
    max_train_bytes: int | None = None,
    max_val_bytes: int | None = None,
) -> Corpus:
    """Read a corpus and split it into training and validation bytes.

    Args:
        path: a text file, a folder of text files (read recursively), or None for the standard library's
            ``.py`` files of the running Python.
        val_fraction: share of files (or of bytes, for a positional split) held out for validation.
        min_train_tokens: fewest training bytes accepted (``train_len + 1`` for one training window).
        min_val_tokens: fewest validation bytes accepted (``longest evaluation length + 1``).
        max_train_bytes, max_val_bytes: stop adding files to a side once it holds this many bytes, each file
            counted with the separator after it (files are whole; the cap keeps the default corpus quick to
            read). In a positional split (one file, or every file on one side), the bytes next to the cut: the
            last ones of the training side, the first of the validation side. None reads everything.

    Raises:
        ValueError: the path does not exist, holds no text, or a split is shorter than its minimum.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if path is None:
        root = stdlib_root()
        files, source = stdlib_files(root), f"Python {_python_version()} standard library ({root})"
    else:
        root = Path(path)
        if not root.exists():
            raise ValueError(
                f"--data {str(path)!r} does not exist; give a text file or a folder of text files"
            )
        if not (root.is_file() or root.is_dir()):  # a FIFO, a device such as /dev/null: no text to read twice
            raise ValueError(
                f"--data {str(path)!r} is neither a file nor a folder; give a text file or a folder of text files"
            )
        if root.is_file() and _is_binary(root):
            raise ValueError(
                f"--data {str(path)!r} is a binary file (it holds NUL bytes); give a text file or a folder "
                "(folders skip their binary files)"
            )
        files = [(root.name, root)] if root.is_file() else text_files(root)
        source = str(root.absolute())  # (found from any folder: posenc plot --run reads it again)
    if not files:
        raise ValueError(f"no text files found in {source}; give a text file or a folder that holds some")
    if path is not None and max_train_bytes is None:
        check_corpus_size(str(path), files)
    corpus = _split(files, source, val_fraction, max_train_bytes, max_val_bytes)
    if corpus.train.numel() + corpus.val.numel() == 0:
        raise ValueError(f"the corpus at {source} is empty (no bytes in {len(files)} file(s))")
    _check_length(
        "training", corpus.train.numel(), min_train_tokens, corpus, "one training window and its targets"
    )
    _check_length(
        "validation",
        corpus.val.numel(),
        min_val_tokens,
        corpus,
        "one window of the longest evaluation length",
    )
    log.debug("corpus: %s", corpus.describe())
    return corpus


#: Peak memory while a corpus is read, per byte of its files: the bytes read, joined, copied into a tensor, and
#: the training and validation slices (measured about 3-4x; rounded up).
READ_FACTOR = 5


def check_corpus_size(path: str, files: list[tuple[str, Path]]) -> None:
    """Refuse, before reading, a ``--data`` whose files need more memory than this machine has (a process would be
    killed by the system partway, with no message): ``READ_FACTOR`` times their size."""
    from ..models.generate import device_memory  # (models imports nothing from experiments)

    total = sum(p.stat().st_size for _, p in files)
    memory = device_memory(torch.device("cpu"))
    if memory is not None and total * READ_FACTOR > memory:
        raise ValueError(
            f"--data {path!r} holds {total / 2**30:.1f} GiB of text, read whole into memory (about "
            f"{READ_FACTOR}x that at the peak), more than this machine's {memory / 2**30:.1f} GiB; give at most "
            f"{memory / READ_FACTOR / 2**30:.1f} GiB (a file, or a folder of fewer files)"
        )


def _split(
    files: list[tuple[str, Path]],
    source: str,
    val_fraction: float,
    max_train_bytes: int | None,
    max_val_bytes: int | None,
) -> Corpus:
    val = [f for f in files if is_validation(f[0], val_fraction)]
    train = [f for f in files if not is_validation(f[0], val_fraction)]
    if val and train:
        train_bytes, n_train = _read(train, max_train_bytes)
        val_bytes, n_val = _read(val, max_val_bytes)
        return _corpus(train_bytes, val_bytes, source, "by file", n_train, n_val)
    data, n = _read(files, None)
    # the fraction as the decimal it prints as: 0.29 of 100 bytes is 29 (the float 0.29 is a hair below it: 28)
    cut = len(data) - math.floor(Fraction(repr(float(val_fraction))) * len(data))
    train_bytes, val_bytes = data[:cut], data[cut:]
    if max_train_bytes is not None:
        train_bytes = train_bytes[-max_train_bytes:]  # the bytes just before validation
    if max_val_bytes is not None:
        val_bytes = val_bytes[:max_val_bytes]
    return _corpus(train_bytes, val_bytes, source, "by position", n, n)


def _read(files: list[tuple[str, Path]], cap: int | None) -> tuple[bytes, int]:
    """Concatenate files in hash order until ``cap`` bytes; returns the bytes and the number of files used."""
    chunks: list[bytes] = []
    total = 0
    for _rel, p in sorted(files, key=lambda f: (path_hash(f[0]), f[0])):
        if cap is not None and total >= cap:
            break
        chunk = p.read_bytes()
        if not chunk:
            continue
        chunks.append(chunk)
        total += len(chunk) + len(_SEPARATOR)
    return _SEPARATOR.join(chunks), len(chunks)


def _corpus(train: bytes, val: bytes, source: str, split: str, n_train: int, n_val: int) -> Corpus:
    digest = hashlib.sha256(train + b"\0--val--\0" + val).hexdigest()
    return Corpus(_tokens(train), _tokens(val), source, split, n_train, n_val, digest)


def _tokens(data: bytes) -> Tensor:
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # (N,)


def _check_length(side: str, have: int, need: int, corpus: Corpus, what: str) -> None:
    if have < need:
        raise ValueError(
            f"the {side} split of {corpus.source} has {have} bytes (split {corpus.split}), but at least {need} "
            f"are needed ({what} plus its next token); give more text with --data or a smaller --train-len"
        )


def _python_version() -> str:
    import platform

    return platform.python_version()
