"""Seeded, deterministic generators of synthetic tasks with an exact answer, as byte sequences.

Every example is ``prompt + answer``, exactly ``length`` bytes, with the answer at the end; a model is scored on
the answer bytes only (exact match: all of them right under greedy decoding). The tasks follow the papers that
test length generalization with exact answers:

* ``passkey``: a 5-digit key hidden at a chosen depth in random filler, asked for at the end (Mohtashami & Jaggi
  2023, "Landmark Attention", section 4.2; the "needle in a haystack" of YaRN and Position Interpolation).
* ``copy``: a random string of distinct symbols, then the same string (Kazemnejad et al. 2023, "The Impact of
  Positional Encoding on Length Generalization in Transformers"; Ruoss et al. 2023, "Randomized Positional
  Encodings").
* ``assoc``: key-value pairs, then one key; the answer is its value (associative recall, Ba et al. 2016; the
  "retrieval" tasks of Kazemnejad et al. 2023).

The amount of content grows with the length (more filler, a longer string, more pairs), so a longer example is a
harder instance of the same task, never the same instance padded.

Train and test never overlap: an example belongs to the test split iff the CRC-32 of its bytes is divisible by
:data:`TEST_MODULUS`, and each split's generator rejects the other's examples. Each example is drawn from its own
``random.Random`` seeded by a string naming the task, split, length, seed and index (string seeds are hashed
with SHA-512 by CPython, identically on every machine and run).
"""

from __future__ import annotations

import random
import string
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...registry import Registry

#: An example is a test example iff ``crc32(bytes) % TEST_MODULUS == 0`` (1 in 16), else a training example.
TEST_MODULUS = 16
LETTERS = string.ascii_lowercase
DIGITS = string.digits
#: The 92 symbols of ``copy``: printable ASCII without space and the task's own marks ``.`` and ``>``.
COPY_SYMBOLS = "".join(c for c in string.digits + string.ascii_letters + string.punctuation if c not in ".>")
#: The 676 two-letter keys of ``assoc``.
KEYS = [a + b for a in LETTERS for b in LETTERS]


def is_test_example(example: bytes) -> bool:
    """Whether ``example`` belongs to the test split (see the module docstring)."""
    return zlib.crc32(example) % TEST_MODULUS == 0


@dataclass(frozen=True)
class Task(ABC):
    """A task: how to draw an example of a given length and how to answer a prompt (the checker).

    Subclasses set ``name``, ``min_length`` and implement :meth:`_draw`, :meth:`answer_length` and :meth:`solve`.
    """

    name: ClassVar[str] = ""
    #: Shortest length with at least one unit of content.
    min_length: ClassVar[int] = 1

    @abstractmethod
    def answer_length(self, length: int) -> int:
        """Bytes of the answer in an example of ``length`` bytes."""

    @abstractmethod
    def solve(self, prompt: bytes) -> bytes:
        """The answer to ``prompt`` (an example without its answer), computed from the prompt alone."""

    @abstractmethod
    def _draw(self, rng: random.Random, length: int, depth: float | None) -> str:
        """The example's text (answer last), exactly ``length`` characters."""

    def check_length(self, length: int) -> None:
        if length < self.min_length:
            raise ValueError(f"task {self.name!r} needs length >= {self.min_length}, got {length}")

    def example(self, length: int, *, split: str, seed: int, index: int, depth: float | None = None) -> bytes:
        """Example ``index`` of ``split`` ("train" or "test"): ``length`` bytes, the answer last.

        ``depth`` in [0, 1] places the passkey (0: first byte of the filler, 1: just before the question); other
        tasks ignore it. None draws it at random.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.check_length(length)
        want_test = split == "test"
        depth = None if depth is None else float(depth)  # (1 and 1.0 are one depth: the same examples)
        for attempt in range(10_000):
            rng = random.Random(f"{self.name}/{split}/{length}/{seed}/{index}/{depth}/{attempt}")
            data = self._draw(rng, length, depth).encode("ascii")
            if is_test_example(data) == want_test:
                return data
        raise RuntimeError(f"no {split} example of {self.name} at length {length}")  # pragma: no cover

    def batch(
        self, length: int, count: int, *, split: str, seed: int, start: int = 0, depth: float | None = None
    ) -> Tensor:
        """``(count, length)`` int64 bytes: examples ``start .. start + count - 1`` of ``split``."""
        rows = [
            list(self.example(length, split=split, seed=seed, index=start + i, depth=depth))
            for i in range(count)
        ]
        return torch.tensor(rows, dtype=torch.long)


def _filler(rng: random.Random, n: int) -> str:
    """``n`` random lowercase letters and spaces (no digits, no punctuation)."""
    return "".join(rng.choices(LETTERS + " ", k=n))


@dataclass(frozen=True)
class Passkey(Task):
    """``filler[:p] + "#" + key + filler[p:] + "#" + key``: the 5-digit key follows the only other ``#``."""

    name: ClassVar[str] = "passkey"
    key_len: ClassVar[int] = 5
    min_length: ClassVar[int] = 2 * key_len + 2

    def answer_length(self, length: int) -> int:
        return self.key_len

    def solve(self, prompt: bytes) -> bytes:
        at = prompt.index(b"#")
        return prompt[at + 1 : at + 1 + self.key_len]

    def _draw(self, rng: random.Random, length: int, depth: float | None) -> str:
        key = "".join(rng.choices(DIGITS, k=self.key_len))
        filler = _filler(rng, length - self.min_length)
        d = rng.random() if depth is None else depth
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"depth must be in [0, 1], got {d}")
        at = round(d * len(filler))
        return filler[:at] + "#" + key + filler[at:] + "#" + key


