"""Comma-separated list flags of the ``posenc`` subcommands (``--encodings``, ``--tasks``, ``--only``, ...)."""

from __future__ import annotations

from collections.abc import Iterable


def comma_list(text: str | Iterable[str], flag: str, accepts: str) -> list[str]:
    """The entries of ``text`` (one comma-separated string, or several: a flag given more than once), stripped.

    An empty entry (``"rope,,alibi"``, ``",rope"``, ``" "``) or a name given twice is refused rather than
    dropped or merged: either is a typo whose silent repair would run something other than what was asked.

    Args:
        text: what the flag got.
        flag: the flag, e.g. ``"--encodings"``, named in the error.
        accepts: what the flag accepts, e.g. ``"names from none, rope, alibi"``, named in the error.

    Raises:
        ValueError: an empty entry or a repeated one (one line naming ``flag``, what it got and ``accepts``).
    """
    items = [text] if isinstance(text, str) else list(text)
    got: str | list[str] = items[0] if len(items) == 1 else items
    entries: list[str] = []
    for item in items:
        parts = [p.strip() for p in item.split(",")]
        if any(not p for p in parts):
            raise ValueError(
                f"{flag} got {got!r}, which has an empty entry; it takes comma-separated {accepts}"
            )
        entries += parts
    repeated = sorted({p for p in entries if entries.count(p) > 1})
    if repeated:
        raise ValueError(
            f"{flag} got {got!r}, which names {', '.join(repeated)} twice; it takes comma-separated {accepts}, "
            "each once"
        )
    return entries
