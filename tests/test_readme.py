"""The README's quickstart runs as written."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs() -> None:
    text = README.read_text()
    start = text.index("```python", text.index("## Quickstart")) + len("```python")
    code = text[start : text.index("```", start)]
    exec(compile(code, "README quickstart", "exec"), {})


def test_two_setup_commands_at_the_top() -> None:
    top = README.read_text().split("\n## ")[0]
    commands = [line for line in top.splitlines() if line.startswith("make ")]
    assert [c.split()[1] for c in commands] == ["demo", "test"]