@dataclass(frozen=True)
class Copy(Task):
    """``pad + s + ">" + s`` for a random string ``s`` of ``(length - 1) // 2`` bytes (pad: one "." when the length
    is even).

    ``s`` is a random arrangement of :data:`COPY_SYMBOLS` (92 symbols), so no symbol repeats in a string of up to
    92 bytes (every length up to 185); a longer string continues with fresh arrangements. With repeats, the byte
    after a repeated symbol depends on which occurrence is meant: a model must track its place in the string
    instead of following content. Measured with lowercase letters (26: a repeat in 58 % of the strings at
    L = 16), small models copied 82-100 % of the strings without a repeat and 48-87 % of the others, so accuracy
    at L measured the repeats, not positions; with distinct symbols, failures past L are failures to reach the
    string, which is what the task is for.
    """

    name: ClassVar[str] = "copy"
    min_length: ClassVar[int] = 3

    def answer_length(self, length: int) -> int:
        return (length - 1) // 2

    def solve(self, prompt: bytes) -> bytes:
        return prompt[: prompt.index(b">")].lstrip(b".")

    def _draw(self, rng: random.Random, length: int, depth: float | None) -> str:
        m = self.answer_length(length)
        s = ""
        while len(s) < m:
            s += "".join(rng.sample(COPY_SYMBOLS, len(COPY_SYMBOLS)))
        s = s[:m]
        return "." * (length - 2 * m - 1) + s + ">" + s


@dataclass(frozen=True)
class Assoc(Task):
    """``pad + k1 v1 k2 v2 ... + "?" + k + v``: distinct 2-letter keys, 2-digit values, pairs 4 bytes wide; the
    answer is the value of the queried key."""

    name: ClassVar[str] = "assoc"
    key_len: ClassVar[int] = 2
    value_len: ClassVar[int] = 2
    min_length: ClassVar[int] = 2 * (key_len + value_len) + 1

    def answer_length(self, length: int) -> int:
        return self.value_len

    def pairs(self, length: int) -> int:
        """Key-value pairs in an example of ``length`` bytes."""
        return (length - 1 - self.key_len - self.value_len) // (self.key_len + self.value_len)

    def check_length(self, length: int) -> None:
        super().check_length(length)
        if self.pairs(length) > len(KEYS):
            raise ValueError(f"task 'assoc' has {len(KEYS)} distinct keys; length {length} is too long")

    def solve(self, prompt: bytes) -> bytes:
        body, key = prompt.rsplit(b"?", 1)
        body = body.lstrip(b".")
        width = self.key_len + self.value_len
        for i in range(0, len(body), width):
            if body[i : i + self.key_len] == key:
                return body[i + self.key_len : i + width]
        raise ValueError(f"key {key!r} is not in the prompt")

    def _draw(self, rng: random.Random, length: int, depth: float | None) -> str:
        n = self.pairs(length)
        keys = rng.sample(KEYS, n)
        values = ["".join(rng.choices(DIGITS, k=self.value_len)) for _ in keys]
        body = "".join(k + v for k, v in zip(keys, values, strict=True))
        q = rng.randrange(n)
        pad = length - len(body) - 1 - self.key_len - self.value_len
        return "." * pad + body + "?" + keys[q] + values[q]


#: The tasks by name (one instance each).
TASKS: Registry[Task] = Registry("task")
for _task in (Passkey(), Copy(), Assoc()):
    TASKS.add(_task.name, _task)
#: The standard order of the tasks (easiest first), for tables and figures.
ORDER: tuple[str, ...] = (Passkey.name, Copy.name, Assoc.name)


def available_tasks() -> list[str]:
    """Names of the tasks, in their standard order."""
    return [n for n in ORDER if n in TASKS] + [n for n in TASKS.names() if n not in ORDER]


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        ValueError: no such task.
    """
    return TASKS.get(name)
