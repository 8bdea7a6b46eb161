"""``sample``, ``evaluate`` and ``audit`` on a run folder another live process holds: a clear refusal, nothing touched."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from cxrsynth.runfolder import LOCK_FILE, folder_lock
from tests.reliability.conftest import assert_clear_error, run_cli, tree_digest
from tests.tiny_run import copy_run


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared tiny run."""
    return copy_run(tiny_run, tmp_path / "run")


@pytest.fixture
def holder(run: Path) -> Iterator[int]:
    """A live other process recorded in ``RUN/.cxrsynth.lock`` as running ``cxrsynth train``; yields its pid."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (run / LOCK_FILE).write_text(json.dumps({"pid": process.pid, "host": socket.gethostname(),
                                             "command": "cxrsynth train", "started": "2026-01-01T00:00:00+0000"}))
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def _refused_untouched(run: Path, argv: list[str], pid: int, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_digest(run)
    result = run_cli(argv, capsys)
    assert_clear_error(result, "in use by cxrsynth train", f"pid {pid}", "wait for that process", str(run / LOCK_FILE))
    assert tree_digest(run) == before


def test_sample_on_a_locked_run(run: Path, holder: int, capsys) -> None:
    """`sample` into RUN/samples while another process holds the run: refused, no image written, lock kept."""
    _refused_untouched(run, ["sample", "--run", str(run), "--num-images", "12", "--sampler", "dpmsolver",
                             "--steps", "1", "--device", "cpu"], holder, capsys)


def test_evaluate_on_a_locked_run(run: Path, holder: int, capsys) -> None:
    """`evaluate` while another process holds the run: refused before anything is computed or written."""
    _refused_untouched(run, ["evaluate", "--run", str(run), "--metrics", "pixel"], holder, capsys)


def test_audit_on_a_locked_run(run: Path, holder: int, capsys) -> None:
    """`audit` while another process holds the run: refused, `audit/` unchanged."""
    _refused_untouched(run, ["audit", "--run", str(run), "--device", "cpu"], holder, capsys)


def test_lock_is_reentered_by_its_own_process(tmp_path: Path) -> None:
    """`evaluate` generating missing samples takes the sample lock inside its own: re-entered, released once, by the outer."""
    run = tmp_path / "run"
    run.mkdir()
    with folder_lock(run, "cxrsynth evaluate") as outer:
        with folder_lock(run, "cxrsynth sample") as inner:
            assert inner == outer
        assert json.loads(outer.read_text())["command"] == "cxrsynth evaluate"  # the inner left it in place
    assert not (run / LOCK_FILE).exists()
