"""Torch datasets over a prepared-data folder: memory-mapped, no image decoding while training.

Pixel convention everywhere in cxrsynth: uint8 0..255 on disk, float32 in [-1, 1] in models.
:func:`to_model_range` and :func:`to_uint8` are the one place that converts between them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrsynth.data.prepared import PreparedData, load_prepared


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (…×S×S) → float32 tensor in [-1, 1] with the same shape."""
    # np.array copies: prepared images are read-only memmaps, which torch warns about wrapping
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
    return tensor.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float images in [-1, 1] (values outside are clipped) → uint8 numpy array, same shape."""
    scaled = ((images.detach().to(torch.float32).cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).numpy()


def _as_prepared(data: PreparedData | str | Path) -> PreparedData:
    return data if isinstance(data, PreparedData) else load_prepared(data)


class PreparedImageDataset(Dataset):
    """Images of one split (or explicit rows) of a prepared folder.

    Items are dicts: ``image`` float32 1×S×S in [-1, 1], ``labels`` float32 multi-hot over
    ``data.label_names``, ``row`` the image's row in ``images.npy``.

    Args:
        data: a :class:`PreparedData` or the path of a prepared folder.
        split: which split to serve (``member`` by default: the only split a model trains on).
        rows: explicit rows instead of a split.
    """

    def __init__(self, data: PreparedData | str | Path, split: str | None = "member", rows: np.ndarray | None = None) -> None:
        self.data = _as_prepared(data)
        self.rows = np.asarray(rows if rows is not None else self.data.rows(split), dtype=np.int64)
        self.labels = self.data.label_matrix(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | int]:
        row = int(self.rows[item])
        return {
            "image": to_model_range(self.data.images[row])[None],
            "labels": torch.from_numpy(self.labels[item]),
            "row": row,
        }


class PatientImageDataset(Dataset):
    """One record per patient; each access draws one of that patient's images at random.

    Used where the unit is the patient (patient-level DP, the audit). The draw is a pure function
    of ``(seed, epoch, patient)``, so runs are reproducible and resumable: call
    :meth:`set_epoch` with the epoch (or step) number before iterating.

    Items are dicts like :class:`PreparedImageDataset`'s, plus ``patient`` (index of the patient).

    Args:
        data: a :class:`PreparedData` or the path of a prepared folder.
        split: the split whose patients are the records.
        seed: seed of the per-patient image draws.
    """

    def __init__(self, data: PreparedData | str | Path, split: str = "member", seed: int = 0) -> None:
        self.data = _as_prepared(data)
        by_patient = self.data.patient_rows(split)
        self.patient_ids = list(by_patient)
        self.patient_rows = list(by_patient.values())
        self.seed = seed
        self.epoch = 0
        self._labels = self.data.label_matrix()

    def set_epoch(self, epoch: int) -> None:
        """Choose which draw of images the next accesses return."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.patient_rows)

    def row_for(self, patient: int) -> int:
        """The image row drawn for ``patient`` (its index) in the current epoch."""
        rows = self.patient_rows[patient]
        rng = np.random.default_rng([self.seed, self.epoch, patient])
        return int(rows[rng.integers(len(rows))])

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | int]:
        row = self.row_for(item)
        return {
            "image": to_model_range(self.data.images[row])[None],
            "labels": torch.from_numpy(self._labels[row]),
            "row": row,
            "patient": item,
        }
