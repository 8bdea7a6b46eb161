"""`prepare` on NIH ChestX-ray14-layout folders written by the tests (flat and Kaggle layouts, both CSVs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrsynth.data.prepare import prepare_dataset
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError

HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
HEADER_V2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y"
)
FINDINGS_CYCLE = ("No Finding", "Effusion", "Cardiomegaly|Nodule", "No Finding", "Hernia")


def image_name(patient: int, follow_up: int) -> str:
    return f"{patient:08d}_{follow_up:03d}.png"


def image_value(patient: int, follow_up: int) -> int:
    """The constant grey level of a test image: distinct per image, so rows can be traced to files."""
    return (patient * 37 + follow_up * 11) % 200 + 20


def write_nih_folder(
    root: Path,
    n_patients: int = 10,
    follow_ups: int = 2,
    layout: str = "flat",
    csv_variant: str = "2017",
    test_patients: tuple[int, ...] | None = (9, 10),
    image_shape: tuple[int, int] = (56, 40),
) -> Path:
    """Write a small ChestX-ray14-layout folder: constant-grey 8-bit PNGs (height×width ``image_shape``)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for patient in range(1, n_patients + 1):
        for follow_up in range(follow_ups):
            name = image_name(patient, follow_up)
            folder = root / "images" if layout == "flat" else root / f"images_{1 + patient % 2:03d}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full(image_shape, image_value(patient, follow_up), dtype=np.uint8)).save(folder / name)
            labels = FINDINGS_CYCLE[(patient + follow_up) % len(FINDINGS_CYCLE)]
            view = "PA" if follow_up % 2 == 0 else "AP"
            sex = "M" if patient % 2 else "F"
            if csv_variant == "2017":
                # the real file's quirk: every data row ends with a stray comma
                rows.append(f"{name},{labels},{follow_up},{patient},{40 + patient},{sex},{view},2500,2048,0.143,0.143,")
            else:
                rows.append(f"{name},{labels},{follow_up},{patient},{40 + patient},{sex},{view},2500,2048,0.143,0.143")
    header = HEADER_2017 if csv_variant == "2017" else HEADER_V2020
    csv_name = "Data_Entry_2017.csv" if csv_variant == "2017" else "Data_Entry_2017_v2020.csv"
    (root / csv_name).write_text("\n".join([header, *rows]) + "\n")
    if test_patients is not None:
        names = [(p, image_name(p, f)) for p in range(1, n_patients + 1) for f in range(follow_ups)]
        (root / "test_list.txt").write_text("\n".join(n for p, n in names if p in test_patients) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(n for p, n in names if p not in test_patients) + "\n")
    return root


def prepare(src: Path, out: Path, **options) -> Path:
    defaults = {"format": "nih", "size": 32, "workers": 1, "progress": False}
    return prepare_dataset(src, out, **{**defaults, **options})


