"""`cxrsynth data prepare` and `cxrsynth data info` through the real command line entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrsynth.cli import main
from cxrsynth.data.prepared import load_prepared
from tests.data.test_prepare_chestmnist import write_chestmnist
from tests.data.test_prepare_nih import write_nih_folder


def errors(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr so far, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code)


def test_prepare_then_info_writes_counts_and_a_sample_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=10)
    code = run(["data", "prepare", str(src), "--format", "nih", "--size", "32", "--out", str(tmp_path / "data"),
                "--workers", "1", "--seed", "4", "--holdout-fraction", "0.25", "--no-progress"])  # fmt: skip
    assert code == 0
    data = load_prepared(tmp_path / "data")
    assert data.meta["seed"] == 4 and data.meta["counts"]["holdout"]["patients"] == 2
    capsys.readouterr()

    assert run(["data", "info", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    for text in ("member", "holdout", "test", "Effusion", "No Finding", "patients"):
        assert text in out
    grid = Image.open(tmp_path / "data" / "sample_grid.png")
    pixels = np.asarray(grid)
    assert grid.mode == "L" and pixels.shape[0] >= 3 * 96  # three split rows of tiles, enlarged to ≥ 96 px
    assert run(["data", "info", str(tmp_path / "data"), "--grid", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()


def test_chestmnist_from_root_and_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_chestmnist(tmp_path / "cache" / "chestmnist.npz")
    code = run(["data", "prepare", "--format", "chestmnist", "--root", str(tmp_path / "cache"), "--size", "28",
                "--out", str(tmp_path / "data"), "--workers", "1", "--no-progress"])  # fmt: skip
    assert code == 0 and load_prepared(tmp_path / "data").meta["format"] == "chestmnist"
    capsys.readouterr()

    assert run(["data", "prepare", str(tmp_path / "cache"), "--format", "dicom", "--views", "PA", "--out", str(tmp_path / "x")]) == 2
    assert "--views applies to --format nih only" in errors(capsys)
    assert run(["data", "prepare", "--format", "nih", "--out", str(tmp_path / "x")]) == 2
    assert "needs SRC" in errors(capsys)
    assert run(["data", "info", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in errors(capsys)
    assert not (tmp_path / "x").exists()


def test_prepare_help_documents_every_option(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich would shorten option names in a narrow terminal
    assert run(["data", "prepare", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--format", "--size", "--out", "--holdout-fraction", "--test-fraction", "--seed", "--views",
                   "--limit", "--workers", "--skip-bad", "--labels-csv", "--root"):  # fmt: skip
        assert option in out
    assert "nih|dicom|folder|chestmnist" in out
