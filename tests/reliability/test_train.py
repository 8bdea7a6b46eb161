"""``cxrsynth train``: two processes on one run folder, broken checkpoints, disk full, SIGKILL mid-checkpoint."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cxrsynth.runfolder import LOCK_FILE
from tests.reliability.conftest import assert_clear_error, leftovers, run_cli, tree_digest

STEPS = 4


def _train_args(data: Path, run: Path, steps: int = STEPS) -> list[str]:
    return ["train", "--data", str(data), "--run", str(run), "--preset", "tiny", "--max-steps", str(steps),
            "--batch-size", "4", "--checkpoint-every", "2", "--keep-checkpoints", "2", "--progress-every", "0",
            "--log-every", "1", "--warmup-steps", "1"]


def _resume_args(run: Path, steps: int = STEPS + 2) -> list[str]:
    return ["train", "--run", str(run), "--resume", "--max-steps", str(steps)]


@pytest.fixture(scope="module")
def data(tiny_run: Path) -> Path:
    """The shared tiny run's prepared data (read only)."""
    return tiny_run.parent / "data"


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained for 4 steps with checkpoints at steps 2 and 4 (copy it to change it)."""
    from accelerate.state import AcceleratorState, GradientState

    from cxrsynth.cli import main

    run = tmp_path_factory.mktemp("reliability_train") / "run"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(SystemExit) as exited:
            main(_train_args(data, run))
    finally:
        torch.set_num_threads(previous)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert exited.value.code == 0
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def _lock(run: Path, pid: int) -> None:
    (run / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "cxrsynth train",
                                             "started": "2026-01-01T00:00:00+0000"}))


def test_second_train_process_on_a_locked_run(run: Path, capsys) -> None:
    """A live holder (a real other process) makes a second `train --resume` refuse, touching nothing."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(run, holder.pid)
        before = tree_digest(run)
        result = run_cli(_resume_args(run), capsys)
        assert_clear_error(result, "in use by cxrsynth train", f"pid {holder.pid}", "wait for that process")
        assert tree_digest(run) == before
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_taken_over(run: Path, capsys) -> None:
    """A lock whose process is gone (same host) is replaced: the resume runs, and releases the lock."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(run, gone.pid)
    result = run_cli(_resume_args(run, STEPS + 1), capsys)
    assert result.code == 0, result.text
    assert _steps_logged(run) == list(range(1, STEPS + 2)) and not (run / LOCK_FILE).exists()


def test_resume_with_a_truncated_safetensors(run: Path, capsys) -> None:
    unet = run / "checkpoints" / "step_0000004" / "unet.safetensors"
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])
    config = (run / "config.yaml").read_bytes()
    result = run_cli(_resume_args(run), capsys)
    assert_clear_error(result, "unet.safetensors", "not a valid safetensors file", "delete this checkpoint folder")
    assert (run / "config.yaml").read_bytes() == config  # validated before anything was written
    assert _steps_logged(run) == list(range(1, STEPS + 1)) and not (run / LOCK_FILE).exists()


def test_resume_with_a_pickle_in_place_of_safetensors(run: Path, capsys, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    unet = run / "checkpoints" / "step_0000004" / "unet.safetensors"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(marker)}, unet)
    config = (run / "config.yaml").read_bytes()
    result = run_cli(_resume_args(run), capsys)
    assert_clear_error(result, "pickle", "never unpickles", "delete this checkpoint folder")
    assert not marker.exists() and (run / "config.yaml").read_bytes() == config


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_with_an_edited_config_yaml(run: Path, capsys) -> None:
    """config.yaml edited to another preset: the checkpoint does not fit, and the edit is not overwritten."""
    config = run / "config.yaml"
    edited = config.read_text().replace("preset: tiny", "preset: small")
    assert edited != config.read_text()
    config.write_text(edited)
    checkpoints = tree_digest(run / "checkpoints")
    result = run_cli(_resume_args(run), capsys)
    assert_clear_error(result, "config.yaml")
    assert config.read_text() == edited and tree_digest(run / "checkpoints") == checkpoints


def test_resume_with_a_config_yaml_that_is_not_text(run: Path, capsys) -> None:
    config = run / "config.yaml"
    config.write_bytes(b"\xff\xfe\x00garbage")
    result = run_cli(_resume_args(run), capsys)
    assert_clear_error(result, "config.yaml", "not valid UTF-8 YAML")
    assert config.read_bytes() == b"\xff\xfe\x00garbage"


def test_disk_full_during_a_checkpoint_then_resume(run: Path, capsys, monkeypatch) -> None:
    """ENOSPC while writing the step-6 checkpoint: a clear error, no .partial left, and the resume works once space is back."""
    import cxrsynth.train.checkpoint as checkpoint

    real_save = checkpoint.save_file

    def full(tensors, filename, *args, **kwargs):
        if "step_0000006" in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full)
    result = run_cli(_resume_args(run), capsys)
    assert_clear_error(result, "no space left", "free disk space", "--resume")
    assert leftovers(run) == [] and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002",
                                                                                                "step_0000004"]
    assert not (run / LOCK_FILE).exists()
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    again = run_cli(_resume_args(run), capsys)
    assert again.code == 0, again.text
    assert (run / "checkpoints" / "step_0000006").is_dir() and leftovers(run) == []
    assert _steps_logged(run) == list(range(1, STEPS + 3))


KILLED_DURING_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import cxrsynth.train.checkpoint as checkpoint
    real = checkpoint.save_file
    def dying(tensors, filename, *args, **kwargs):
        if "step_0000006" in str(filename) and filename.endswith("ema.safetensors"):
            os.kill(os.getpid(), signal.SIGKILL)  # mid-checkpoint: unet written, ema not
        return real(tensors, filename, *args, **kwargs)
    checkpoint.save_file = dying
    from cxrsynth.cli import main
    main(sys.argv[1:])
""")


