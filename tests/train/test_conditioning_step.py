"""Conditional training: the class embedding is in the loss's graph; label dropout hits the null class."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrsynth.data.dataset import to_model_range
from cxrsynth.data.prepared import load_prepared
from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.model.presets import build_unet, get_preset
from cxrsynth.train.components import build_noise_scheduler
from cxrsynth.config import TrainConfig
from cxrsynth.train.objective import draw_diffusion_noise, drop_labels, per_example_denoising_loss


def test_class_embedding_gets_gradient_exactly_for_the_labels_in_the_batch(tiny_prepared: Path) -> None:
    data = load_prepared(tiny_prepared)
    rows = data.rows("member")[:6]
    vocabulary = LabelVocabulary.from_labels(data.index["labels"].iloc[data.rows("member")].tolist())
    labels = vocabulary.encode(data.index["labels"].iloc[rows].tolist())
    assert len(set(labels.tolist())) >= 2
    torch.manual_seed(0)
    unet = build_unet(get_preset("tiny"), data.size, vocabulary.num_class_embeds)
    clean = to_model_range(data.images[rows])[:, None]
    noise, timesteps = draw_diffusion_noise(clean, 1000, torch.Generator().manual_seed(1))
    losses = per_example_denoising_loss(unet, build_noise_scheduler(TrainConfig(data="", max_steps=1)),
                                        clean, noise, timesteps, labels)
    assert losses.shape == (6,)
    losses.mean().backward()
    row_has_gradient = unet.class_embedding.weight.grad.abs().sum(dim=1) > 0
    assert row_has_gradient.tolist() == [c in set(labels.tolist()) for c in range(vocabulary.num_class_embeds)]


def test_label_dropout_replaces_labels_by_the_null_class_at_the_given_rate() -> None:
    labels = torch.randint(0, 4, (20_000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(labels, null_class=4, probability=0.1, generator=torch.Generator().manual_seed(1))
    changed = dropped != labels
    assert torch.all(dropped[changed] == 4) and torch.equal(dropped[~changed], labels[~changed])
    assert 0.09 < changed.float().mean().item() < 0.11
    assert torch.equal(drop_labels(labels, 4, 0.0, torch.Generator()), labels)


def test_per_example_loss_is_one_value_per_image_and_averages_to_the_batch_loss() -> None:
    torch.manual_seed(0)
    unet = build_unet(get_preset("tiny"), 16)
    clean = torch.rand(3, 1, 16, 16) * 2 - 1
    noise, timesteps = draw_diffusion_noise(clean, 1000, torch.Generator().manual_seed(2))
    scheduler = build_noise_scheduler(TrainConfig(data="", max_steps=1, prediction_type="epsilon"))
    per_example = per_example_denoising_loss(unet, scheduler, clean, noise, timesteps)  # snr_gamma None: plain MSE
    prediction = unet(scheduler.add_noise(clean, noise, timesteps), timesteps).sample
    assert torch.allclose(per_example.mean(), torch.nn.functional.mse_loss(prediction, noise))
    one = per_example_denoising_loss(unet, scheduler, clean[1:2], noise[1:2], timesteps[1:2])
    assert torch.allclose(one[0], per_example[1], atol=1e-6)
