"""`prepare --format chestmnist` on small .npz files the tests write with medmnist's keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrsynth.data.prepare import prepare_dataset
from cxrsynth.data.prepared import load_prepared
from cxrsynth.data.sources.chestmnist import find_chestmnist_file
from cxrsynth.errors import CxrsynthError

COUNTS = {"train": 14, "val": 4, "test": 6}


def write_chestmnist(path: Path, side: int = 28, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, np.ndarray]:
    """A ChestMNIST-shaped npz: image i of a split is constant grey (split offset + 5·i); labels cycle through columns."""
    arrays = {}
    for offset, split in enumerate(splits):
        count = COUNTS[split]
        values = (offset * 80 + 5 * np.arange(count)).astype(np.uint8)
        arrays[f"{split}_images"] = np.broadcast_to(values[:, None, None], (count, side, side)).copy()
        labels = np.zeros((count, 14), dtype=np.uint8)
        labels[np.arange(count), np.arange(count) % 14] = 1
        labels[1::4] = 0  # some normal images
        arrays[f"{split}_labels"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def prepare(src: Path | None, out: Path, **options) -> Path:
    defaults = {"format": "chestmnist", "size": 32, "workers": 1, "progress": False}
    return prepare_dataset(src, out, **{**defaults, **options})


def test_chestmnist_npz_keeps_its_test_split_and_maps_labels_to_nih_names(tmp_path: Path) -> None:
    arrays = write_chestmnist(tmp_path / "chestmnist.npz")
    data = load_prepared(prepare(tmp_path / "chestmnist.npz", tmp_path / "data", holdout_fraction=0.25))

    assert data.images.shape == (24, 32, 32)
    test = data.index[data.index["split"] == "test"]
    assert set(test["npz_split"]) == {"test"} and len(test) == COUNTS["test"]
    assert data.meta["counts"]["holdout"]["images"] == 5  # 0.25 × 18 = 4.5, rounded half up
    assert data.meta["patient_ids"] == "per-image" and "no patient ids" in data.meta["patient_ids_note"]
    assert data.meta["test_split"] == "the npz test split"
    for _, record in data.index.iterrows():
        split, i = record["npz_split"], int(record["image_id"].rsplit("_", 1)[1])
        assert np.all(data.images[record["row"]] == arrays[f"{split}_images"][i, 0, 0])
        columns = np.flatnonzero(arrays[f"{split}_labels"][i])
        expected = {
            12: "Pleural_Thickening", 0: "Atelectasis", 1: "Cardiomegaly", 13: "Hernia", 2: "Effusion",
            3: "Infiltration", 4: "Mass", 5: "Nodule", 6: "Pneumonia", 7: "Pneumothorax",
            8: "Consolidation", 9: "Edema", 10: "Emphysema", 11: "Fibrosis",
        }  # fmt: skip
        assert record["labels"] == ("|".join(expected[c] for c in columns) or "No Finding")
    assert "Pleural_Thickening" in data.meta["labels"] and "No Finding" not in data.meta["labels"]


def test_npz_without_test_split_uses_a_seeded_split_and_limit_streams_a_prefix(tmp_path: Path) -> None:
    write_chestmnist(tmp_path / "chestmnist_64.npz", side=64, splits=("train", "val"))
    data = load_prepared(prepare(tmp_path / "chestmnist_64.npz", tmp_path / "data", test_fraction=0.5, limit=16))
    assert len(data.index) == 16 and data.meta["counts"]["test"]["images"] == 8
    assert data.meta["native_size"] == 64
    assert list(data.index["image_id"][-2:]) == ["val_000000", "val_000001"]
    assert np.all(data.images[data.index["row"].iloc[-1]] == 80 + 5)


def test_folder_choice_by_size_and_missing_keys(tmp_path: Path) -> None:
    write_chestmnist(tmp_path / "cache" / "chestmnist.npz")
    write_chestmnist(tmp_path / "cache" / "chestmnist_64.npz", side=64)
    write_chestmnist(tmp_path / "cache" / "chestmnist_128.npz", side=128)
    assert find_chestmnist_file(tmp_path / "cache", 32).name == "chestmnist_64.npz"
    assert find_chestmnist_file(tmp_path / "cache", 28).name == "chestmnist.npz"
    assert find_chestmnist_file(tmp_path / "cache", 256).name == "chestmnist_128.npz"

    np.savez(tmp_path / "broken.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(CxrsynthError, match="broken.npz lacks key.*train_labels"):
        prepare(tmp_path / "broken.npz", tmp_path / "data")
    with pytest.raises(CxrsynthError, match="nothing is downloaded"):
        prepare(tmp_path / "absent", tmp_path / "data")
