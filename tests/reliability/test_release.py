"""``cxrsynth release``: an --out that would destroy something, or cannot be written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.reliability.conftest import assert_clear_error, leftovers, run_cli, tree_digest
from tests.tiny_run import copy_run


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared tiny run (its data folder stays shared: read only)."""
    return copy_run(tiny_run, tmp_path / "run")


def _release(run: Path, out: Path, *extra: str) -> list[str]:
    return ["release", "--run", str(run), "--out", str(out), "--num-images", "2", "--steps", "1",
            "--reid-steps", "5", "--device", "cpu", *extra]


def test_overwrite_out_is_the_run_folder(run: Path, capsys) -> None:
    before = tree_digest(run)
    result = run_cli(_release(run, run, "--overwrite"), capsys)
    assert_clear_error(result, "run folder", "outside the run and data folders")
    assert tree_digest(run) == before


def test_out_inside_the_data_folder(run: Path, tiny_run: Path, capsys) -> None:
    data = tiny_run.parent / "data"
    before = tree_digest(data)
    result = run_cli(_release(run, data / "release"), capsys)
    assert_clear_error(result, "prepared-data folder")
    assert tree_digest(data) == before and not (data / "release").exists()


def test_overwrite_an_unrelated_folder(run: Path, tmp_path: Path, capsys) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    result = run_cli(_release(run, precious, "--overwrite"), capsys)
    assert_clear_error(result, "not a previous release", "release.json")
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_out_exists_without_overwrite(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    result = run_cli(_release(run, out), capsys)
    assert_clear_error(result, "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "keep"


def test_out_is_a_file(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.txt"
    out.write_text("a file")
    result = run_cli(_release(run, out), capsys)
    assert_clear_error(result, "is an existing file")
    assert out.read_text() == "a file"


def test_out_under_a_file(run: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    result = run_cli(_release(run, blocker / "release"), capsys)
    assert_clear_error(result, "which is a file")
    assert blocker.read_text() == "a file"


def test_disk_full_while_writing_the_release(run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """ENOSPC at the first released image: a clear error, and no partial release folder."""
    import cxrsynth.release.bundle as release

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "synthetic_000000.png"))

    monkeypatch.setattr(release, "write_images", full)
    result = run_cli(_release(run, tmp_path / "out"), capsys)
    assert_clear_error(result, "no space left", "free disk space")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_overwrite_a_previous_release(run: Path, tmp_path: Path, capsys) -> None:
    """--overwrite still replaces what it is for: a folder an earlier release wrote."""
    out = tmp_path / "out"
    first = run_cli(_release(run, out), capsys)
    assert first.code == 0, first.text
    (out / "stale.txt").write_text("from the first release")
    again = run_cli(_release(run, out, "--overwrite"), capsys)
    assert again.code == 0, again.text
    assert (out / "release.json").is_file() and not (out / "stale.txt").exists() and leftovers(tmp_path) == []
