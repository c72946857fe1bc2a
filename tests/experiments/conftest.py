"""A tiny deterministic text corpus for the experiment tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = "def return self value index token position rotary window length train test long short for in if else".split()


def write_corpus(root: Path, files: int = 30, lines: int = 40, seed: int = 0) -> Path:
    """``files`` small Python-like text files under ``root`` (about 1 KB each)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        text = "\n".join(
            "    " * rng.randrange(3) + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 7)))
            for _ in range(lines)
        )
        (root / f"mod_{i:02d}.py").write_text(text + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))
