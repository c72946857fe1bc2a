"""Configuration fingerprints: what a resumed run must match, the differences a refusal lists (each with the flag
that sets it, :data:`FLAGS`), and the refusals themselves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def json_roundtrip(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists), so fingerprints compare equal after a reload."""
    return dict(json.loads(json.dumps(obj)))


#: The flag that sets a fingerprint key on the command line (the key, or its first part: "data" covers
#: data.sha256 ...), and the commands that have it; the one place refusals take flag names from. Keys set only by a
#: preset, --quick or a library call (multiples, curve, weight_decay ...) are not here and are shown as they are.
FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train.train_len": ("--train-len", ("compare", "tasks")),
    "train.steps": ("--steps", ("compare", "tasks")),
    "train.dim": ("--dim", ("compare",)),
    "train.depth": ("--depth", ("compare",)),
    "train.heads": ("--heads", ("compare",)),
    "train.batch_size": ("--batch-size", ("compare",)),
    "train.lr": ("--lr", ("compare",)),
    "train.warmup_fraction": ("--warmup", ("compare",)),
    "train.compile": ("--compile", ("compare",)),
    "train.precision": ("--precision", ("compare",)),
    "eval_tokens": ("--eval-bytes", ("compare",)),
    "data": ("--data", ("compare",)),
}
#: What sets a flagged key besides its flag, per command (a preset, or --quick, picks every value its flags
#: override): a refusal names both, since it cannot tell which one the user changed (review s7).
_PRESETS = {"compare": "--preset/--quick", "tasks": "--quick"}
#: Keys recorded as the run resolved their flag, not as given (``--precision auto`` is recorded as fp32 or bf16).
_RESOLVED = frozenset({"train.precision"})
#: Keys whose value follows from other keys too: the bytes scored are whole blocks of 16L that the held-out text
#: can hold, so they change with the training length and the text even where --eval-bytes did not.
_FOLLOWS = {"eval_tokens": ("train.train_len", "data")}


def _leaf_differences(
    old: dict[str, Any], new: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every leaf that differs (see :func:`config_differences`), sorted by key."""
    diffs = []
    same_text = old.get("sha256") is not None and old.get("sha256") == new.get("sha256")
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "source" and same_text:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _leaf_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append((f"{prefix}{key}", a, b))
    return diffs


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every leaf that differs between two fingerprints. A text's ``source`` (the path as
    given) does not count where its ``sha256`` is the same: ``--data fdir`` and ``--data /abs/fdir`` are one text."""
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in _leaf_differences(old, new, prefix)]


def flag_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """:func:`config_differences` of two run fingerprints for a refusal: each key with the flag that sets it in
    the command that made ``new`` (:data:`FLAGS`), ``--steps (train.steps): 60 -> 50``; a key that follows from
    another one that differs too says so: ``--eval-bytes (eval_tokens, follows from --train-len too): 512 -> 1024``."""
    command = _kind(new) or _kind(old)
    diffs = _one_data_entry(_leaf_differences(old, new))
    changed = {key.split(".", 1)[0] for key, _, _ in diffs} | {key for key, _, _ in diffs}
    return [f"{_flagged(key, command, changed)}: {a!r} -> {b!r}" for key, a, b in diffs]


def _one_data_entry(diffs: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """``diffs`` with the text's fields (``data.*``: digest, sizes, split, source) as one entry, its digest where it
    differs: other text changes all of them, and five entries hid the rest of a refusal (review s7)."""
    data = [d for d in diffs if d[0].startswith("data.")]
    if len(data) < 2:
        return diffs
    first = next((d for d in data if d[0] == "data.sha256"), data[0])
    rest = [d for d in diffs if not d[0].startswith("data.")]
    return sorted([*rest, (f"{first[0]}, and {len(data) - 1} more of data", first[1], first[2])])


def _flagged(key: str, command: str | None, changed: set[str]) -> str:
    """``key`` as a refusal shows it: ``--flag (key)`` where ``command`` has a flag for it, else ``key``; with what
    it also follows from among the ``changed`` keys (and their first parts)."""
    notes = ["as resolved"] if key in _RESOLVED else []
    causes = [_flag(k, command) or k for k in _FOLLOWS.get(key, ()) if k in changed]
    notes += [f"follows from {' and '.join(causes)} too"] if causes else []
    flag = _flag(key, command)
    if flag is None:
        return f"{key} ({', '.join(notes)})" if notes else key
    if command in _PRESETS and not key.startswith("data"):
        flag = f"{flag} or {_PRESETS[command]}"
    return f"{flag} ({', '.join([key, *notes])})"


def _flag(key: str, command: str | None) -> str | None:
    """The flag of ``command`` that sets ``key`` (:data:`FLAGS`), or None."""
    flag, commands = FLAGS.get(key) or FLAGS.get(key.split(".", 1)[0]) or ("", ())
    return flag if command in commands else None


def _shown(diffs: list[str]) -> str:
    return "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")


def refusal(out: Path, diffs: list[str]) -> ValueError:
    """The error for a run folder that holds a run of another configuration."""
    shown = _shown(diffs)
    return ValueError(
        f"{out} holds a run made with a different configuration ({shown}). Rerun with the original "
        f"settings to resume it, or pass a new --out (or delete {out}) to start over"
    )


def checkpoint_refusal(path: Path, diffs: list[str], what: str) -> ValueError:
    """The error for one checkpoint that does not belong to its run folder (copied from another run, or of
    another model): that file is named, not the folder."""
    return ValueError(
        f"{path} was not made by this run ({_shown(diffs)}); delete it and rerun to {what} (the other "
        "checkpoints are kept)"
    )


def check_same_kind(out: Path, old: dict[str, Any], fp: dict[str, Any]) -> None:
    """Refuse a folder holding the other command's run (every field would differ: name the real mistake)."""
    was, now = _kind(old), _kind(fp)
    if was and now and was != now:
        raise ValueError(f"--out {out} holds a posenc {was} run, not a posenc {now} one; pass another --out")


def _kind(fp: dict[str, Any]) -> str | None:
    """Which command wrote a run fingerprint: "compare" (it records its evaluation layout), "tasks" (its needle
    depths), or None."""
    return "compare" if "eval_layout" in fp else "tasks" if "depths" in fp else None
