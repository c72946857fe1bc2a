"""posenc plot writes the three pictures."""

from __future__ import annotations

from pathlib import Path

import pytest

from posenc.cli import main


def test_plot_writes_pngs(tmp_path: Path) -> None:
    assert main(["plot", "--out", str(tmp_path), "--length", "32", "--dim", "16"]) == 0
    for name in ("sinusoidal.png", "rope_decay.png", "relative_index.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_plot_rejects_odd_dim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", "--out", str(tmp_path), "--dim", "7"]) == 2
    assert "--dim must be an even number" in capsys.readouterr().err


def test_rope_decay_bound_starts_at_its_maximum_and_decays() -> None:
    from posenc.plots import rope_decay_bound

    bound = rope_decay_bound(256, head_dim=128)
    assert abs(bound[0].item() - (64 + 1) / 2) < 1e-9  # |S_j| = j at distance 0, mean over j = 1..64
    assert bound[200:].mean() < 0.4 * bound[0]
