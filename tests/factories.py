"""Builders of small, real on-disk inputs for tests (no downloads, no fixtures hidden in binaries)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxrsynth.data.prepared import join_labels


def smooth_patient_images(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``count`` uint8 size×size images sharing one random smooth 'anatomy' plus small per-image noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.zeros((size, size))
    for _ in range(4):
        cy, cx, width = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.3)
        base += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    base = base / base.max()
    images = base[None] + rng.normal(0.0, 0.03, size=(count, size, size))
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def make_prepared_folder(
    root: Path,
    n_patients: int = 12,
    images_per_patient: int = 2,
    size: int = 32,
    findings: Sequence[str] = ("Cardiomegaly", "Nodule"),
    split_cycle: Sequence[str] = ("member", "member", "holdout", "test"),
    seed: int = 0,
) -> Path:
    """Write a valid prepared-data folder (DESIGN.md contract) directly, without ``prepare``.

    Patients are assigned to splits by cycling through ``split_cycle``; each image gets a random
    subset of ``findings`` (or none).

    Returns:
        ``root``, created.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    blocks, records = [], []
    for patient in range(n_patients):
        blocks.append(smooth_patient_images(rng, images_per_patient, size))
        for follow_up in range(images_per_patient):
            chosen = [name for name in findings if rng.random() < 0.3]
            records.append(
                {
                    "row": len(records),
                    "image_id": f"{patient + 1:08d}_{follow_up:03d}.png",
                    "patient_id": f"{patient + 1:08d}",
                    "split": split_cycle[patient % len(split_cycle)],
                    "labels": join_labels(chosen),
                }
            )
    np.save(root / "images.npy", np.concatenate(blocks))
    index = pd.DataFrame.from_records(records)
    index.to_csv(root / "index.csv", index=False)
    counts = {split: int((index["split"] == split).sum()) for split in ("member", "holdout", "test")}
    meta = {
        "source": "tests.factories",
        "format": "synthetic",
        "size": size,
        "seed": seed,
        "labels": list(findings),
        "counts": counts,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return root
