"""The prepared-data folder contract (DESIGN.md): read it, validate it, select from it.

A prepared folder holds:

* ``images.npy`` — uint8 array N×S×S, grayscale, memory-mappable;
* ``index.csv`` — one row per image: ``row, image_id, patient_id, split, labels`` plus kept
  metadata; ``labels`` are finding names joined by ``|`` (``No Finding`` when none);
* ``meta.json`` — source, format, size, seed, split fractions, counts, and ``labels``: the
  ordered list of finding names (``No Finding`` excluded) that defines label vectors.

Label vectors are multi-hot over ``meta["labels"]``; an all-zero vector means ``No Finding``.
Splits are by patient: a patient in two splits is an error wherever it is detected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrsynth.errors import CxrsynthError

SPLITS: tuple[str, ...] = ("member", "holdout", "test")
NO_FINDING = "No Finding"
LABEL_SEPARATOR = "|"
INDEX_COLUMNS: tuple[str, ...] = ("row", "image_id", "patient_id", "split", "labels")
IMAGES_FILE = "images.npy"
INDEX_FILE = "index.csv"
META_FILE = "meta.json"


def split_labels(labels: str) -> list[str]:
    """Turn an ``index.csv`` labels cell (``A|B`` or ``No Finding``) into finding names.

    Returns:
        The finding names, without ``No Finding``; empty for a normal image.
    """
    if not isinstance(labels, str):
        return []
    return [name.strip() for name in labels.split(LABEL_SEPARATOR) if name.strip() and name.strip() != NO_FINDING]


def join_labels(findings: list[str]) -> str:
    """Inverse of :func:`split_labels`: ``No Finding`` for an empty list, else names joined by ``|``."""
    return LABEL_SEPARATOR.join(findings) if findings else NO_FINDING


def check_patient_splits(index: pd.DataFrame, source: str = "index") -> None:
    """Refuse any patient that appears in more than one split.

    Args:
        index: a frame with ``patient_id`` and ``split`` columns.
        source: what the frame came from, named in the error.

    Raises:
        CxrsynthError: naming up to five overlapping patients and their splits.
    """
    splits_per_patient = index.groupby("patient_id")["split"].nunique()
    overlapping = splits_per_patient[splits_per_patient > 1]
    if len(overlapping):
        examples = []
        for patient in list(overlapping.index)[:5]:
            found = sorted(index.loc[index["patient_id"] == patient, "split"].unique())
            examples.append(f"{patient} in {'+'.join(found)}")
        raise CxrsynthError(
            f"{source}: {len(overlapping)} patient(s) appear in more than one split ({', '.join(examples)}); "
            "splits must be by patient, or members leak into the holdout and test sets",
            "make the patient lists disjoint (e.g. fix overlapping train_val_list.txt / test_list.txt) "
            "and prepare again",
        )


@dataclass(frozen=True)
class PreparedData:
    """A validated prepared-data folder.

    Attributes:
        root: the folder.
        images: the memory-mapped uint8 array N×S×S (read-only).
        index: ``index.csv`` as a frame, ordered by ``row`` (row i describes ``images[i]``).
        meta: ``meta.json``.
    """

    root: Path
    images: np.ndarray
    index: pd.DataFrame
    meta: dict = field(repr=False)

    @property
    def size(self) -> int:
        """Image side in pixels."""
        return int(self.images.shape[1])

    @property
    def label_names(self) -> list[str]:
        """Ordered finding names that label vectors are over (``No Finding`` excluded)."""
        return list(self.meta.get("labels", []))

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row numbers (into ``images``) of one split, or of all images when ``split`` is None.

        Raises:
            CxrsynthError: for an unknown split name.
        """
        if split is None:
            return self.index["row"].to_numpy(dtype=np.int64)
        if split not in SPLITS:
            raise CxrsynthError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
        return self.index.loc[self.index["split"] == split, "row"].to_numpy(dtype=np.int64)

    def label_matrix(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Multi-hot float32 label vectors (len(rows) × len(label_names)) for the given rows."""
        selected = self.index if rows is None else self.index.iloc[np.asarray(rows, dtype=np.int64)]
        position = {name: i for i, name in enumerate(self.label_names)}
        matrix = np.zeros((len(selected), len(position)), dtype=np.float32)
        for i, cell in enumerate(selected["labels"].tolist()):
            for name in split_labels(cell):
                if name in position:
                    matrix[i, position[name]] = 1.0
        return matrix

    def patient_rows(self, split: str) -> dict[str, np.ndarray]:
        """Map each patient of ``split`` to the rows of their images (patients in sorted order)."""
        subset = self.index.loc[self.index["split"] == split, ["patient_id", "row"]]
        return {
            str(patient): group["row"].to_numpy(dtype=np.int64)
            for patient, group in sorted(subset.groupby("patient_id"), key=lambda item: str(item[0]))
        }

    def one_image_per_patient(self, split: str, seed: int) -> np.ndarray:
        """One seeded random image row per patient of ``split`` (patients in sorted order)."""
        rng = np.random.default_rng(seed)
        return np.array([rng.choice(rows) for rows in self.patient_rows(split).values()], dtype=np.int64)


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CxrsynthError(f"{path} is not valid JSON ({exc})", "prepare the data again") from None


def load_prepared(path: str | Path) -> PreparedData:
    """Open and validate a prepared-data folder written by ``cxrsynth data prepare``.

    Args:
        path: the prepared folder.

    Returns:
        The :class:`PreparedData`, with ``images.npy`` memory-mapped read-only.

    Raises:
        CxrsynthError: when a file is missing or unreadable, the array is not uint8 N×S×S,
            ``index.csv`` lacks a column, names an unknown split, disagrees with the array,
            or puts a patient in two splits.
    """
    root = Path(path)
    prepare_hint = "run `cxrsynth data prepare SRC --format … --size S --out DATA` and point to DATA"
    if not root.is_dir():
        raise CxrsynthError(f"prepared data folder {root} does not exist", prepare_hint)
    for name in (IMAGES_FILE, INDEX_FILE, META_FILE):
        if not (root / name).is_file():
            raise CxrsynthError(f"{root} is not a prepared data folder: {name} is missing", prepare_hint)
    try:
        images = np.load(root / IMAGES_FILE, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise CxrsynthError(f"{root / IMAGES_FILE} cannot be read as a numpy array ({exc})", prepare_hint) from None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise CxrsynthError(
            f"{root / IMAGES_FILE} must be uint8 N×S×S, found {images.dtype} {tuple(images.shape)}", prepare_hint
        )
    index = pd.read_csv(root / INDEX_FILE, dtype={"image_id": str, "patient_id": str, "split": str, "labels": str})
    missing = [column for column in INDEX_COLUMNS if column not in index.columns]
    if missing:
        raise CxrsynthError(f"{root / INDEX_FILE} lacks column(s) {', '.join(missing)}", prepare_hint)
    index = index.sort_values("row").reset_index(drop=True)
    if len(index) != images.shape[0] or not np.array_equal(index["row"].to_numpy(), np.arange(len(index))):
        raise CxrsynthError(
            f"{root / INDEX_FILE} has {len(index)} rows numbered differently from the {images.shape[0]} images "
            f"in {IMAGES_FILE}",
            prepare_hint,
        )
    unknown = sorted(set(index["split"]) - set(SPLITS))
    if unknown:
        raise CxrsynthError(f"{root / INDEX_FILE} names unknown split(s) {unknown}", f"splits are {', '.join(SPLITS)}")
    index["labels"] = index["labels"].fillna(NO_FINDING)
    check_patient_splits(index, str(root / INDEX_FILE))
    return PreparedData(root=root, images=images, index=index, meta=_read_meta(root / META_FILE))
