"""Corpora: deterministic split by file, positional split, the standard library default, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posenc.experiments.data import is_validation, load_corpus, path_hash, stdlib_files


def test_split_by_file_follows_the_path_hash(tiny_corpus: Path) -> None:
    corpus = load_corpus(tiny_corpus)
    assert corpus.split == "by file"
    names = sorted(p.name for p in tiny_corpus.iterdir())
    val_names = [n for n in names if is_validation(n, 0.1)]
    assert corpus.val_files == len(val_names) and corpus.train_files == len(names) - len(val_names)
    val_text = bytes(corpus.val.tolist())
    train_text = bytes(corpus.train.tolist())
    for name in names:
        body = (tiny_corpus / name).read_bytes()
        assert (body in val_text) == (name in val_names)
        assert (body in train_text) == (name not in val_names)
    assert corpus.train.dtype == torch.uint8


def test_split_is_deterministic(tiny_corpus: Path) -> None:
    a, b = load_corpus(tiny_corpus), load_corpus(tiny_corpus)
    assert a.digest == b.digest and torch.equal(a.val, b.val)


def test_path_hash_is_stable() -> None:
    # SHA-256 based: the same number on every machine and Python (unlike hash()).
    assert path_hash("os.py") == pytest.approx(0.8509487277812795, abs=1e-15)
    assert path_hash("os.py") == path_hash("os.py") and path_hash("os.py") != path_hash("re.py")


def test_single_file_splits_by_position(tmp_path: Path) -> None:
    f = tmp_path / "book.txt"
    data = bytes(range(32, 127)) * 20
    f.write_bytes(data)
    corpus = load_corpus(f)
    assert corpus.split == "by position"
    cut = len(data) - int(len(data) * 0.1)
    assert bytes(corpus.train.tolist()) == data[:cut] and bytes(corpus.val.tolist()) == data[cut:]


@pytest.mark.parametrize(
    ("size", "val_fraction", "val_bytes"),
    [(1905, 0.1, 190), (1003, 0.25, 250), (107, 0.5, 53), (100, 0.29, 29), (100, 0.57, 57)],
)
def test_positional_split_holds_out_the_last_val_fraction_rounded_down(
    tmp_path: Path, size: int, val_fraction: float, val_bytes: int
) -> None:
    """The module docstring: "the last ``val_fraction`` of its bytes is validation", rounded down: 190.5 bytes of
    1905 at 0.1 are 190, not 191 (the split fixes the corpus digest that a resumed run must match). The fraction
    is the decimal it prints as: 0.29 of 100 bytes is 29, though ``100 * 0.29`` is 28.999999999999996."""
    f = tmp_path / "book.txt"
    data = bytes(range(32, 127)) * (size // 95 + 1)
    f.write_bytes(data[:size])
    corpus = load_corpus(f, val_fraction=val_fraction)
    assert bytes(corpus.val.tolist()) == data[size - val_bytes : size]
    assert bytes(corpus.train.tolist()) == data[: size - val_bytes]


def test_positional_split_caps_keep_the_bytes_next_to_the_cut(tmp_path: Path) -> None:
    """With a positional split, ``max_train_bytes`` keeps the training bytes just before validation and
    ``max_val_bytes`` the validation bytes just after the cut (the text on either side of it)."""
    f = tmp_path / "book.txt"
    data = bytes(range(48, 58)) * 10  # b"0123456789" * 10: the cut is at byte 90
    f.write_bytes(data)
    corpus = load_corpus(f, val_fraction=0.1, max_train_bytes=5, max_val_bytes=4)
    assert bytes(corpus.train.tolist()) == data[85:90] == b"56789"
    assert bytes(corpus.val.tolist()) == data[90:94] == b"0123"


def test_hidden_and_binary_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello world\n" * 50)
    (tmp_path / ".hidden.txt").write_text("secret\n" * 50)
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2" * 100)
    corpus = load_corpus(tmp_path)
    text = bytes(corpus.train.tolist()) + bytes(corpus.val.tolist())
    assert b"secret" not in text and b"\0\1\2" not in text and b"hello" in text


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus(tmp_path / "nope")


def test_empty_folder_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no text files"):
        load_corpus(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path / "empty.txt")


def test_too_short_for_the_longest_length(tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("x" * 500)
    with pytest.raises(ValueError, match=r"validation split .* at least 2049 .*--train-len"):
        load_corpus(tmp_path / "short.txt", min_val_tokens=2049)


def test_bad_val_fraction(tiny_corpus: Path) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        load_corpus(tiny_corpus, val_fraction=1.0)


def test_stdlib_default_is_the_standard_library() -> None:
    files = stdlib_files()
    rels = [r for r, _ in files]
    assert rels == sorted(rels) and "os.py" in rels
    assert not any("site-packages" in r or "__pycache__" in r for r in rels)
    a = load_corpus(None, max_train_bytes=50_000, max_val_bytes=10_000)
    b = load_corpus(None, max_train_bytes=50_000, max_val_bytes=10_000)
    assert a.split == "by file" and a.digest == b.digest
    assert 50_000 <= a.train.numel() < 50_000 + max(p.stat().st_size for _, p in files) + 2


def test_data_larger_than_memory_allows_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --data of many GiB was read whole: the process was killed partway, without a message."""
    f = tmp_path / "big.txt"
    f.write_bytes(b"some text\n" * 1000)  # 10,000 bytes
    monkeypatch.setattr("posenc.models.generate.device_memory", lambda device: 40_000)
    with pytest.raises(
        ValueError, match=r"--data .*big\.txt' holds 0\.0 GiB of text.*more than this machine"
    ):
        load_corpus(f)
    monkeypatch.setattr("posenc.models.generate.device_memory", lambda device: 60_000)
    assert load_corpus(f).train.numel() > 0


def test_a_cap_counts_each_file_with_its_separator(tmp_path: Path) -> None:
    """A side stops taking files once it holds ``cap`` bytes, each file counted with the separator after it: with
    10-byte files a cap of 12 (one file and its 2 bytes) takes one file, 13 takes two. The cap decides the default
    corpus, whose digest a resumed run must match."""
    from posenc.experiments.data import _read

    files = []
    for i in range(3):
        (tmp_path / f"f{i}.py").write_bytes(bytes([97 + i]) * 10)
        files.append((f"f{i}.py", tmp_path / f"f{i}.py"))
    assert [_read(files, cap)[1] for cap in (1, 10, 11, 12, 13, 24, 25, None)] == [1, 1, 1, 1, 2, 2, 3, 3]
    data, n = _read(files, None)
    assert n == 3 and len(data) == 3 * 10 + 2 * 2  # separators between files only
