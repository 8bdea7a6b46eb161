"""``cxrsynth data prepare``: hostile images, CSVs, DICOM files and output paths."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrsynth.data.prepared import load_prepared
from tests.data.test_prepare_dicom import chest_like, write_dicom
from tests.data.test_prepare_nih import write_nih_folder
from tests.reliability.conftest import CliResult, assert_clear_error, leftovers, run_cli


def _images(root: Path, count: int = 4, shape: tuple[int, int] = (40, 40)) -> Path:
    """A folder of ``count`` smooth 8-bit PNGs."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(40, 200, size=shape, dtype=np.uint8)).save(root / f"img_{index}.png")
    return root


def _prepare(src: Path, out: Path, capsys, *extra: str, format: str = "folder") -> CliResult:
    return run_cli(["data", "prepare", str(src), "--format", format, "--out", str(out), "--size", "32",
                    "--workers", "1", "--no-progress", *extra], capsys)


def _refused(result: CliResult, out: Path, *phrases: str) -> None:
    """A clear error, and no output folder nor temporary folder beside it."""
    assert_clear_error(result, *phrases)
    assert not out.exists() and leftovers(out.parent) == []


# ---------------------------------------------------------------- images


def test_truncated_png(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    bad = src / "img_1.png"
    bad.write_bytes(bad.read_bytes()[:100])
    _refused(_prepare(src, tmp_path / "out", capsys), tmp_path / "out", "img_1.png", "cannot be decoded", "--skip-bad")


def test_zero_byte_png(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    (src / "img_2.png").write_bytes(b"")
    _refused(_prepare(src, tmp_path / "out", capsys), tmp_path / "out", "img_2.png", "cannot be decoded", "--skip-bad")


def test_bad_images_skipped_with_skip_bad(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    (src / "img_2.png").write_bytes(b"")
    result = _prepare(src, tmp_path / "out", capsys, "--skip-bad")
    assert result.code == 0, result.text
    data = load_prepared(tmp_path / "out")
    assert len(data.index) == 3 and data.meta["skipped_bad"] == 1


def test_text_file_named_png(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    (src / "notes.png").write_text("not an image at all")
    _refused(_prepare(src, tmp_path / "out", capsys), tmp_path / "out", "notes.png", "cannot be decoded")


def test_jpeg_named_png(tmp_path: Path, capsys) -> None:
    """A mislabelled file that is a real image is read by its content (Pillow sniffs the format)."""
    src = _images(tmp_path / "src", count=2)
    Image.fromarray(np.full((40, 40), 150, dtype=np.uint8)).save(src / "really_a_jpeg.png", format="JPEG")
    result = _prepare(src, tmp_path / "out", capsys)
    assert result.code == 0, result.text
    data = load_prepared(tmp_path / "out")
    row = int(data.index.loc[data.index["image_id"] == "really_a_jpeg.png", "row"].iloc[0])
    assert abs(float(np.asarray(data.images[row]).mean()) - 150) < 3


def test_sixteen_bit_png(tmp_path: Path, capsys) -> None:
    """16-bit PNGs are scaled by their real range, not clipped at 255."""
    src = tmp_path / "src"
    src.mkdir()
    ramp = np.tile(np.linspace(1000, 3000, 40), (40, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(src / "deep.png")
    result = _prepare(src, tmp_path / "out", capsys)
    assert result.code == 0, result.text
    image = np.asarray(load_prepared(tmp_path / "out").images[0])
    assert image.min() <= 5 and image.max() >= 250


def test_palette_png(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    grey = np.full((40, 40), 90, dtype=np.uint8)
    Image.fromarray(grey).convert("P").save(src / "palette.png")
    assert Image.open(src / "palette.png").mode == "P"
    result = _prepare(src, tmp_path / "out", capsys)
    assert result.code == 0, result.text
    assert abs(float(np.asarray(load_prepared(tmp_path / "out").images[0]).mean()) - 90) < 2


def test_decompression_bomb(tmp_path: Path, capsys, monkeypatch) -> None:
    """A tiny file that decodes to 49 megapixels is refused from its header, before any pixel is decoded."""
    src = _images(tmp_path / "src", count=2)
    Image.new("L", (7000, 7000)).save(src / "bomb.png", optimize=False, compress_level=1)
    assert (src / "bomb.png").stat().st_size < 1_000_000
    decoded: list[tuple[int, int]] = []
    real_load = Image.Image.load

    def counting_load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    _refused(_prepare(src, tmp_path / "out", capsys), tmp_path / "out", "bomb.png", "decoding budget", "downscale")
    assert (7000, 7000) not in decoded


def test_exif_rotated_jpeg(tmp_path: Path, capsys) -> None:
    """A JPEG stored sideways with EXIF orientation 6 is prepared upright, as viewers show it."""
    src = tmp_path / "src"
    src.mkdir()
    stored = np.zeros((64, 64), dtype=np.uint8)
    stored[:32, :] = 230  # stored: top half bright; shown after a 90° clockwise turn: right half bright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(src / "rotated.jpg", exif=exif.tobytes(), quality=95)
    result = _prepare(src, tmp_path / "out", capsys)
    assert result.code == 0, result.text
    image = np.asarray(load_prepared(tmp_path / "out").images[0]).astype(float)
    assert image[:, 20:].mean() > 180 and image[:, :12].mean() < 50


def test_tiny_and_extreme_aspect_images_warn(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src", count=2)
    Image.fromarray(np.full((1, 1), 100, dtype=np.uint8)).save(src / "dot.png")
    Image.fromarray(np.full((3, 1000), 100, dtype=np.uint8)).save(src / "strip.png")
    result = _prepare(src, tmp_path / "out", capsys)
    assert result.code == 0, result.text
    assert "warning: 2 image(s) are much smaller than the output size or far from square" in result.text
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["odd_geometry"] == 2
    assert {row["image_id"] for row in meta["odd_geometry_examples"]} == {"dot.png", "strip.png"}


# ---------------------------------------------------------------- CSVs


def _labels_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_missing_columns(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    csv = _labels_csv(tmp_path / "labels.csv", "file,labels\nimg_0.png,Nodule\n")
    _refused(_prepare(src, tmp_path / "out", capsys, "--labels-csv", str(csv)), tmp_path / "out",
             "lacks required column(s) 'patient_id'", "file,patient_id,labels")


def test_csv_not_utf8(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    csv = tmp_path / "labels.csv"
    csv.write_bytes(b"file,patient_id\nimg_0.png,P\xe9\xff1\n")
    _refused(_prepare(src, tmp_path / "out", capsys, "--labels-csv", str(csv)), tmp_path / "out",
             "cannot be read as CSV", "utf-8")


def test_csv_path_escapes_the_source_folder(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    csv = _labels_csv(tmp_path / "labels.csv",
                      "file,patient_id\nimg_0.png,P1\nimg_1.png,P2\n../../../../../../etc/passwd,P3\n")
    _refused(_prepare(src, tmp_path / "out", capsys, "--labels-csv", str(csv)), tmp_path / "out",
             "etc/passwd", "leaves the source folder")


def test_nih_duplicate_differing_by_a_leading_space(tmp_path: Path, capsys) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=4, test_patients=None)
    entries = src / "Data_Entry_2017.csv"
    lines = entries.read_text().splitlines()
    entries.write_text("\n".join(lines + [" " + lines[1]]) + "\n")
    _refused(_prepare(src, tmp_path / "out", capsys, format="nih"), tmp_path / "out",
             "00000001_000.png more than once", "one row per image")


def test_nih_unknown_findings_are_listed(tmp_path: Path, capsys) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=4, test_patients=None)
    entries = src / "Data_Entry_2017.csv"
    entries.write_text(entries.read_text().replace("Cardiomegaly|Nodule", "Cardiomegally|Nodule"))
    result = _prepare(src, tmp_path / "out", capsys, format="nih")
    assert result.code == 0, result.text
    assert "'Cardiomegally'" in result.text and "did you mean 'Cardiomegaly'?" in result.text
    assert "--findings" in result.text
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert any("Cardiomegally" in warning for warning in meta["warnings"])


def test_nih_test_list_not_utf8(tmp_path: Path, capsys) -> None:
    src = write_nih_folder(tmp_path / "nih", n_patients=6, test_patients=(5, 6))
    (src / "test_list.txt").write_bytes(b"00000005_000.png\n\xff\xfe\n")
    _refused(_prepare(src, tmp_path / "out", capsys, format="nih"), tmp_path / "out", "test_list.txt",
             "not UTF-8")


# ---------------------------------------------------------------- DICOM


def _dicom_folder(root: Path) -> Path:
    for index in range(3):
        write_dicom(root / f"ok_{index}.dcm", chest_like(index), patient_id=f"P{index}")
    return root


def test_dicom_without_pixel_data(tmp_path: Path, capsys) -> None:
    src = _dicom_folder(tmp_path / "src")
    dataset = pydicom.dcmread(src / "ok_1.dcm")
    del dataset.PixelData
    dataset.save_as(src / "ok_1.dcm")
    _refused(_prepare(src, tmp_path / "out", capsys, format="dicom"), tmp_path / "out", "ok_1.dcm",
             "pixel data", "--skip-bad")


def test_dicom_compressed_without_a_decoder(tmp_path: Path, capsys) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    src = _dicom_folder(tmp_path / "src")
    write_dicom(src / "jpegls.dcm", chest_like(5), patient_id="P5", transfer_syntax=JPEGLSLossless,
                pixel_data=encapsulate([b"\xff\xd8 not really JPEG-LS"]))
    _refused(_prepare(src, tmp_path / "out", capsys, format="dicom"), tmp_path / "out", "jpegls.dcm",
             "JPEG-LS", "pip install")


def test_dicom_multi_frame(tmp_path: Path, capsys) -> None:
    src = _dicom_folder(tmp_path / "src")
    frames = np.stack([chest_like(7), chest_like(8)])
    dataset = write_dicom(src / "cine.dcm", chest_like(7), patient_id="P7", pixel_data=frames.astype("<u2").tobytes())
    dataset.NumberOfFrames = 2
    dataset.save_as(src / "cine.dcm", enforce_file_format=True)
    _refused(_prepare(src, tmp_path / "out", capsys, format="dicom"), tmp_path / "out", "cine.dcm",
             "2 frames", "single-frame", "--skip-bad")


def test_dicom_rgb(tmp_path: Path, capsys) -> None:
    """A colour secondary capture is prepared from its luminance."""
    src = _dicom_folder(tmp_path / "src")
    rgb = np.zeros((40, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    dataset = write_dicom(src / "colour.dcm", chest_like(9), patient_id="P9")
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.Rows, dataset.Columns = 40, 40
    dataset.PixelData = rgb.tobytes()
    dataset.save_as(src / "colour.dcm", enforce_file_format=True)
    result = _prepare(src, tmp_path / "out", capsys, format="dicom")
    assert result.code == 0, result.text
    data = load_prepared(tmp_path / "out")
    row = int(data.index.loc[data.index["patient_id"] == "P9", "row"].iloc[0])
    assert abs(float(np.asarray(data.images[row]).mean()) - 0.299 * 200) < 2


def test_dicom_without_patient_id(tmp_path: Path, capsys) -> None:
    src = _dicom_folder(tmp_path / "src")
    write_dicom(src / "anonymous.dcm", chest_like(4), patient_id="")
    _refused(_prepare(src, tmp_path / "out", capsys, format="dicom", ), tmp_path / "out", "anonymous.dcm",
             "PatientID")


# ---------------------------------------------------------------- output paths and faults


def test_prepare_out_exists(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    result = _prepare(src, out, capsys)
    assert_clear_error(result, "already exists")
    assert (out / "keep.txt").read_text() == "keep" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_prepare_out_is_a_file(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    out = tmp_path / "out"
    out.write_text("a file")
    assert_clear_error(_prepare(src, out, capsys), "already exists")
    assert out.read_text() == "a file"


def test_prepare_out_under_a_file(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "src")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    assert_clear_error(_prepare(src, blocker / "out", capsys), "which is a file")
    assert blocker.read_text() == "a file"


def test_prepare_out_read_only(tmp_path: Path, capsys, monkeypatch) -> None:
    """A folder the user may not write to (EACCES, injected: the tests may run as root)."""
    import cxrsynth.fsutil as fsutil

    def denied(*_args, dir=None, **_kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(fsutil.tempfile, "mkdtemp", denied)
    src = _images(tmp_path / "src")
    _refused(_prepare(src, tmp_path / "out", capsys), tmp_path / "out", "permission denied", "writable")


def test_disk_full_during_prepare(tmp_path: Path, capsys, monkeypatch) -> None:
    import cxrsynth.data.prepare as prepare

    def full(self, row, image):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(prepare._RowWriter, "write", full)
    src = _images(tmp_path / "src")
    _refused(_prepare(src, tmp_path / "out", capsys), tmp_path / "out", "no space left", "free disk space")