def test_flat_layout_2017_csv_writes_the_prepared_contract(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih")
    data = load_prepared(prepare(src, tmp_path / "data", holdout_fraction=0.25))

    assert data.images.shape == (20, 32, 32) and data.images.dtype == np.uint8
    assert list(data.index.columns[:5]) == ["row", "image_id", "patient_id", "split", "labels"]
    assert {"follow_up", "age", "sex", "view"} <= set(data.index.columns)
    for _, record in data.index.iterrows():
        patient, follow_up = int(record["patient_id"]), int(record["follow_up"])
        assert record["image_id"] == image_name(patient, follow_up)
        assert np.all(data.images[record["row"]] == image_value(patient, follow_up))
        assert record["labels"] == FINDINGS_CYCLE[(patient + follow_up) % len(FINDINGS_CYCLE)]
        assert int(record["age"]) == 40 + patient
    test_ids = set(data.index.loc[data.index["split"] == "test", "patient_id"])
    assert test_ids == {"00000009", "00000010"}
    meta = data.meta
    assert meta["format"] == "nih" and meta["size"] == 32 and meta["csv"] == "Data_Entry_2017.csv"
    assert meta["crop"] == "center-square" and meta["resize"] == "PIL.LANCZOS"
    assert meta["patient_ids"] == "real" and meta["skipped_bad"] == 0
    assert meta["test_split"] == "patients of test_list.txt"
    assert meta["counts"]["test"] == {"images": 4, "patients": 2}
    assert meta["counts"]["holdout"] == {"images": 4, "patients": 2}  # 0.25 of 8 non-test patients
    assert meta["counts"]["member"] == {"images": 12, "patients": 6}
    assert meta["labels"] == ["Cardiomegaly", "Effusion", "Nodule", "Hernia"]  # NIH order, No Finding excluded
    names = meta["labels"]
    matrix = data.label_matrix()
    for row, cell in enumerate(data.index["labels"]):
        assert {names[j] for j in np.flatnonzero(matrix[row])} == (set(cell.split("|")) - {"No Finding"})


def test_kaggle_layout_v2020_csv_without_lists_uses_a_seeded_patient_split(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=10, layout="kaggle", csv_variant="v2020", test_patients=None)
    assert not (src / "images").exists() and (src / "images_001" / "images").is_dir()
    first = load_prepared(prepare(src, tmp_path / "a", seed=3, test_fraction=0.3))
    second = load_prepared(prepare(src, tmp_path / "b", seed=3, test_fraction=0.3))

    assert first.meta["csv"] == "Data_Entry_2017_v2020.csv"
    assert first.meta["test_split"].startswith("seeded")
    assert first.meta["counts"]["test"]["patients"] == 3
    assert first.meta["split_fractions"] == {"holdout": 0.2, "test": 0.3}
    pd.testing.assert_frame_equal(first.index, second.index)
    for _, record in first.index.iterrows():
        assert np.all(first.images[record["row"]] == image_value(int(record["patient_id"]), int(record["follow_up"])))


def test_rgba_rgb_and_16_bit_pngs_become_8_bit_grayscale(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=3, follow_ups=1, test_patients=None)
    images = src / "images"
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(images / image_name(1, 0))
    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(images / image_name(2, 0))
    # a 16-bit ramp that uses only 1000..5000 of 0..65535: it must be stretched to 0..255, not clipped
    ramp = np.linspace(1000, 5000, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(images / image_name(3, 0))
    assert Image.open(images / image_name(3, 0)).mode.startswith("I")

    data = load_prepared(prepare(src, tmp_path / "data"))
    by_id = {image_id: row for image_id, row in zip(data.index["image_id"], data.index["row"])}
    luma = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)
    assert np.all(np.abs(data.images[by_id[image_name(1, 0)]].astype(int) - luma) <= 1)
    assert np.array_equal(data.images[by_id[image_name(1, 0)]], data.images[by_id[image_name(2, 0)]])
    expected = np.rint((ramp.astype(np.float64) - 1000) / 4000 * 255).astype(np.uint8)
    prepared = data.images[by_id[image_name(3, 0)]]
    assert prepared.min() == 0 and prepared.max() == 255
    assert np.abs(prepared.astype(int) - expected.astype(int)).max() <= 1


def test_corrupt_png_is_an_error_naming_it_unless_skip_bad(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=4, test_patients=None)
    broken = src / "images" / image_name(2, 1)
    broken.write_bytes(broken.read_bytes()[:60])  # truncated PNG

    with pytest.raises(CxrsynthError, match=image_name(2, 1)) as error:
        prepare(src, tmp_path / "refused")
    assert "--skip-bad" in error.value.fix
    assert not (tmp_path / "refused").exists()
    assert not list(tmp_path.glob(".refused*"))  # no temporary folder left either

    data = load_prepared(prepare(src, tmp_path / "data", skip_bad=True))
    assert data.meta["skipped_bad"] == 1
    assert data.meta["skipped_examples"][0]["image_id"] == image_name(2, 1)
    assert data.images.shape == (7, 32, 32)
    assert image_name(2, 1) not in set(data.index["image_id"])
    for _, record in data.index.iterrows():  # rows after the skipped one are still in the right place
        assert np.all(data.images[record["row"]] == image_value(int(record["patient_id"]), int(record["follow_up"])))


def test_missing_listed_image_is_an_error_naming_it_unless_skip_bad(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=4, test_patients=None)
    (src / "images" / image_name(3, 0)).unlink()

    with pytest.raises(CxrsynthError, match=image_name(3, 0)):
        prepare(src, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    data = load_prepared(prepare(src, tmp_path / "data", skip_bad=True))
    assert data.meta["skipped_bad"] == 1 and len(data.index) == 7


def test_patient_in_both_list_files_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=6, test_patients=(5, 6))
    with (src / "test_list.txt").open("a") as handle:
        handle.write(image_name(2, 1) + "\n")  # patient 2 now in train_val and test

    with pytest.raises(CxrsynthError, match="00000002") as error:
        prepare(src, tmp_path / "data")
    message = str(error.value)
    assert "test_list.txt" in message and "train_val_list.txt" in message
    assert not (tmp_path / "data").exists()
    assert not list(tmp_path.glob(".data*"))


def test_csv_missing_a_required_column_names_the_file_and_column(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=2, test_patients=None)
    csv = src / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("Patient ID", "PatientNumber"))
    with pytest.raises(CxrsynthError, match="Data_Entry_2017.csv.*'Patient ID'"):
        prepare(src, tmp_path / "data")


def test_views_and_limit_select_images_and_patients(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=8, follow_ups=3, test_patients=None)
    data = load_prepared(prepare(src, tmp_path / "data", views=["pa"], limit=5))
    assert set(data.index["view"]) == {"PA"}
    assert sorted(set(data.index["patient_id"])) == [f"{p:08d}" for p in range(1, 6)]
    assert data.meta["views"] == ["PA"] and data.meta["limit"] == 5
    with pytest.raises(CxrsynthError, match="View Position"):
        prepare(src, tmp_path / "none", views=["LL"])


def test_worker_pool_gives_the_same_folder_as_one_process(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=6, image_shape=(50, 70))
    # varied content so that resizing matters
    for path in sorted((src / "images").iterdir()):
        rng = np.random.default_rng(int(path.stem.replace("_", "")))
        Image.fromarray(rng.integers(0, 255, size=(50, 70), dtype=np.uint8)).save(path)
    one = prepare(src, tmp_path / "one", workers=1)
    two = prepare(src, tmp_path / "two", workers=2)
    assert (one / "images.npy").read_bytes() == (two / "images.npy").read_bytes()
    assert (one / "index.csv").read_text() == (two / "index.csv").read_text()
    meta_one, meta_two = (json.loads((folder / "meta.json").read_text()) for folder in (one, two))
    assert meta_one == meta_two


def test_existing_output_is_refused(tmp_path: Path) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=2, test_patients=None)
    (tmp_path / "data").mkdir()
    with pytest.raises(CxrsynthError, match="already exists"):
        prepare(src, tmp_path / "data")
