"""TrainConfig: validation, config.yaml round trip, and how --resume merges options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cxrsynth.config import (
    RunFacts,
    TrainConfig,
    load_run_config,
    resolve_train_config,
    save_run_config,
    trajectory_differences,
)
from cxrsynth.errors import CxrsynthError


def _facts() -> RunFacts:
    return RunFacts(image_size=32, channels=1, member_images=12, member_patients=6, member_fingerprint="ab",
                    label_sets=0, num_processes=1, global_batch_size=8, total_steps=10, unet_parameters=5,
                    versions={"torch": "2"})


def test_config_yaml_round_trips_every_setting(tmp_path: Path) -> None:
    config = TrainConfig(data="/d", preset="tiny", epochs=2.5, lr=3e-5, conditional=True, log_with="tensorboard",
                         beta_schedule="cosine", adam_epsilon=1e-8)
    save_run_config(tmp_path, config, _facts())
    assert load_run_config(tmp_path) == (config, _facts())


def test_hand_written_scientific_notation_is_read_as_float(tmp_path: Path) -> None:
    save_run_config(tmp_path, TrainConfig(data="/d", max_steps=3), _facts())
    path = tmp_path / "config.yaml"
    path.write_text(path.read_text().replace("lr: 0.0002", "lr: 1e-4"))
    assert load_run_config(tmp_path)[0].lr == 1e-4


def test_unknown_setting_in_config_yaml_is_refused(tmp_path: Path) -> None:
    save_run_config(tmp_path, TrainConfig(data="/d", max_steps=3), _facts())
    path = tmp_path / "config.yaml"
    path.write_text(path.read_text().replace("  seed: 0", "  sed: 0"))
    with pytest.raises(CxrsynthError, match="unknown setting.*sed"):
        load_run_config(tmp_path)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({}, "exactly one of --max-steps and --epochs"),
        ({"max_steps": 5, "epochs": 1.0}, "exactly one"),
        ({"max_steps": 5, "preset": "huge"}, "--preset"),
        ({"max_steps": 5, "mixed_precision": "fp8"}, "--mixed-precision"),
        ({"max_steps": 5, "label_dropout": 1.0}, "--label-dropout"),
        ({"max_steps": 5, "beta_schedule": "sigmoid"}, "--beta-schedule"),
        ({"max_steps": 5, "log_with": "wandb"}, "--log-with"),
        ({"max_steps": 5, "batch_size": 0}, "--batch-size"),
    ],
)
def test_invalid_settings_are_named(changes: dict, pattern: str) -> None:
    with pytest.raises(CxrsynthError, match=pattern):
        TrainConfig(data="/d", **changes).validate()


def test_resume_takes_unspecified_options_from_the_run(tmp_path: Path) -> None:
    saved = TrainConfig(data="/d", preset="tiny", max_steps=10, lr=1e-3, conditional=True)
    save_run_config(tmp_path, saved, _facts())
    resumed = resolve_train_config(tmp_path, {"epochs": 4.0}, resume=True)
    assert resumed == dataclasses.replace(saved, max_steps=None, epochs=4.0)
    assert trajectory_differences(saved, resumed) == []
    changed = resolve_train_config(tmp_path, {"lr": 5e-4, "max_steps": 20}, resume=True)
    assert trajectory_differences(saved, changed) == ["--lr 0.001 → 0.0005"]


def test_new_run_needs_data(tmp_path: Path) -> None:
    with pytest.raises(CxrsynthError, match="--data is required"):
        resolve_train_config(tmp_path / "run", {"max_steps": 3}, resume=False)


def test_epochs_become_optimizer_steps_rounded_up() -> None:
    from cxrsynth.train.loop import total_steps

    assert total_steps(TrainConfig(data="/d", epochs=2.5), records=12, global_batch_size=8) == 4
    assert total_steps(TrainConfig(data="/d", max_steps=7), records=12, global_batch_size=8) == 7
