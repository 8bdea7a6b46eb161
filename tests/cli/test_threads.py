"""``--threads N``: it reaches torch inside every heavy command, is saved by train, and may change on resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cxrsynth.cli import main
from cxrsynth.cli.common import MAX_DEFAULT_THREADS, default_threads, torch_threads
from cxrsynth.config import RunFacts, TrainConfig, load_run_config, save_run_config, trajectory_differences
from cxrsynth.errors import CxrsynthError

_TRAIN = ["--preset", "tiny", "--batch-size", "2", "--progress-every", "0", "--warmup-steps", "0",
          "--checkpoint-every", "1"]

# Each heavy command: its argv (a fake run folder is enough: the stage function is replaced) and the
# module attribute the command calls.
COMMANDS: dict[str, tuple[list[str], str, str]] = {
    "train": (["train", "--data", "DATA", "--run", "RUN", "--max-steps", "1"], "cxrsynth.train", "train"),
    "sample": (["sample", "--run", "RUN", "--num-images", "1"], "cxrsynth.sample", "generate_samples"),
    "evaluate": (["evaluate", "--run", "RUN"], "cxrsynth.evaluate.runner", "evaluate_run"),
    "audit": (["audit", "--run", "RUN"], "cxrsynth.audit.runner", "audit_run"),
    "audit canaries": (["audit", "canaries", "--run", "RUN"], "cxrsynth.audit.canaries", "audit_canaries"),
    "release": (["release", "--run", "RUN", "--out", "OUT"], "cxrsynth.release", "release_run"),
    "demo": (["demo", "--out", "OUT"], "cxrsynth.demo", "run_demo"),
}
_FACTS = RunFacts(image_size=32, channels=1, member_images=1, member_patients=1, member_fingerprint="x",
                  label_sets=0, num_processes=1, global_batch_size=1, total_steps=1, unet_parameters=1)


def _argv(name: str, tmp_path: Path) -> list[str]:
    replacements = {"DATA": str(tmp_path / "data"), "RUN": str(tmp_path / "run"), "OUT": str(tmp_path / "out")}
    return [replacements.get(item, item) for item in COMMANDS[name][0]]


def _threads_seen_by(name: str, extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run command ``name`` with its stage function replaced; returns torch's thread count inside it."""
    import importlib

    seen: list[int] = []

    def stage(*args: Any, **kwargs: Any) -> None:
        seen.append(torch.get_num_threads())
        raise CxrsynthError("stopped by the test", "nothing to fix")

    _, module, attribute = COMMANDS[name]
    monkeypatch.setattr(importlib.import_module(module), attribute, stage)
    with pytest.raises(SystemExit) as exited:
        main(_argv(name, tmp_path) + extra)
    assert exited.value.code == 2 and len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_threads_reach_torch_inside_the_command_and_are_restored(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    assert _threads_seen_by(name, ["--threads", "3"], tmp_path, monkeypatch) == 3
    assert torch.get_num_threads() == before
    assert "stopped by the test" in capsys.readouterr().err


def test_without_threads_a_command_uses_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert _threads_seen_by("sample", [], tmp_path, monkeypatch) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("cxrsynth.cli.common.available_cores", lambda: 2)
    assert _threads_seen_by("sample", [], tmp_path, monkeypatch) == 1


@pytest.mark.parametrize("value", ["0", "-1", "two"])
@pytest.mark.parametrize("name", ["train", "sample", "audit", "audit canaries", "demo"])
def test_bad_threads_is_a_usage_error(name: str, value: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(_argv(name, tmp_path) + ["--threads", value])
    output = capsys.readouterr()
    text = output.out + output.err
    assert exited.value.code == 2 and "Traceback" not in text, text
    assert text.count("Usage: cxrsynth") == 1 and "--threads" in text, text


def test_default_threads_leave_a_core_idle_and_follow_the_environment() -> None:
    assert [default_threads(cores, environ={}) for cores in (1, 2, 3, 4, 16, 64)] == [1, 1, 2, 3, 8, MAX_DEFAULT_THREADS]
    assert default_threads(64, environ={"OMP_NUM_THREADS": "5"}) == 5
    assert default_threads(2, environ={"OMP_NUM_THREADS": "0"}) == 1  # not a usable count: ignored
    assert default_threads(2, environ={"OMP_NUM_THREADS": "all"}) == 1
    assert default_threads(8, environ={"LOCAL_WORLD_SIZE": "2"}) == 3  # 4 cores per process
    assert default_threads(4, environ={"LOCAL_WORLD_SIZE": "4"}) == 1
    with pytest.raises(ValueError, match=">= 1"):
        with torch_threads(0):
            pass


def test_threads_round_trip_through_config_yaml_and_may_change_on_resume(tmp_path: Path) -> None:
    config = TrainConfig(data=str(tmp_path), max_steps=1, threads=3)
    save_run_config(tmp_path / "run", config, _FACTS)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["threads"] == 3
    assert load_run_config(tmp_path / "run")[0] == config
    assert trajectory_differences(config, dataclasses.replace(config, threads=1)) == []
    with pytest.raises(CxrsynthError, match="invalid --threads 0"):
        dataclasses.replace(config, threads=0).validate()


def test_train_saves_threads_and_resume_with_other_threads_continues(
        tiny_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", str(tiny_prepared), "--run", str(run), "--max-steps", "1", "--threads", "1", *_TRAIN])
    assert exited.value.code == 0, capsys.readouterr().err
    assert load_run_config(run)[0].threads == 1
    with pytest.raises(SystemExit) as exited:
        main(["train", "--run", str(run), "--resume", "--max-steps", "2", "--threads", "2"])
    assert exited.value.code == 0, capsys.readouterr().err
    assert load_run_config(run)[0].threads == 2
    assert (run / "checkpoints" / "step_0000002").is_dir()


def test_resume_with_threads_zero_in_an_edited_config_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = TrainConfig(data=str(tmp_path), max_steps=1, threads=0)
    save_run_config(tmp_path / "run", config, _FACTS)
    with pytest.raises(SystemExit) as exited:
        main(["train", "--run", str(tmp_path / "run"), "--resume"])
    assert exited.value.code == 2
    assert "invalid --threads 0" in capsys.readouterr().err
