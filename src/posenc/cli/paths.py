"""Path arguments of the ``posenc`` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path


def path_arg(text: str) -> Path:
    """An argparse ``type`` for a path: an empty string is refused (``Path("")`` would silently mean the current
    folder, for an output folder or a data source alike)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a file or folder ('.' for the current folder)")
    return Path(text)


def kept_checkpoints(out: Path) -> str:
    """What an interrupted ``compare`` or ``tasks`` run into ``out`` keeps, counted (the finished models'
    checkpoints, ``out/checkpoints/**/*.pt``; a file being written is a temporary, not counted)."""
    folder = out / "checkpoints"
    try:
        count = sum(1 for p in folder.rglob("*.pt") if p.is_file()) if folder.is_dir() else 0
    except OSError:  # (unreadable: say what is known)
        return f"finished models' checkpoints, if any, are in {folder}; rerun the same command to resume"
    if count == 0:
        return "no model had finished, so there is nothing to resume from yet"
    models = "1 checkpoint" if count == 1 else f"{count} checkpoints"
    return f"{models} of finished models kept in {folder}; rerun the same command to resume"
