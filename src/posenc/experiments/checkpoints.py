"""Files of an experiment run: safe writes, the run folder's ``config.json`` (the configuration fingerprint a
resumed run must match: :mod:`posenc.experiments.fingerprints`), and checkpoints (``torch.save`` dicts loaded with
``weights_only=True``).

Every file is written to a unique temporary in its target folder, then renamed over the target: a run killed
mid-write leaves the old file or none, never half of one, and a link at the target is replaced, never written
through (the temporary is created with ``O_EXCL``, so a link planted at its name is refused, not followed).
:func:`check_out_dir` validates an output folder before any work and :func:`run_lock` keeps two runs from
writing into one folder at once, and clears the temporaries a killed run left there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..registry import ENCODINGS
from ..validation import first_line
from .fingerprints import FLAGS as FLAGS  # (re-exported: the run files' helpers are imported from here)
from .fingerprints import check_same_kind as check_same_kind
from .fingerprints import checkpoint_refusal as checkpoint_refusal
from .fingerprints import config_differences as config_differences
from .fingerprints import flag_differences as flag_differences
from .fingerprints import json_roundtrip as json_roundtrip
from .fingerprints import refusal as refusal

log = logging.getLogger(__name__)

#: Version of the checkpoint dict written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = 1
#: The name of a temporary of :func:`_atomic`: ``mkstemp``'s prefix ``.<name>.``, its 8 random characters (lower
#: case letters, digits, ``_``) and the suffix ``.tmp``.
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


# -- safe writes ------------------------------------------------------------------------------------------
def _atomic(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a unique temporary beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # mkstemp gives 0600, which would hide results from everyone else
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


# -- output folders ---------------------------------------------------------------------------------------
def check_out_dir(out: Path, option: str = "--out", files: tuple[str, ...] = ()) -> Path:
    """Refuse an output folder that cannot be made or written (a file, under a file, no permission), or where one
    of the ``files`` the run writes is a folder: before any work, so a long run never fails at its last step.
    Creates nothing. Returns ``out`` as a :class:`Path`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file; give a folder (it is created if missing)")
    for name in files:  # (a link is replaced, never followed: only a real folder blocks the rename)
        target = out / name
        if target.is_dir() and not target.is_symlink():
            raise ValueError(
                f"{option} {out}: {target} is a folder, where the run writes a file; move it away"
            )
    existing = out
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link (out or above): mkdir would fail there, after the work
            raise ValueError(
                f"{option} {out} cannot be created: {existing} is a link to {os.readlink(existing)}, which does "
                "not exist; create that folder, or delete the link"
            )
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{option} {out} cannot be created: {existing} is a file, not a folder")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: no permission to write in {existing}; choose another folder")
    return out


LOCK_NAME = ".posenc.lock"


