"""Why some DDIM samples of a briefly trained model come out speckled: one factor at a time.

Takes a trained run (default: the demo's, ``demo/run``), re-generates the same image indices under
variants of the sampling set-up (guidance scale, steps, timestep spacing, EMA or raw weights,
x0 clipping) and prints each variant's artefact rate (:mod:`cxrsynth.evaluate.artefacts`,
threshold = 99.5% quantile of the member images' noise scores) in one run.

    python bench/speckle.py --run demo/run --data demo/data --images 96
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from cxrsynth.data.dataset import to_uint8
from cxrsynth.data.prepared import load_prepared
from cxrsynth.evaluate.artefacts import noise_scores
from cxrsynth.model.samplers import sample_batch
from cxrsynth.sample import load_sampling_model
from cxrsynth.train.checkpoint import list_checkpoints


@dataclass(frozen=True)
class Variant:
    """One sampling set-up."""

    name: str
    guidance: float = 2.0
    steps: int = 25
    sampler: str = "ddim"
    spacing: str | None = None
    raw_weights: bool = False
    clip: bool = True


def _raw_unet(run: Path, template: UNet2DModel) -> UNet2DModel:
    _, folder = list_checkpoints(run)[-1]
    unet = UNet2DModel.from_config(template.config)
    unet.load_state_dict(load_file(folder / "unet.safetensors"))
    return unet.eval().requires_grad_(False)


def generate(run: Path, variant: Variant, indices: list[int], labels: list[str], batch: int = 32) -> np.ndarray:
    """uint8 images of ``indices`` under ``variant`` (seed 0, the manifest's label sets)."""
    model = load_sampling_model(run)
    unet = _raw_unet(run, model.unet) if variant.raw_weights else model.unet
    config = dict(model.scheduler.config)
    if variant.spacing:
        config["timestep_spacing"] = variant.spacing
    config["clip_sample"] = variant.clip
    scheduler = type(model.scheduler).from_config(config)
    class_ids = model.vocabulary.encode(labels) if model.vocabulary is not None else None
    images = []
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        ids = None if class_ids is None else class_ids[start:start + batch]
        null = model.vocabulary.null_class if model.vocabulary is not None else None
        out = sample_batch(unet, scheduler, variant.sampler, variant.steps, chunk, seed=0, class_labels=ids,
                           guidance_scale=variant.guidance if ids is not None else 1.0, null_class=null)
        images.append(to_uint8(out[:, 0]))
    return np.concatenate(images)


def main() -> None:
    """Print the artefact rate of every variant on the same indices."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("demo/run"))
    parser.add_argument("--data", type=Path, default=Path("demo/data"))
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--variants", default="all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with open(args.run / "samples" / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))[: args.images]
    indices, labels = [int(row["index"]) for row in rows], [row["label"] or "No Finding" for row in rows]
    real = noise_scores(np.asarray(load_prepared(args.data).images))
    threshold = float(np.quantile(real, 0.995))
    base = Variant("ddim-25, guidance 2, EMA (demo default)")
    variants = [
        base,
        replace(base, name="guidance 1 (no CFG)", guidance=1.0),
        replace(base, name="guidance 1.5", guidance=1.5),
        replace(base, name="trailing timestep spacing", spacing="trailing"),
        replace(base, name="ddim-100", steps=100),
        replace(base, name="raw (non-EMA) weights", raw_weights=True),
        replace(base, name="no x0 clipping", clip=False),
        replace(base, name="ddpm-250", sampler="ddpm", steps=250),
        replace(base, name="ddim-10", steps=10),
        replace(base, name="ddim-15", steps=15),
        replace(base, name="ddim-15, trailing", steps=15, spacing="trailing"),
        replace(base, name="ddim-50", steps=50),
        replace(base, name="ddpm-25 (stochastic)", sampler="ddpm", steps=25),
        replace(base, name="ddpm-50 (stochastic)", sampler="ddpm", steps=50),
        replace(base, name="ddpm-100 (stochastic)", sampler="ddpm", steps=100),
        replace(base, name="dpmsolver-25 (deterministic, x0 thresholding)", sampler="dpmsolver", steps=25),
    ]
    if args.variants != "all":
        wanted = set(args.variants.split(","))
        variants = [v for i, v in enumerate(variants) if str(i) in wanted]
    print(f"threshold {threshold:.2f} gray levels (99.5% of {len(real)} member images); {len(indices)} indices")
    print("| variant | artefact rate | median noise score | seconds |")
    print("|---|---|---|---|")
    for variant in variants:
        started = time.perf_counter()
        scores = noise_scores(generate(args.run, variant, indices, labels))
        print(f"| {variant.name} | {(scores > threshold).mean():.1%} | {np.median(scores):.2f} | "
              f"{time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
