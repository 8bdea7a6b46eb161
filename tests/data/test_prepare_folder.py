"""`prepare --format folder`: PNG/JPEG files the tests write, with and without a labels CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrsynth.data.prepare import prepare_dataset
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError


def write_images(root: Path) -> list[str]:
    """Six constant-grey images in nested folders, PNG and JPEG; returns their relative paths."""
    relative = ["a/1.png", "a/2.png", "b/3.jpg", "b/c/4.jpeg", "5.PNG", "6.png"]
    for i, name in enumerate(relative):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((30, 44), 40 + 30 * i, dtype=np.uint8)).save(path, format="JPEG" if "jp" in name else "PNG")
    (root / "notes.txt").write_text("not an image")
    return relative


def prepare(src: Path, out: Path, **options) -> Path:
    defaults = {"format": "folder", "size": 32, "workers": 1, "progress": False}
    return prepare_dataset(src, out, **{**defaults, **options})


def test_folder_without_csv_makes_each_image_its_own_patient(tmp_path: Path) -> None:
    relative = write_images(tmp_path / "src")
    data = load_prepared(prepare(tmp_path / "src", tmp_path / "data", test_fraction=0.34))

    assert sorted(data.index["image_id"]) == sorted(relative)
    assert list(data.index["patient_id"]) == list(data.index["image_id"])
    assert list(data.index["file"]) == list(data.index["image_id"])
    assert set(data.index["labels"]) == {"No Finding"} and data.meta["labels"] == []
    assert data.meta["patient_ids"] == "per-image" and "own patient" in data.meta["patient_ids_note"]
    assert data.meta["counts"]["test"]["images"] == 2
    for _, record in data.index.iterrows():  # JPEG is lossy, PNG exact
        expected = 40 + 30 * relative.index(record["image_id"])
        assert np.abs(data.images[record["row"]].astype(int) - expected).max() <= 2


def test_folder_with_csv_groups_images_by_patient(tmp_path: Path) -> None:
    write_images(tmp_path / "src")
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "file,patient_id,labels\n"
        "a/1.png,alice,Effusion\na/2.png,alice,\nb/3.jpg,bob,Nodule|Mass\nb/c/4.jpeg,carol,No Finding\n5.PNG,dave,Mass\n"
    )
    data = load_prepared(prepare(tmp_path / "src", tmp_path / "data", labels_csv=csv, test_fraction=0.25, holdout_fraction=0.34))

    assert len(data.index) == 5 and data.meta["unlisted_files_ignored"] == 1
    assert data.meta["patient_ids"] == "real" and "patient_ids_note" not in data.meta
    assert data.index.groupby("patient_id")["split"].nunique().max() == 1
    assert dict(zip(data.index["image_id"], data.index["labels"]))["b/3.jpg"] == "Nodule|Mass"
    assert data.meta["labels"] == ["Effusion", "Mass", "Nodule"]
    assert {split: c["patients"] for split, c in data.meta["counts"].items()} == {"test": 1, "holdout": 1, "member": 2}


def test_folder_csv_problems_are_clear_errors(tmp_path: Path) -> None:
    write_images(tmp_path / "src")
    (tmp_path / "no_patient.csv").write_text("file,labels\na/1.png,Mass\n")
    with pytest.raises(CxrsynthError, match="no_patient.csv.*'patient_id'"):
        prepare(tmp_path / "src", tmp_path / "a", labels_csv=tmp_path / "no_patient.csv")
    (tmp_path / "missing.csv").write_text("file,patient_id,labels\na/1.png,p1,\nnope.png,p2,\n")
    with pytest.raises(CxrsynthError, match="nope.png"):
        prepare(tmp_path / "src", tmp_path / "b", labels_csv=tmp_path / "missing.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CxrsynthError, match="contains no PNG or JPEG"):
        prepare(tmp_path / "empty", tmp_path / "c")
