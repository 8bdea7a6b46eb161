"""`prepare --format dicom` on DICOM files the tests write with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid

from cxrsynth.data.prepare import prepare_dataset
from cxrsynth.data.prepared import load_prepared
from cxrsynth.data.sources.dicom import decode_dicom
from cxrsynth.errors import CxrsynthError

BITS = 12
MAX_STORED = 2**BITS - 1


def chest_like(seed: int, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """12-bit stored values with structure (smooth blobs + noise), using part of the 0..4095 range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    blob = np.exp(-(((yy - shape[0] / 2) / 9.0) ** 2 + ((xx - shape[1] / 3) / 7.0) ** 2))
    values = 600 + 2400 * blob + rng.normal(0, 60, size=shape)
    return np.clip(values, 0, MAX_STORED).astype(np.uint16)


def write_dicom(
    path: Path,
    stored: np.ndarray,
    patient_id: str = "P1",
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    transfer_syntax=ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
) -> Dataset:
    """Write a single-frame 12-bit radiograph; returns the dataset."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientID = patient_id
    dataset.PatientSex = "F"
    dataset.PatientAge = "052Y"
    dataset.ViewPosition = "PA"
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, BITS, BITS - 1, 0
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
    dataset.PixelData = pixel_data if pixel_data is not None else stored.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return dataset


def prepare(src: Path, out: Path, **options) -> Path:
    defaults = {"format": "dicom", "size": 32, "workers": 1, "progress": False}
    return prepare_dataset(src, out, **{**defaults, **options})


def test_monochrome1_twin_prepares_like_its_monochrome2_original(tmp_path: Path) -> None:
    stored = chest_like(0)
    write_dicom(tmp_path / "src" / "a" / "m2.dcm", stored, patient_id="P1")
    write_dicom(tmp_path / "src" / "b" / "m1.dcm", MAX_STORED - stored, patient_id="P2", photometric="MONOCHROME1")
    data = load_prepared(prepare(tmp_path / "src", tmp_path / "data", test_fraction=0.0, holdout_fraction=0.0))

    rows = dict(zip(data.index["image_id"], data.index["row"]))
    m2, m1 = data.images[rows["a/m2.dcm"]].astype(int), data.images[rows["b/m1.dcm"]].astype(int)
    assert np.abs(m1 - m2).max() <= 1
    # bone (the bright blob in stored MONOCHROME2 values) is bright in both
    assert m1[16, 10] > m1[2, 30] + 100
    assert data.meta["format"] == "dicom" and data.meta["patient_ids"] == "real"
    assert set(data.index["patient_id"]) == {"P1", "P2"}
    assert set(data.index["age"].astype(int)) == {52}


def test_rescale_and_window_are_applied_and_monochrome1_windowed_twin_matches(tmp_path: Path) -> None:
    stored = chest_like(1)
    slope, intercept, center, width = 2.0, -1000.0, 2000.0, 3000.0
    write_dicom(tmp_path / "m2.dcm", stored, window=(center, width), rescale=(slope, intercept))
    # the inverted twin: same modality values reversed, window centred on the reversed centre
    flipped_center = (MAX_STORED * slope + intercept) + intercept - center
    write_dicom(
        tmp_path / "m1.dcm", MAX_STORED - stored, photometric="MONOCHROME1",
        window=(flipped_center, width), rescale=(slope, intercept),
    )  # fmt: skip

    shown_m2, shown_m1 = decode_dicom(str(tmp_path / "m2.dcm")), decode_dicom(str(tmp_path / "m1.dcm"))
    modality = stored * slope + intercept
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    expected = np.clip((modality - low) / (high - low), 0, 1) * 255
    assert np.abs(shown_m2 - expected).max() < 0.5
    assert np.abs(shown_m1 - shown_m2).max() < 1.0


def test_labels_csv_by_sop_instance_uid_and_by_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    uids = [write_dicom(src / f"p{i}" / "img.dcm", chest_like(i), patient_id=f"P{i}").SOPInstanceUID for i in range(4)]
    write_dicom(src / "extra" / "unlisted.dcm", chest_like(9), patient_id="P9")
    (tmp_path / "by_uid.csv").write_text(
        "SOPInstanceUID,labels\n" + "\n".join(f"{uid},{'Effusion|Nodule' if i % 2 else ''}" for i, uid in enumerate(uids)) + "\n"
    )
    (tmp_path / "by_file.csv").write_text("file,labels\np0/img.dcm,Mass\np1/img.dcm,No Finding\n")

    by_uid = load_prepared(prepare(src, tmp_path / "a", labels_csv=tmp_path / "by_uid.csv"))
    labels = dict(zip(by_uid.index["patient_id"], by_uid.index["labels"]))
    assert labels == {"P0": "No Finding", "P1": "Effusion|Nodule", "P2": "No Finding", "P3": "Effusion|Nodule"}
    assert by_uid.meta["unlisted_files_ignored"] == 1 and by_uid.meta["labels"] == ["Effusion", "Nodule"]

    by_file = load_prepared(prepare(src, tmp_path / "b", labels_csv=tmp_path / "by_file.csv"))
    assert dict(zip(by_file.index["image_id"], by_file.index["labels"])) == {"p0/img.dcm": "Mass", "p1/img.dcm": "No Finding"}


def test_file_listed_in_labels_csv_but_absent_is_an_error_unless_skip_bad(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        write_dicom(src / f"p{i}.dcm", chest_like(i), patient_id=f"P{i}")
    (tmp_path / "labels.csv").write_text("file,labels\np0.dcm,Mass\np1.dcm,\ngone.dcm,Nodule\n")
    with pytest.raises(CxrsynthError, match="gone.dcm"):
        prepare(src, tmp_path / "refused", labels_csv=tmp_path / "labels.csv")
    data = load_prepared(prepare(src, tmp_path / "data", labels_csv=tmp_path / "labels.csv", skip_bad=True))
    assert data.meta["skipped_bad"] == 1 and len(data.index) == 2


def test_compressed_file_without_an_installed_decoder_names_file_and_packages(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_dicom(src / "ok.dcm", chest_like(0), patient_id="P0")
    write_dicom(
        src / "jpegls.dcm", chest_like(1), patient_id="P1", transfer_syntax=JPEGLSLossless,
        pixel_data=encapsulate([b"\xff\xd8 not really JPEG-LS"]),
    )  # fmt: skip
    with pytest.raises(CxrsynthError, match="jpegls.dcm") as error:
        prepare(src, tmp_path / "data", skip_bad=True)  # an environment problem: not skippable
    assert "JPEG-LS" in str(error.value) and "pylibjpeg" in str(error.value)
    assert not (tmp_path / "data").exists()
    with pytest.raises(CxrsynthError, match="pyjpegls"):
        decode_dicom(str(src / "jpegls.dcm"))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while it tries to read the garbage file
def test_missing_patient_id_is_refused_and_corrupt_file_can_be_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_dicom(src / "a.dcm", chest_like(0), patient_id="P0")
    write_dicom(src / "b.dcm", chest_like(1), patient_id="P1")
    (src / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(CxrsynthError, match="broken.dcm"):
        prepare(src, tmp_path / "refused")
    data = load_prepared(prepare(src, tmp_path / "data", skip_bad=True))
    assert data.meta["skipped_bad"] == 1 and len(data.index) == 2

    write_dicom(src / "anonymous.dcm", chest_like(2), patient_id="")
    with pytest.raises(CxrsynthError, match="anonymous.dcm.*PatientID|PatientID.*anonymous.dcm"):
        prepare(src, tmp_path / "again", skip_bad=True)
