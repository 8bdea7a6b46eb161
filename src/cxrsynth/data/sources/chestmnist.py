"""ChestMNIST (MedMNIST v2) ``.npz`` files: 28², 64², 128² or 224² downsized ChestX-ray14 images.

The file holds ``train_images``/``train_labels``, ``val_images``/``val_labels`` and usually
``test_images``/``test_labels``: images N×H×W uint8, labels N×14 multi-hot in ChestMNIST order,
which is the NIH order (``pleural`` is ``Pleural_Thickening``). Nothing is ever downloaded: SRC (or
``--root``, or medmnist's default cache ``~/.medmnist``) must already hold the file.

The npz's test split becomes ``test``; ``member``/``holdout`` are drawn from train+val. ChestMNIST
carries no patient ids, so each image is its own patient — meta.json says so. Images are streamed
from the archive a row at a time, so memory stays small even for the 224² file.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from cxrsynth.data.prepared import join_labels
from cxrsynth.data.sources import SOURCE_COLUMN, PixelTask, SourceListing
from cxrsynth.data.sources.nih import NIH_FINDINGS
from cxrsynth.errors import CxrsynthError

MEDMNIST_LABEL_NAMES: tuple[str, ...] = (
    "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia",
)  # fmt: skip
"""ChestMNIST's label names, column by column of ``*_labels``."""
CHESTMNIST_TO_NIH: dict[str, str] = dict(zip(MEDMNIST_LABEL_NAMES, NIH_FINDINGS))
DEFAULT_ROOT = Path("~/.medmnist").expanduser()
NPZ_SPLITS: tuple[str, ...] = ("train", "val", "test")
PATIENT_IDS_NOTE = (
    "ChestMNIST has no patient ids: each image is treated as its own patient. Its test split follows the "
    "official patient-wise NIH split, but member and holdout are drawn by image from train+val, so one real "
    "patient's images may be in both; membership-inference results may then understate leakage"
)
_FIX = "give the ChestMNIST .npz (e.g. chestmnist_64.npz from medmnist) as SRC or a folder holding it with --root"


def _native_size(path: Path) -> int:
    """Image side a medmnist file name implies: ``chestmnist.npz`` → 28, ``chestmnist_128.npz`` → 128."""
    match = re.fullmatch(r"chestmnist(?:_(\d+))?\.npz", path.name)
    return int(match.group(1)) if match and match.group(1) else 28


def find_chestmnist_file(src: str | Path | None, size: int) -> Path:
    """The ChestMNIST ``.npz`` to read.

    Args:
        src: the ``.npz`` itself, or a folder with ``chestmnist*.npz``; None means medmnist's
            default cache ``~/.medmnist``.
        size: the prepared size; from a folder, the smallest file at least this size is chosen
            (the largest when none is).

    Raises:
        CxrsynthError: when the file or folder does not exist or holds no ChestMNIST file.
    """
    location = Path(src) if src is not None else DEFAULT_ROOT
    if location.is_file():
        return location
    if not location.is_dir():
        raise CxrsynthError(f"ChestMNIST source {location} does not exist (nothing is downloaded)", _FIX)
    candidates = sorted(location.glob("chestmnist*.npz"), key=_native_size)
    if not candidates:
        raise CxrsynthError(f"{location} holds no chestmnist*.npz file (nothing is downloaded)", _FIX)
    large_enough = [path for path in candidates if _native_size(path) >= size]
    return large_enough[0] if large_enough else candidates[-1]


def _read_npy_header(stream) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(stream)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(stream)
    if fortran_order:
        raise CxrsynthError(f"array in Fortran order in {getattr(stream, 'name', 'npz')}", "save it in C order")
    return tuple(shape), dtype


