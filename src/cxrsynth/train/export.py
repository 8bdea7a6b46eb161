"""What a run shows and leaves behind: progress sample grids and the final ``pipeline/`` folder.

Both use the EMA weights. ``pipeline/`` is a plain diffusers ``DDPMPipeline`` folder
(``model_index.json``, ``unet/`` with safetensors weights, ``scheduler/``), plus
``label_vocabulary.json`` for a conditional model; it loads with
``diffusers.DDPMPipeline.from_pretrained(RUN/pipeline)`` and nothing from cxrsynth.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image
from torchvision.utils import make_grid

from cxrsynth.data.dataset import to_uint8
from cxrsynth.fsutil import atomic_directory, atomic_write_bytes, plain_permissions
from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.model.samplers import sample_batch

PROGRESS_DIR = "progress"
PIPELINE_DIR = "pipeline"


def progress_class_labels(vocabulary: LabelVocabulary, count: int) -> torch.Tensor:
    """Class ids for a progress grid: the label sets from most to least frequent (in vocabulary
    order for a schema vocabulary, which has no counts), repeated."""
    counts = vocabulary.counts if vocabulary.counts is not None else (0,) * len(vocabulary.label_sets)
    by_frequency = sorted(range(len(vocabulary.label_sets)), key=lambda i: (-counts[i], i))
    return torch.tensor([by_frequency[i % len(by_frequency)] for i in range(count)], dtype=torch.long)


def images_to_png(images: torch.Tensor) -> bytes:
    """PNG bytes of a near-square grid of images (B×1×S×S floats in [-1, 1]), 2-pixel gaps."""
    columns = math.ceil(math.sqrt(images.shape[0]))
    grid = make_grid(images.float(), nrow=columns, padding=2, pad_value=-1.0)
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(grid[0])).save(buffer, format="PNG")
    return buffer.getvalue()


def write_progress_grid(
    run_dir: str | Path,
    step: int,
    unet: UNet2DModel,
    noise_scheduler: DDPMScheduler,
    sampler: str,
    steps: int,
    count: int,
    seed: int,
    vocabulary: LabelVocabulary | None,
) -> Path:
    """Sample ``count`` images from ``unet`` (the EMA weights) and save them as ``progress/step_XXXXXXX.png``.

    Images are fixed by ``(seed, index)``, so grids of successive steps show the same noise
    evolving into better images. Sampling runs under a forked RNG: it never changes the
    training's random streams. Conditional grids cycle through the label sets by frequency.

    Returns:
        The PNG's path.
    """
    labels = progress_class_labels(vocabulary, count) if vocabulary is not None else None
    devices = [unet.device] if unet.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        images = sample_batch(unet, noise_scheduler, sampler, steps, range(count), seed, class_labels=labels,
                              null_class=vocabulary.null_class if vocabulary is not None else None)
    return atomic_write_bytes(Path(run_dir) / PROGRESS_DIR / f"step_{step:07d}.png", images_to_png(images))


def export_pipeline(
    run_dir: str | Path, unet: UNet2DModel, noise_scheduler: DDPMScheduler, vocabulary: LabelVocabulary | None
) -> Path:
    """Write ``RUN/pipeline/`` (replacing an older one only once the new one is complete).

    Args:
        run_dir: the run folder.
        unet: the UNet to publish (the EMA weights), float32.
        noise_scheduler: the training DDPM scheduler.
        vocabulary: the label vocabulary of a conditional model, else None.

    Returns:
        The pipeline folder.
    """
    target = Path(run_dir) / PIPELINE_DIR
    with atomic_directory(target, overwrite=True) as folder:
        DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(folder, safe_serialization=True)
        if vocabulary is not None:
            vocabulary.save(folder)
        plain_permissions(folder)  # safetensors writes 0600: the model is meant to be shared like the rest
    return target
