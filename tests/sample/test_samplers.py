"""sample_batch: shapes, ranges, per-image determinism, schedules and classifier-free guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from cxrsynth.data.dataset import to_uint8
from cxrsynth.errors import CxrsynthError
from cxrsynth.model.samplers import SAMPLERS, make_scheduler, sample_batch
from tests.sample.conftest import SIZE, tiny_unet

FEW_STEPS = {"ddpm": 8, "ddim": 4, "dpmsolver": 4}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_shape_range_and_per_image_determinism(sampler: str) -> None:
    unet, scheduler = tiny_unet(), DDPMScheduler(num_train_timesteps=1000)
    steps = FEW_STEPS[sampler]
    batch = sample_batch(unet, scheduler, sampler, steps, [0, 1, 2, 3], seed=5)
    assert batch.shape == (4, 1, SIZE, SIZE) and batch.dtype == torch.float32 and batch.device.type == "cpu"
    assert batch.min() >= -1.0 and batch.max() <= 1.0 and batch.std() > 0.05

    again = sample_batch(unet, scheduler, sampler, steps, [0, 1, 2, 3], seed=5)
    assert torch.equal(batch, again)
    # Image 2 alone, and in a batch of other companions, is image 2 of the big batch.
    alone = sample_batch(unet, scheduler, sampler, steps, [2], seed=5)
    reordered = sample_batch(unet, scheduler, sampler, steps, [7, 2], seed=5)
    for other in (alone[0], reordered[1]):
        diff = np.abs(to_uint8(other).astype(int) - to_uint8(batch[2]).astype(int))
        assert diff.max() <= 1
    # Different ids and different seeds give different images.
    assert (batch[0] - batch[1]).abs().mean() > 0.05
    other_seed = sample_batch(unet, scheduler, sampler, steps, [2], seed=6)
    assert (other_seed[0] - batch[2]).abs().mean() > 0.05


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inference_scheduler_keeps_training_noise_schedule(sampler: str) -> None:
    train = DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2")
    inference = make_scheduler(sampler, train)
    assert inference.config.num_train_timesteps == 500
    assert torch.allclose(inference.alphas_cumprod, train.alphas_cumprod)
    assert make_scheduler(sampler, train) is not inference


def test_invalid_sampler_and_steps_are_clear_errors() -> None:
    unet, scheduler = tiny_unet(), DDPMScheduler(num_train_timesteps=1000)
    with pytest.raises(CxrsynthError, match="unknown sampler"):
        sample_batch(unet, scheduler, "euler", 5, [0], seed=0)
    with pytest.raises(CxrsynthError, match="out of range"):
        sample_batch(unet, scheduler, "ddim", 1001, [0], seed=0)
    with pytest.raises(CxrsynthError, match="non-negative"):
        sample_batch(unet, scheduler, "ddim", 2, [0], seed=-1)


def test_guidance_runs_null_and_conditional_halves_in_one_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    unet, scheduler = tiny_unet(num_class_embeds=4), DDPMScheduler(num_train_timesteps=1000)
    seen: list[torch.Tensor] = []
    original = type(unet).forward

    def spy(self, sample, timestep, class_labels=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(class_labels.clone())
        return original(self, sample, timestep, class_labels=class_labels, **kwargs)

    monkeypatch.setattr(type(unet), "forward", spy)
    labels = torch.tensor([0, 2])
    guided = sample_batch(unet, scheduler, "ddim", 3, [0, 1], seed=1, class_labels=labels, guidance_scale=3.0, null_class=3)
    assert len(seen) == 3
    assert all(call.tolist() == [3, 3, 0, 2] for call in seen)

    seen.clear()
    plain = sample_batch(unet, scheduler, "ddim", 3, [0, 1], seed=1, class_labels=labels, guidance_scale=1.0, null_class=3)
    assert all(call.tolist() == [0, 2] for call in seen)
    assert (guided - plain).abs().max() > 1e-3

    with pytest.raises(CxrsynthError, match="null class"):
        sample_batch(unet, scheduler, "ddim", 3, [0, 1], seed=1, class_labels=labels, guidance_scale=2.0)
    with pytest.raises(CxrsynthError, match="one label per image"):
        sample_batch(unet, scheduler, "ddim", 3, [0, 1], seed=1, class_labels=torch.tensor([0]))
