"""Comma-separated list flags: an empty entry (``rope,,alibi``) or a repeated name is a one-line error naming the
flag, what it got and what it accepts (they were silently dropped, so a typo ran something other than asked)."""

from __future__ import annotations

from pathlib import Path

import pytest

import posenc
from posenc.cli import main
from posenc.cli.lists import comma_list
from posenc.experiments.presets import parse_seeds

CASES = [
    (
        ["compare", "--quick", "--encodings", "none,,rope"],
        "--encodings got 'none,,rope', which has an empty entry",
    ),
    (["compare", "--quick", "--encodings", ",none"], "--encodings got ',none', which has an empty entry"),
    (
        ["compare", "--quick", "--encodings", "none,none"],
        "--encodings got 'none,none', which names none twice",
    ),
    (["compare", "--quick", "--seeds", "0,,2"], "--seeds got '0,,2', which has an empty entry"),
    (["tasks", "--quick", "--encodings", "none,"], "--encodings got 'none,', which has an empty entry"),
    (
        ["tasks", "--quick", "--tasks", "copy,,passkey"],
        "--tasks got 'copy,,passkey', which has an empty entry",
    ),
    (["tasks", "--quick", "--tasks", "copy, copy"], "--tasks got 'copy, copy', which names copy twice"),
    (["tasks", "--quick", "--seeds", "0,,1"], "--seeds got '0,,1', which has an empty entry"),
    (["plot", "--only", "bias,,sinusoidal"], "--only got 'bias,,sinusoidal', which has an empty entry"),
    (["plot", "--only", "bias", "--only", "bias"], "--only got ['bias', 'bias'], which names bias twice"),
    (["plot", "--only", ""], "--only got '', which has an empty entry"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_empty_or_repeated_entry_is_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert "it takes comma-separated" in err or "it takes a count" in err
    assert not out.exists()


def test_the_error_names_what_the_flag_accepts() -> None:
    with pytest.raises(ValueError, match="names from " + ", ".join(posenc.available())):
        comma_list("rope,,alibi", "--encodings", f"names from {', '.join(posenc.available())}")


def test_good_lists_pass_through() -> None:
    assert comma_list(" rope , alibi", "--encodings", "names") == ["rope", "alibi"]
    assert comma_list(["bias,sinusoidal", "xpos_decay"], "--only", "pictures") == [
        "bias",
        "sinusoidal",
        "xpos_decay",
    ]
    assert parse_seeds("5,") == (5,)  # the documented one-seed list
    assert parse_seeds("0,4,7") == (0, 4, 7)
    assert parse_seeds("3") == (0, 1, 2)


def test_tasks_reads_seeds_as_compare_does() -> None:
    """``--seeds 3`` is three seeds in both subcommands (tasks read it as seed 3 alone before)."""
    from posenc.cli.tasks import _seeds

    assert _seeds("3") == [0, 1, 2]
    assert _seeds("5,") == [5]
    assert _seeds("0,4,7") == [0, 4, 7]
    assert _seeds(None) is None
