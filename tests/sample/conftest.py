"""Tiny trained-model stand-ins for the sampling tests: real diffusers pipeline folders on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from cxrsynth.model.conditioning import LabelVocabulary

SIZE = 16


def tiny_unet(num_class_embeds: int | None = None, size: int = SIZE, seed: int = 0) -> UNet2DModel:
    """A random-init 1-channel UNet2DModel (~0.5M params), attention at the lowest level."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=num_class_embeds,
    ).eval()


def make_run(
    root: Path,
    label_cells: Sequence[str] | None = None,
    class_offset: float | None = None,
    seed: int = 0,
) -> Path:
    """Write a run folder with ``pipeline/`` as `cxrsynth train` would (DDPMPipeline + vocabulary).

    Args:
        root: the run folder to create.
        label_cells: training label cells; a conditional model with their vocabulary when given.
        class_offset: if set, class embedding row ``k`` becomes ``k * class_offset`` (large, distinct
            offsets so that labels visibly change images even in an untrained UNet).
        seed: weight-init seed.

    Returns:
        ``root``.
    """
    vocabulary = LabelVocabulary.from_labels(label_cells) if label_cells is not None else None
    unet = tiny_unet(vocabulary.num_class_embeds if vocabulary else None, seed=seed)
    if class_offset is not None:
        assert unet.class_embedding is not None
        with torch.no_grad():
            rows = torch.arange(unet.class_embedding.num_embeddings, dtype=torch.float32)[:, None]
            unet.class_embedding.weight.copy_(rows * class_offset * torch.ones_like(unet.class_embedding.weight))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    pipeline_dir = root / "pipeline"
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(pipeline_dir, safe_serialization=True)
    if vocabulary is not None:
        vocabulary.save(pipeline_dir)
    return root


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """Forget accelerate's process-wide state after each test (generate_samples sets it, e.g. cpu=True)."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


TRAIN_LABELS: tuple[str, ...] = ("No Finding",) * 6 + ("Cardiomegaly",) * 3 + ("Cardiomegaly|Effusion",)


@pytest.fixture
def uncond_run(tmp_path: Path) -> Path:
    """An unconditional tiny run."""
    return make_run(tmp_path / "uncond")


@pytest.fixture
def cond_run(tmp_path: Path) -> Path:
    """A class-conditional tiny run with 3 label sets (counts 3, 1, 6) + null class."""
    return make_run(tmp_path / "cond", label_cells=TRAIN_LABELS)
