"""Bad input to ``cxrsynth train`` gets a clear error and leaves nothing half-written."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from cxrsynth.cli import main
from cxrsynth.config import RunFacts, TrainConfig, load_run_config, save_run_config
from cxrsynth.errors import CxrsynthError
from cxrsynth.train import train
from cxrsynth.train.checkpoint import read_safetensors
from tests.factories import make_prepared_folder


def _config(data: Path, **changes) -> TrainConfig:
    settings = dict(data=str(data), preset="tiny", max_steps=1, batch_size=2, checkpoint_every=1,
                    progress_every=0, warmup_steps=0)
    return TrainConfig(**{**settings, **changes})


def _facts(**changes) -> RunFacts:
    facts = RunFacts(image_size=32, channels=1, member_images=12, member_patients=6, member_fingerprint="x",
                     label_sets=0, num_processes=1, global_batch_size=2, total_steps=1, unet_parameters=1)
    return dataclasses.replace(facts, **changes)


def test_missing_data_folder_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", str(tmp_path / "nope"), "--run", str(tmp_path / "run"), "--max-steps", "1"])
    assert exited.value.code == 2
    assert "nope does not exist" in " ".join(capsys.readouterr().err.split())  # rich wraps lines
    assert not (tmp_path / "run").exists()


def test_no_data_option_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", "--run", str(tmp_path / "run"), "--max-steps", "1"])
    assert exited.value.code == 2 and "--data is required" in " ".join(capsys.readouterr().err.split())


def test_resume_on_data_of_another_size_is_refused(tmp_path: Path, tiny_prepared: Path) -> None:
    save_run_config(tmp_path / "run", _config(tiny_prepared), _facts(image_size=64))
    with pytest.raises(CxrsynthError, match="64² images with 1 channel.*32²"):
        train(_config(tiny_prepared), tmp_path / "run", resume=True)


def test_resume_on_other_member_images_is_refused(tmp_path: Path, tiny_prepared: Path) -> None:
    other = make_prepared_folder(tmp_path / "other", seed=1)
    save_run_config(tmp_path / "run", _config(tiny_prepared), _facts())
    with pytest.raises(CxrsynthError, match="member split .* differs"):
        train(_config(other), tmp_path / "run", resume=True)


def test_checkpoint_pickle_is_refused_and_settings_cannot_change_on_resume(tmp_path: Path, tiny_prepared: Path) -> None:
    run = tmp_path / "run"
    train(_config(tiny_prepared), run)
    with pytest.raises(CxrsynthError, match="already holds a training run"):
        train(_config(tiny_prepared), run)
    with pytest.raises(CxrsynthError, match="--lr 0.0002 → 0.001"):
        train(_config(tiny_prepared, max_steps=2, lr=1e-3), run, resume=True)

    weights = run / "checkpoints" / "step_0000001" / "unet.safetensors"
    state = read_safetensors(weights)[0]
    torch.save(state, weights)  # what a careless copy from another tool might leave
    with pytest.raises(CxrsynthError, match="pickle.*never unpickles"):
        train(_config(tiny_prepared, max_steps=2), run, resume=True)
    assert load_run_config(run)[0].max_steps == 1  # validated before written: config.yaml keeps what was trained
    assert not (run / "checkpoints" / "step_0000002").exists()


def test_fp16_without_a_gpu_is_refused(tmp_path: Path, tiny_prepared: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is valid here")
    with pytest.raises(CxrsynthError, match="fp16 needs a CUDA GPU"):
        train(_config(tiny_prepared, mixed_precision="fp16"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_tensorboard_logging_without_tensorboard_is_refused(tmp_path: Path, tiny_prepared: Path) -> None:
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    with pytest.raises(CxrsynthError, match="pip install tensorboard"):
        train(_config(tiny_prepared, log_with="tensorboard"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