def test_sigkill_during_a_checkpoint_then_resume(run: Path, capsys) -> None:
    """SIGKILL half-way through writing a checkpoint, then `--resume`: continues from the last complete one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_DURING_CHECKPOINT, *_resume_args(run)], env=env,
                            capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert (run / "checkpoints" / ".step_0000006.partial").is_dir()  # what a kill leaves: never under a real name
    assert (run / LOCK_FILE).exists()  # and a lock whose process is gone
    result = run_cli(_resume_args(run), capsys)
    assert result.code == 0, result.text
    assert "resuming" in result.text and "step_0000004" in result.text
    assert leftovers(run) == [] and not (run / LOCK_FILE).exists()
    assert (run / "checkpoints" / "step_0000006").is_dir()
    assert _steps_logged(run) == list(range(1, STEPS + 3))  # steps 5 and 6 once each, not twice


def test_new_run_refused_leaves_no_folder(data: Path, tmp_path: Path, capsys) -> None:
    """A new run that fails validation (a preset that does not exist) leaves no empty run folder behind."""
    run = tmp_path / "new_run"
    result = run_cli(_train_args(data, run)[:5] + ["--preset", "no-such-preset", "--max-steps", "2"], capsys)
    assert_clear_error(result, "no-such-preset")
    assert not run.exists()


def test_resume_in_a_read_only_run_folder(run: Path, capsys, monkeypatch) -> None:
    """No write permission in the run folder (EACCES, injected: the tests may run as root): a clear error, nothing changed."""
    import cxrsynth.fsutil as fsutil

    def denied(*_args, dir=None, **_kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", denied)
    before = tree_digest(run)
    result = run_cli(_resume_args(run), capsys)
    assert_clear_error(result, "permission denied", "writable")
    assert tree_digest(run) == before and not (run / LOCK_FILE).exists()


def test_empty_lock_file(tmp_path: Path) -> None:
    """An empty lock (a holder killed between creating and writing it): refused while young, taken over once old."""
    from cxrsynth.errors import CxrsynthError
    from cxrsynth.runfolder import folder_lock

    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_FILE
    lock.write_text("")
    with pytest.raises(CxrsynthError, match="in use by another process"):
        with folder_lock(run, "cxrsynth train"):
            pass
    assert lock.read_text() == ""
    os.utime(lock, (lock.stat().st_atime - 60, lock.stat().st_mtime - 60))
    with folder_lock(run, "cxrsynth train") as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock.exists() and run.is_dir()
