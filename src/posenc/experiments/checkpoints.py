"""Files of an experiment run: safe writes, the configuration fingerprint a resumed run must match, and
checkpoints (``torch.save`` dicts loaded with ``weights_only=True``).

Every file is written to a unique temporary in its target folder, then renamed over the target: a run killed
mid-write leaves the old file or none, never half of one, and a link at the target is replaced, never written
through.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

#: Version of the checkpoint dict written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = 1


# -- safe writes ------------------------------------------------------------------------------------------
def _atomic(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a unique temporary beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see the module docstring)."""
    _atomic(path, lambda f: f.write(text.encode()))


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic(path, lambda f: f.write(data))


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    _atomic(path, lambda f: torch.save(obj, f))


def save_figure(fig: Any, path: Path, **kwargs: Any) -> None:
    """``fig.savefig`` to ``path`` atomically (the format from the suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    _atomic(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


# -- configuration fingerprints ---------------------------------------------------------------------------
def json_roundtrip(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists), so fingerprints compare equal after a reload."""
    return dict(json.loads(json.dumps(obj)))


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every leaf that differs between two fingerprints."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def refusal(out: Path, diffs: list[str]) -> ValueError:
    """The error for a run folder that holds a run of another configuration."""
    shown = "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
    return ValueError(
        f"{out} holds a run made with a different configuration ({shown}). Rerun with the original "
        f"settings to resume it, or pass a new --out (or delete {out}) to start over"
    )


def check_run_folder(out: Path, fp: dict[str, Any], *, write: bool) -> None:
    """Refuse ``out`` if its ``config.json`` differs from ``fp``; on a fresh folder write it (when ``write``)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (it is created if missing)")
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diffs = config_differences(old, fp)
        if diffs:
            raise refusal(out, diffs)
    elif write:
        write_text(path, json.dumps(fp, indent=2) + "\n")


# -- checkpoints --------------------------------------------------------------------------------------------
def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint dict written by :func:`save_checkpoint` (``weights_only=True``: no code runs on load).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a posenc checkpoint (wrong format version or not a dict).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of many kinds: one clear message
        raise ValueError(f"{path} is not a readable posenc checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "encoding" not in ckpt:
        raise ValueError(f"{path} is not a posenc checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def save_checkpoint(path: Path, **fields: Any) -> None:
    """Save ``fields`` (``encoding``, ``config``, ``state_dict`` ...) with the format version, atomically."""
    save_torch({"format": CHECKPOINT_FORMAT, **fields}, path)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The trained :class:`posenc.models.TransformerLM` of a checkpoint (eval mode) and the checkpoint dict.

    The model is rebuilt from the checkpoint's ``config["train"]`` (a :class:`TrainConfig`) and ``encoding``.
    """
    from .train import TrainConfig, build_model

    ckpt = load_checkpoint(path)
    train = ckpt.get("config", {}).get("train")
    if not isinstance(train, dict):
        raise ValueError(f"{path} has no training configuration to rebuild its model from")
    model = build_model(str(ckpt["encoding"]), TrainConfig(**train))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt
