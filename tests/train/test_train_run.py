"""One real (tiny) training run: the complete run folder, a plain-diffusers pipeline, a falling loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline
from PIL import Image

from cxrsynth.config import TrainConfig, load_run_config
from cxrsynth.train import train
from cxrsynth.train.checkpoint import list_checkpoints
from cxrsynth.train.run_log import read_train_log
from tests.factories import make_prepared_folder

STEPS = 80


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Path]:
    root = tmp_path_factory.mktemp("train_run")
    data = make_prepared_folder(root / "data", n_patients=12, images_per_patient=2, size=32)
    config = TrainConfig(
        data=str(data), preset="tiny", max_steps=STEPS, batch_size=4, lr=1e-3, warmup_steps=10, seed=1,
        checkpoint_every=20, keep_checkpoints=2, progress_every=40, log_every=10,
        progress_images=4, progress_steps=2,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread degrades far less than two on a busy shared CPU
    try:
        train(config, root / "run")
    finally:
        torch.set_num_threads(threads)
    return config, root / "run"


@pytest.mark.slow
def test_config_yaml_records_every_setting_and_the_resolved_facts(trained_run) -> None:
    config, run = trained_run
    saved, facts = load_run_config(run)
    assert saved == config
    assert (facts.image_size, facts.channels, facts.member_images, facts.member_patients) == (32, 1, 12, 6)
    assert (facts.total_steps, facts.global_batch_size, facts.num_processes) == (STEPS, 4, 1)
    assert facts.unet_parameters == 1_112_801 and facts.label_sets == 0
    assert facts.hardware.startswith("cpu (") and facts.hardware.endswith(" cores)")


@pytest.mark.slow
def test_train_log_has_one_record_per_logged_step(trained_run) -> None:
    _, run = trained_run
    records = read_train_log(run)
    assert [r["step"] for r in records] == list(range(10, STEPS + 1, 10))
    for record in records:
        assert {"step", "loss", "lr", "img_per_s", "epoch"} <= set(record)
        assert record["img_per_s"] > 0 and np.isfinite(record["loss"])
    assert records[0]["lr"] == pytest.approx(1e-3) and records[-1]["epoch"] == pytest.approx(STEPS * 4 / 12)
    assert all(json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_loss_decreases_over_training(trained_run) -> None:
    _, run = trained_run
    losses = [r["loss"] for r in read_train_log(run)]
    # Each record averages 10 steps; untrained ε-prediction sits near 1.
    assert np.mean(losses[:2]) > 2.0 * np.mean(losses[-3:])


@pytest.mark.slow
def test_only_the_newest_checkpoints_are_kept(trained_run) -> None:
    _, run = trained_run
    assert [step for step, _ in list_checkpoints(run)] == [60, STEPS]
    assert not list((run / "checkpoints").glob(".*"))  # no partial folders left
    files = sorted(p.name for p in (run / "checkpoints" / f"step_{STEPS:07d}").iterdir())
    assert files == ["ema.safetensors", "optimizer.safetensors", "rng_rank0.safetensors", "state.json",
                     "unet.safetensors"]


@pytest.mark.slow
def test_progress_grids_are_written_from_the_ema_weights(trained_run) -> None:
    _, run = trained_run
    grids = sorted(p.name for p in (run / "progress").iterdir())
    assert grids == ["step_0000040.png", "step_0000080.png"]
    with Image.open(run / "progress" / grids[-1]) as image:
        assert image.mode == "L" and image.size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)  # 2×2 grid, 2-px gaps
        assert np.asarray(image).std() > 0


@pytest.mark.slow
def test_pipeline_loads_with_plain_diffusers_and_generates(trained_run) -> None:
    _, run = trained_run
    assert (run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (run / "pipeline" / "label_vocabulary.json").exists()
    pipeline = DDPMPipeline.from_pretrained(run / "pipeline")
    images = pipeline(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (1, 32, 32, 1) and np.isfinite(images).all()
    assert pipeline.scheduler.config.num_train_timesteps == 1000
    assert pipeline.scheduler.config.beta_schedule == "linear"


@pytest.mark.slow
def test_pipeline_holds_the_ema_weights_of_the_last_step(trained_run) -> None:
    _, run = trained_run
    from safetensors.torch import load_file

    published = load_file(run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    checkpoint = run / "checkpoints" / f"step_{STEPS:07d}"
    ema = load_file(checkpoint / "ema.safetensors")
    raw = load_file(checkpoint / "unet.safetensors")
    name = "conv_in.weight"
    assert torch.equal(published[name], ema[name]) and not torch.equal(published[name], raw[name])
