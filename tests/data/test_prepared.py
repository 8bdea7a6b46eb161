"""Reading prepared data: load_prepared validation, and the torch datasets over it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrsynth.data.dataset import PatientImageDataset, PreparedImageDataset, to_model_range, to_uint8
from cxrsynth.data.prepared import load_prepared, split_labels
from cxrsynth.errors import CxrsynthError
from tests.factories import make_prepared_folder


def test_valid_folder_loads_memory_mapped(tiny_prepared: Path) -> None:
    data = load_prepared(tiny_prepared)
    assert isinstance(data.images, np.memmap) and data.images.dtype == np.uint8
    assert data.size == 32 and len(data.index) == 24
    assert set(data.rows("member")) | set(data.rows("holdout")) | set(data.rows("test")) == set(range(24))


@pytest.mark.parametrize("name", ["images.npy", "index.csv", "meta.json"])
def test_missing_file_is_named(tiny_prepared: Path, name: str) -> None:
    (tiny_prepared / name).unlink()
    with pytest.raises(CxrsynthError, match=f"{name} is missing"):
        load_prepared(tiny_prepared)


def test_missing_folder_and_bad_json(tmp_path: Path, tiny_prepared: Path) -> None:
    with pytest.raises(CxrsynthError, match="does not exist"):
        load_prepared(tmp_path / "nowhere")
    (tiny_prepared / "meta.json").write_text("{not json")
    with pytest.raises(CxrsynthError, match="meta.json is not valid JSON"):
        load_prepared(tiny_prepared)


@pytest.mark.parametrize(
    "array",
    [np.zeros((24, 32, 32), dtype=np.float32), np.zeros((24, 32, 16), dtype=np.uint8), np.zeros((24, 32), dtype=np.uint8)],
    ids=["float32", "not-square", "2-d"],
)
def test_wrong_array_type_or_shape_is_refused(tiny_prepared: Path, array: np.ndarray) -> None:
    np.save(tiny_prepared / "images.npy", array)
    with pytest.raises(CxrsynthError, match="must be uint8 N×S×S"):
        load_prepared(tiny_prepared)


def test_index_that_disagrees_with_the_array_is_refused(tiny_prepared: Path) -> None:
    index = pd.read_csv(tiny_prepared / "index.csv", dtype=str)
    index.iloc[:-1].to_csv(tiny_prepared / "index.csv", index=False)
    with pytest.raises(CxrsynthError, match="23 rows"):
        load_prepared(tiny_prepared)
    index.drop(columns=["patient_id"]).to_csv(tiny_prepared / "index.csv", index=False)
    with pytest.raises(CxrsynthError, match="lacks column.*patient_id"):
        load_prepared(tiny_prepared)
    index.assign(split=index["split"].replace({"test": "validation"})).to_csv(tiny_prepared / "index.csv", index=False)
    with pytest.raises(CxrsynthError, match="unknown split.*validation"):
        load_prepared(tiny_prepared)


def test_patient_in_two_splits_is_refused(tiny_prepared: Path) -> None:
    index = pd.read_csv(tiny_prepared / "index.csv", dtype=str)
    first_member = index.index[index["split"] == "member"][0]
    index.loc[first_member, "split"] = "test"  # one of the patient's two images moves to test
    index.to_csv(tiny_prepared / "index.csv", index=False)
    with pytest.raises(CxrsynthError, match="more than one split"):
        load_prepared(tiny_prepared)


def test_dataset_items_are_in_model_range_with_label_vectors(tiny_prepared: Path) -> None:
    data = load_prepared(tiny_prepared)
    dataset = PreparedImageDataset(data, split="member")
    assert len(dataset) == len(data.rows("member"))
    for i in range(len(dataset)):
        item = dataset[i]
        image, row = item["image"], item["row"]
        assert image.dtype == torch.float32 and image.shape == (1, 32, 32)
        assert image.min() >= -1.0 and image.max() <= 1.0
        assert np.array_equal(to_uint8(image[0]), data.images[row])  # exact round trip
        expected = [name in split_labels(data.index.loc[row, "labels"]) for name in data.label_names]
        assert item["labels"].tolist() == [float(flag) for flag in expected]
    assert to_model_range(np.array([0, 255], dtype=np.uint8)).tolist() == [-1.0, 1.0]


def test_patient_dataset_is_deterministic_per_seed_and_epoch(tmp_path: Path) -> None:
    root = make_prepared_folder(tmp_path / "p", n_patients=16, images_per_patient=3, split_cycle=("member",))
    data = load_prepared(root)

    def draws(seed: int, epoch: int) -> list[int]:
        dataset = PatientImageDataset(data, split="member", seed=seed)
        dataset.set_epoch(epoch)
        return [dataset[i]["row"] for i in range(len(dataset))]

    dataset = PatientImageDataset(data, split="member", seed=0)
    assert len(dataset) == 16
    assert draws(0, 3) == draws(0, 3)
    assert draws(0, 3) != draws(0, 4) and draws(0, 3) != draws(1, 3)
    for patient, row in enumerate(draws(5, 2)):  # each draw is one of that patient's own images
        assert row in dataset.patient_rows[patient]
        assert data.index.loc[row, "patient_id"] == dataset.patient_ids[patient]
    seen = {row for epoch in range(30) for row in draws(0, epoch)}
    assert len(seen) == 48  # over epochs, every image of every patient is used
    picks = data.one_image_per_patient("member", seed=0)
    assert len(picks) == 16 and data.index.loc[picks, "patient_id"].nunique() == 16


def test_meta_labels_define_label_vector_order(tmp_path: Path) -> None:
    root = make_prepared_folder(tmp_path / "p", findings=("Nodule", "Cardiomegaly"))
    meta = json.loads((root / "meta.json").read_text())
    meta["labels"] = ["Cardiomegaly", "Nodule"]
    (root / "meta.json").write_text(json.dumps(meta))
    data = load_prepared(root)
    matrix = data.label_matrix()
    for row, cell in enumerate(data.index["labels"]):
        assert matrix[row].tolist() == [float("Cardiomegaly" in cell), float("Nodule" in cell)]
