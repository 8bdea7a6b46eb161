"""Atomic writes leave either nothing or the complete result."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_directory, atomic_write_json, atomic_write_text


def test_atomic_directory_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_directory_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("a")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_existing_unless_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(CxrsynthError, match="already exists"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_json_is_strict_and_leaves_no_temp(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "x" / "a.json", {"b": 1, "a": [1.5, None]})
    assert json.loads(path.read_text()) == {"a": [1.5, None], "b": 1}
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()
    atomic_write_text(tmp_path / "x" / "a.json", "replaced")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["a.json"]


def test_outputs_get_the_permissions_of_plain_files_and_folders(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        written = atomic_write_text(tmp_path / "report.html", "<p>shared</p>")
        with atomic_directory(tmp_path / "release") as folder:
            (folder / "a.png").write_bytes(b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == 0o644, "not private like mkstemp's 0600: it is meant to be shared"
    assert stat.S_IMODE((tmp_path / "release").stat().st_mode) == 0o755
