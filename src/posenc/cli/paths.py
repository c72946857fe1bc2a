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