@contextlib.contextmanager
def run_lock(out: Path, option: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (the file ``out/.posenc.lock``, created, never followed if a link) while
    the block runs; a second run on the same folder is refused at once with ``ValueError``.

    The lock is an OS file lock (``flock``): the kernel releases it when the process ends, however it ends, so a
    killed run leaves no stale lock. Where ``fcntl`` is missing (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    out = check_out_dir(out, option)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        raise ValueError(
            f"cannot open the lock file {path} ({err.strerror}); if it is a link, delete it"
        ) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another posenc run is writing to {option} {out} (it holds {path}); wait for it to finish, "
                f"or choose another {option}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        remove_temporaries(out)
        yield
    finally:
        os.close(fd)  # releases the lock


#: How long a temporary must have been left untouched before a run that holds the lock removes it (seconds).
TEMPORARY_MIN_AGE_S = 300.0


def remove_temporaries(out: Path, min_age: float = TEMPORARY_MIN_AGE_S) -> list[Path]:
    """Delete the temporaries of :func:`_atomic` that a killed run (SIGKILL, the OOM killer) left in ``out``,
    ``out/checkpoints`` and its subfolders: regular files named exactly as :data:`TEMPORARY`, untouched for
    ``min_age`` seconds, never a link, never through one (a linked folder is not entered). Called while holding
    :func:`run_lock`, so no other run writes there; the age spares a write in progress by a command that takes
    no lock (``posenc plot --run R --out R``: review s7). Returns what was removed (each logged)."""
    out = Path(out)  # (itself a link where the user gave one: every write goes through it too)
    folders = [Path(e.path) for e in _entries(out / "checkpoints") if e.is_dir(follow_symlinks=False)]
    removed = []
    for folder in [out, out / "checkpoints", *folders]:
        for entry in _entries(folder, follow=folder == out):
            info = entry.stat(follow_symlinks=False) if TEMPORARY.fullmatch(entry.name) else None
            if info is not None and stat.S_ISREG(info.st_mode) and time.time() - info.st_mtime >= min_age:
                _unlink_quietly(entry.path)  # (unlinking a name never follows it)
                removed.append(Path(entry.path))
                log.info("removed %s, a temporary left by a run that did not finish", entry.path)
    return removed


def _entries(folder: Path, follow: bool = False) -> list[os.DirEntry[str]]:
    """The entries of ``folder``, none when it is missing, or a link unless ``follow``."""
    if (folder.is_symlink() and not follow) or not folder.is_dir():
        return []
    with os.scandir(folder) as it:
        return list(it)


# -- run folders ------------------------------------------------------------------------------------------
def check_run_folder(
    out: Path, fp: dict[str, Any], *, write: bool, first: Callable[[], None] | None = None
) -> None:
    """Refuse ``out`` if its ``config.json`` differs from ``fp``; where there is none, call ``first`` (which
    refuses the run's checkpoints already there, if of another configuration) and then write it (when ``write``):
    a refused run leaves the folder as it was, so its own command still resumes it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (it is created if missing)")
    path = out / "config.json"
    if path.exists():
        old = _read_config(path)
        check_same_kind(out, old, fp)
        diffs = flag_differences(old, fp)
        if diffs:
            raise refusal(out, diffs)
    else:
        if first is not None:
            first()
        if write:
            write_text(path, json.dumps(fp, indent=2) + "\n")


def _read_config(path: Path) -> dict[str, Any]:
    return read_json_object(path, "run configuration")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a run's ``config.json`` or ``results.json``), or a ``ValueError`` naming it."""
    try:
        old = json.loads(path.read_bytes())
    except (ValueError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable {what} ({type(err).__name__}); restore it, or delete "
            f"{path.parent} (or pass a new --out) to start over"
        ) from None
    if not isinstance(old, dict):
        raise ValueError(f"{path} is not a {what} (not a JSON object); restore it or delete it")
    return old


_RETRAIN = "delete it and rerun to retrain that encoding (the other checkpoints are kept)"


# -- checkpoints --------------------------------------------------------------------------------------------
def load_checkpoint(path: Path, hint: str = _RETRAIN) -> dict[str, Any]:
    """A checkpoint dict written by :func:`save_checkpoint` (``weights_only=True``: no code runs on load).
    ``hint``: what the error for a file that is no checkpoint tells the user to do (default: delete it and rerun,
    for a run's own checkpoint).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a posenc checkpoint (wrong format version or not a dict).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of many kinds: one clear message (torch's own text suggests
        # weights_only=False, which would run code from the file: not shown)
        raise ValueError(
            f"{path} is corrupt, truncated or not a posenc checkpoint ({type(err).__name__}); {hint}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "encoding" not in ckpt:
        raise ValueError(f"{path} is not a posenc checkpoint (format {CHECKPOINT_FORMAT}); {hint}")
    shapes = {"encoding": str, "config": dict, "state_dict": dict}  # the fields every reader reads as such
    wrong = [k for k, kind in shapes.items() if k in ckpt and not isinstance(ckpt[k], kind)]
    if wrong:
        got = ", ".join(f"{k} is a {type(ckpt[k]).__name__}" for k in wrong)
        raise ValueError(f"{path} is damaged ({got}); {hint}")
    return ckpt


@contextlib.contextmanager
def reading_checkpoint(path: Path, what: str) -> Iterator[None]:
    """Around reading a loaded checkpoint's fields: a missing or malformed field becomes one ``ValueError``
    naming the file and what deleting it does (``what``: e.g. "retrain rope seed 0")."""
    try:
        yield
    except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as err:
        raise damaged_checkpoint(path, f"{type(err).__name__}: {str(err)[:200]}", what) from None


def damaged_checkpoint(path: Path, problem: str, what: str) -> ValueError:
    """The error for a run's checkpoint ``path`` holding a field it cannot read back (``problem``: which, and
    what it holds), with what deleting it does (``what``: e.g. "retrain rope seed 0")."""
    return ValueError(
        f"{path} is damaged ({problem}); delete it and rerun to {what} (the other checkpoints are kept)"
    )


def cpu_state(model: torch.nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` for a checkpoint: tensors detached and on the CPU, extra state (an encoding's
    recorded options, plain values: :class:`posenc.base.OptionsInState`) as it is."""
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, **fields: Any) -> None:
    """Save ``fields`` (``encoding``, ``config``, ``state_dict`` ...) with the format version, atomically."""
    save_torch({"format": CHECKPOINT_FORMAT, **fields}, path)


def load_model(
    path: Path, device: torch.device | str = "cpu", hint: str = _RETRAIN
) -> tuple[Any, dict[str, Any]]:
    """The trained :class:`posenc.models.TransformerLM` of a checkpoint (eval mode) and the checkpoint dict.

    The model is rebuilt from the checkpoint's ``config["train"]`` (a :class:`TrainConfig`) and ``encoding``.
    ``hint``: as for :func:`load_checkpoint`.
    """
    from .train import TrainConfig, build_model

    ckpt = load_checkpoint(path, hint)
    base = str(ckpt.get("encoding", "")).split(":", 1)[0]
    if base and base not in ENCODINGS:  # (a user's encoding: its module defines it, here it was not imported)
        raise ValueError(
            f"{path} holds a model of encoding {base!r}, which is not registered in this process: load it from a "
            "script that imports the module defining it (README, 'Adding an encoding')"
        )
    train = ckpt.get("config", {}).get("train")
    if not isinstance(train, dict):
        raise ValueError(f"{path} has no training configuration to rebuild its model from; {hint}")
    try:
        model = build_model(str(ckpt["encoding"]), TrainConfig(**train))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as err:  # fields that do not fit: one line
        raise ValueError(
            f"{path} is damaged ({type(err).__name__}: {first_line(err)[:200]}); {hint}"
        ) from None
    return model.to(device).eval(), ckpt


def json_safe(obj: Any) -> Any:
    """Non-finite floats become the strings "inf", "-inf" and "nan" (strict JSON has none of them), so a diverged
    run (NaN loss) reads as one."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
