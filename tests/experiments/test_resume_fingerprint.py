"""Every configuration field in turn makes a resume refuse (issue #12): a field left out of the fingerprint
would let a rerun with other settings resume silently, e.g. changed evaluation lengths with the same longest
one leaving perplexities missing."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest

import posenc.experiments.compare as compare
from posenc.experiments.compare import CompareConfig
from posenc.experiments.train import TrainConfig

from .conftest import write_corpus


class Started(Exception):
    """Raised instead of training: the configuration check has passed."""


def changed(name: str, value: object, other_data: str) -> object:
    """Another valid value for the field ``name``."""
    if name == "multiples":
        assert isinstance(value, tuple)
        return tuple(m for m in value if m != 2)  # same longest length, one length fewer
    if name == "eval_windows":
        return 1
    if name == "data":
        return other_data
    if name == "precision":
        return "bf16" if value == "fp32" else "fp32"
    if name == "eval_bytes" and value is None:
        return 64
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value * 2 if value else 1
    if isinstance(value, float):
        return value / 2
    raise AssertionError(f"no changed value for {name}={value!r}: teach this test about the new field")


def all_changes(cfg: CompareConfig, other_data: str) -> list[tuple[str, CompareConfig]]:
    out = []
    for f in fields(TrainConfig):
        if f.name == "seed":  # seeds pick (encoding, seed) pairs: another seed is a new pair, not a refusal
            continue
        value = changed(f.name, getattr(cfg.train, f.name), other_data)
        out.append((f.name, replace(cfg, train=replace(cfg.train, **{f.name: value}))))
    for f in fields(CompareConfig):
        if f.name not in ("train", "seeds", "preset"):  # preset: only the name of the values compared here
            out.append((f.name, replace(cfg, **{f.name: changed(f.name, getattr(cfg, f.name), other_data)})))
    return out


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(*args: object) -> None:
        raise Started

    monkeypatch.setattr(compare, "run_encoding", stop)


def test_every_field_makes_a_resume_refuse(started: None, tmp_path: Path, tiny_corpus: Path) -> None:
    other = write_corpus(tmp_path / "other", seed=1)
    base = replace(CompareConfig.quick(), data=str(tiny_corpus))
    out = tmp_path / "run"
    for cfg in (base, base):  # a fresh folder, then an unchanged rerun: both go on to train
        with pytest.raises(Started):
            compare.run_compare(cfg, encodings=["none"], out=out, device="cpu", progress=False)
    changes = all_changes(base, str(other))
    assert {n for n, _ in changes} >= {"multiples", "train_len", "data", "eval_windows", "eval_bytes"}
    for name, cfg in changes:
        with pytest.raises(ValueError, match="different configuration") as info:
            compare.run_compare(cfg, encodings=["none"], out=out, device="cpu", progress=False)
        key = {"data": "data.", "eval_windows": "eval_tokens", "eval_bytes": "eval_tokens"}.get(name, name)
        key = "curve." if name.startswith("curve_") else key
        assert key in str(info.value), (name, str(info.value))


def test_a_run_scored_on_the_first_bytes_is_refused(started: None, tmp_path: Path, tiny_corpus: Path) -> None:
    """A folder from before the spread evaluation (its ``config.json`` has no ``eval_layout``: its perplexities
    were scored on the held-out text's first bytes) is refused, not mixed with rows scored on spread blocks."""
    import json

    cfg, out = replace(CompareConfig.quick(), data=str(tiny_corpus)), tmp_path / "run"
    with pytest.raises(Started):
        compare.run_compare(cfg, encodings=["none"], out=out, device="cpu", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["eval_layout"] == "spread"
    del config["eval_layout"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="eval_layout: None -> 'spread'"):
        compare.run_compare(cfg, encodings=["none"], out=out, device="cpu", progress=False)


def test_the_same_text_under_another_path_spelling_resumes() -> None:
    """``--data fdir`` then ``--data /abs/fdir``: the sha256 of the text is one, so the source path is no change."""
    from posenc.experiments.checkpoints import config_differences

    old = {"data": {"source": "fdir", "sha256": "ab", "train_bytes": 1}, "train": {"steps": 1}}
    assert config_differences(old, {**old, "data": {**old["data"], "source": "/abs/fdir"}}) == []
    other = {**old, "data": {"source": "/abs/fdir", "sha256": "cd", "train_bytes": 1}}
    assert config_differences(old, other) == [
        "data.sha256: 'ab' -> 'cd'",
        "data.source: 'fdir' -> '/abs/fdir'",
    ]
