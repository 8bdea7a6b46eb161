"""Builders for evaluate tests: a minimal run folder and a random-but-usable Inception weights file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxrsynth.config import RunFacts, TrainConfig, save_run_config
from cxrsynth.data.prepared import load_prepared
from tests.factories import make_prepared_folder


def write_png_folder(folder: Path, images: np.ndarray, labels: list[str] | None = None) -> Path:
    """Write uint8 images as ``sample_000000.png …`` plus a sample-stage ``manifest.csv`` when labels are given."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"sample_{i:06d}.png" for i in range(len(images))]
    for name, image in zip(names, images):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / name)
    if labels is not None:
        with (folder / "manifest.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "index", "seed", "sampler", "steps", "label", "guidance"])
            for index, (name, label) in enumerate(zip(names, labels)):
                writer.writerow([name, index, 0, "dpmsolver", 25, label, "2" if label else ""])
    return folder


def make_run(root: Path, conditional: bool = True, n_patients: int = 24, size: int = 32) -> Path:
    """A run folder without a model: ``config.yaml`` naming a prepared folder, and ``samples/``.

    The 'synthetic' images are the holdout images with a little noise, labelled with their real
    labels when ``conditional`` (an empty label column otherwise, as the sample stage writes).
    """
    data_dir = make_prepared_folder(root / "prepared", n_patients=n_patients, images_per_patient=2, size=size, seed=5)
    run = root / "run"
    config = TrainConfig(data=str(data_dir), max_steps=1, conditional=conditional)
    facts = RunFacts(
        image_size=size, channels=1, member_images=0, member_patients=0, member_fingerprint="test",
        label_sets=0, num_processes=1, global_batch_size=1, total_steps=1, unet_parameters=0,
    )
    save_run_config(run, config, facts)
    data = load_prepared(data_dir)
    rows = data.rows("holdout")
    noise = np.random.default_rng(0).normal(0, 4, size=(len(rows), size, size))
    images = np.clip(np.asarray(data.images[rows], dtype=float) + noise, 0, 255).astype(np.uint8)
    labels = data.index.loc[rows, "labels"].tolist() if conditional else [""] * len(rows)
    write_png_folder(run / "samples", images, labels)
    return run


def random_inception_weights(path: Path, seed: int = 0) -> Path:
    """Save a torch-fidelity InceptionV3 state dict with seeded He-normal weights (no download).

    The module's default initialisation gives degenerate features (std ~5e-8, NOTES.md), so a test
    built on it would pass whatever the code did; He-normal weights keep activations alive.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as module

    original_loader, original_load = module.load_state_dict_from_url, module.FeatureExtractorInceptionV3.load_state_dict
    module.load_state_dict_from_url = lambda *args, **kwargs: {}
    module.FeatureExtractorInceptionV3.load_state_dict = lambda self, *args, **kwargs: None
    try:
        network = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        module.load_state_dict_from_url = original_loader
        module.FeatureExtractorInceptionV3.load_state_dict = original_load
    generator = torch.Generator().manual_seed(seed)
    for layer in network.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
    torch.save(network.state_dict(), path)
    return path


def add_tiny_pipeline(run: Path, data_dir: Path, conditional: bool, size: int = 32, seed: int = 0) -> Path:
    """Write ``RUN/pipeline`` as `cxrsynth train` does: a random-init 1-channel diffusers DDPMPipeline
    (plus the label vocabulary of the member split when ``conditional``), so the sample stage can run."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from cxrsynth.model.conditioning import LabelVocabulary

    data = load_prepared(data_dir)
    vocabulary = LabelVocabulary.from_labels(data.index.loc[data.rows("member"), "labels"].tolist()) if conditional else None
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=vocabulary.num_class_embeds if vocabulary else None,
    )
    pipeline_dir = run / "pipeline"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        pipeline_dir, safe_serialization=True
    )
    if vocabulary is not None:
        vocabulary.save(pipeline_dir)
    return pipeline_dir