def _member_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in the archive, read from headers only."""
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for name in archive.namelist():
                if name.endswith(".npy"):
                    with archive.open(name) as stream:
                        shapes[name[: -len(".npy")]] = _read_npy_header(stream)
            return shapes
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CxrsynthError(f"{path} is not a readable .npz archive ({exc})", _FIX) from None


def _row_pixels(row: np.ndarray) -> np.ndarray:
    """One stored ChestMNIST image (H×W, H×W×1 or H×W×3 uint8) as a 2-D uint8 array."""
    if row.ndim == 3:
        row = row[..., 0] if row.shape[-1] == 1 else (row[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]).round()
    return np.asarray(row, dtype=np.uint8)


def _stream_rows(path: Path, locators: list[str]) -> Iterator[PixelTask]:
    """Yield the images named by ``split_images:index`` locators, in order, reading each array forwards once."""
    archive = zipfile.ZipFile(path)
    try:
        key, stream, position, row_bytes, row_shape, dtype = None, None, 0, 0, (), np.dtype(np.uint8)
        for locator in locators:
            wanted_key, index_text = locator.rsplit(":", 1)
            index = int(index_text)
            if wanted_key != key or index < position:
                if stream is not None:
                    stream.close()
                stream = archive.open(f"{wanted_key}.npy")
                shape, dtype = _read_npy_header(stream)
                key, position, row_shape = wanted_key, 0, shape[1:]
                row_bytes = int(np.prod(row_shape)) * dtype.itemsize
            while position < index:  # skip rows not asked for, in bounded chunks
                stream.read(row_bytes * min(index - position, 256))
                position = min(index, position + 256)
            data = stream.read(row_bytes)
            position += 1
            if len(data) != row_bytes:
                raise CxrsynthError(f"{path}: {wanted_key} ends before row {index}", _FIX)
            yield _row_pixels, np.frombuffer(data, dtype=dtype).reshape(row_shape)
        if stream is not None:
            stream.close()
    finally:
        archive.close()


def _labels_of(path: Path, split: str, count: int) -> list[str]:
    with np.load(path, allow_pickle=False) as archive:
        labels = np.asarray(archive[f"{split}_labels"])
    if labels.shape != (count, len(MEDMNIST_LABEL_NAMES)):
        raise CxrsynthError(
            f"{path}: {split}_labels has shape {labels.shape}, expected ({count}, {len(MEDMNIST_LABEL_NAMES)})", _FIX
        )
    return [join_labels([NIH_FINDINGS[j] for j in np.flatnonzero(row)]) for row in labels]


def list_chestmnist(src: str | Path | None, size: int = 64) -> SourceListing:
    """List a ChestMNIST ``.npz`` (labels read, images left in the archive).

    Args:
        src: the ``.npz``, a folder holding ``chestmnist*.npz``, or None for ``~/.medmnist``.
        size: the prepared size (chooses among several files in a folder).

    Returns:
        The listing; images ``train_000000``…, each its own patient; kept metadata ``npz_split``.

    Raises:
        CxrsynthError: when no file is found, keys are missing, or shapes disagree.
    """
    path = find_chestmnist_file(src, size)
    shapes = _member_shapes(path)
    splits = [split for split in NPZ_SPLITS if f"{split}_images" in shapes or f"{split}_labels" in shapes]
    needed = [f"{split}_{part}" for split in sorted(set(splits) | {"train", "val"}) for part in ("images", "labels")]
    missing = [key for key in needed if key not in shapes]
    if missing:
        raise CxrsynthError(f"{path} lacks key(s) {', '.join(missing)} (has: {', '.join(sorted(shapes))})", _FIX)
    frames = []
    for split in splits:
        image_shape, dtype = shapes[f"{split}_images"]
        if len(image_shape) not in (3, 4) or dtype != np.uint8:
            raise CxrsynthError(f"{path}: {split}_images is {dtype} {image_shape}, expected uint8 N×H×W", _FIX)
        count = image_shape[0]
        ids = [f"{split}_{i:06d}" for i in range(count)]
        frames.append(
            pd.DataFrame(
                {
                    "image_id": ids,
                    "patient_id": ids,
                    "labels": _labels_of(path, split, count),
                    "npz_split": split,
                    SOURCE_COLUMN: [f"{split}_images:{i}" for i in range(count)],
                }
            )
        )
    records = pd.concat(frames, ignore_index=True)
    has_test = "test" in splits
    return SourceListing(
        format="chestmnist",
        source=path,
        records=records,
        stream=lambda subset: _stream_rows(path, subset[SOURCE_COLUMN].tolist()),
        test_patients=frozenset(records.loc[records["npz_split"] == "test", "patient_id"]) if has_test else None,
        test_split="the npz test split" if has_test else "seeded split (the npz has no test split)",
        patient_ids_real=False,
        patient_ids_note=PATIENT_IDS_NOTE,
        extra_meta={"npz": path.name, "native_size": int(shapes["train_images"][0][1]), "label_source": "npz labels"},
    )
