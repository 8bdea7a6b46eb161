"""generate_samples / `cxrsynth sample`: files, manifest, resume, DICOM, labels, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from cxrsynth.cli import main
from cxrsynth.data.dataset import to_uint8
from cxrsynth.errors import CxrsynthError
from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.model.samplers import sample_batch
from cxrsynth.sample import MANIFEST_COLUMNS, generate_samples, load_sampling_model, plan_labels
from tests.sample.conftest import TRAIN_LABELS, make_run

FAST = {"sampler": "ddim", "steps": 3, "device": "cpu", "progress": False}


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def read_manifest(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_png_files_and_manifest(uncond_run: Path) -> None:
    report = generate_samples(uncond_run, 5, batch_size=2, seed=3, **FAST)
    out = uncond_run / "samples"
    assert report.out == out and report.written == [0, 1, 2, 3, 4] and report.skipped == []
    assert sorted(p.name for p in out.glob("sample_*")) == [f"sample_{i:06d}.png" for i in range(5)]

    with (out / "manifest.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == list(MANIFEST_COLUMNS)
    rows = read_manifest(out)
    assert [row["index"] for row in rows] == ["0", "1", "2", "3", "4"]
    assert rows[4] == {"file": "sample_000004.png", "index": "4", "seed": "3", "sampler": "ddim",
                       "steps": "3", "label": "", "guidance": ""}

    # The files hold exactly what the sampler makes for (seed, i), here regenerated alone.
    model = load_sampling_model(uncond_run)
    alone = to_uint8(sample_batch(model.unet, model.scheduler, "ddim", 3, [4], seed=3))[0, 0]
    written = read_png(out / "sample_000004.png")
    assert written.dtype == np.uint8 and written.shape == (16, 16)
    assert np.abs(written.astype(int) - alone.astype(int)).max() <= 1


def test_rerun_skips_and_restores_a_deleted_file_identically(uncond_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate_samples(uncond_run, 4, batch_size=4, seed=0, out=out, **FAST)
    before = {p.name: p.read_bytes() for p in out.glob("sample_*.png")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("sample_*.png")}

    again = generate_samples(uncond_run, 4, batch_size=4, seed=0, out=out, **FAST)
    assert again.written == [] and again.skipped == [0, 1, 2, 3]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("sample_*.png")} == mtimes

    (out / "sample_000002.png").unlink()
    restored = generate_samples(uncond_run, 4, batch_size=4, seed=0, out=out, **FAST)
    assert restored.written == [2]
    assert {p.name: p.read_bytes() for p in out.glob("sample_*.png")} == before

    extended = generate_samples(uncond_run, 6, batch_size=4, seed=0, out=out, **FAST)
    assert extended.written == [4, 5] and len(read_manifest(out)) == 6


def test_other_settings_into_same_folder_are_refused(uncond_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate_samples(uncond_run, 2, seed=0, out=out, **FAST)
    with pytest.raises(CxrsynthError, match="other settings.*seed"):
        generate_samples(uncond_run, 2, seed=1, out=out, **FAST)
    with pytest.raises(CxrsynthError, match="steps"):
        generate_samples(uncond_run, 2, seed=0, out=out, **{**FAST, "steps": 4})
    assert sorted(p.name for p in out.glob("sample_*")) == ["sample_000000.png", "sample_000001.png"]


def test_dicom_output_is_synthetic_secondary_capture_with_png_pixels(
    tmp_path: Path, tiny_prepared: Path
) -> None:
    # A conditional run whose vocabulary comes from real prepared data: no id of it may leak.
    index = pd.read_csv(tiny_prepared / "index.csv")
    run = make_run(tmp_path / "run", label_cells=index.loc[index["split"] == "member", "labels"].tolist())
    generate_samples(run, 3, seed=2, out=tmp_path / "png", guidance_scale=1.5, **FAST)
    generate_samples(run, 3, seed=2, out=tmp_path / "dcm", image_format="dicom", guidance_scale=1.5, **FAST)

    uids, series = set(), set()
    for i in range(3):
        ds = pydicom.dcmread(tmp_path / "dcm" / f"sample_{i:06d}.dcm")
        assert ds.file_meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == "SYN"
        for text in (ds.SeriesDescription, ds.ImageComments, ds.DerivationDescription):
            assert "SYNTHETIC" in text
        assert str(ds.PatientName) == "SYNTHETIC" and ds.PatientID == "SYNTHETIC"
        assert ds.PatientBirthDate == "" and ds.AccessionNumber == ""
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8
        assert ds.InstanceNumber == i + 1
        assert np.array_equal(ds.pixel_array, read_png(tmp_path / "png" / f"sample_{i:06d}.png"))
        uids.add(ds.SOPInstanceUID)
        series.add((ds.StudyInstanceUID, ds.SeriesInstanceUID))
    assert len(uids) == 3 and all(pydicom.uid.UID(uid).is_valid for uid in uids)
    (study_uid, series_uid), = series  # one study and series for the whole output folder
    assert study_uid != series_uid and pydicom.uid.UID(series_uid).is_valid

    # Regenerating a deleted DICOM file gives the identical file (same series, same UIDs).
    first = (tmp_path / "dcm" / "sample_000001.dcm").read_bytes()
    (tmp_path / "dcm" / "sample_000001.dcm").unlink()
    generate_samples(run, 3, seed=2, out=tmp_path / "dcm", image_format="dicom", guidance_scale=1.5, **FAST)
    assert (tmp_path / "dcm" / "sample_000001.dcm").read_bytes() == first

    identifiers = set(index["patient_id"].astype(str).str.zfill(8)) | set(index["image_id"])
    for path in [*(tmp_path / "dcm").iterdir(), *(tmp_path / "png").iterdir()]:
        if path.is_file():
            blob = path.read_bytes()
            assert not [ident for ident in identifiers if ident.encode() in blob], path
    assert list(read_manifest(tmp_path / "dcm")[0]) == list(MANIFEST_COLUMNS)


def test_label_is_passed_to_the_unet_with_null_class_for_guidance(
    cond_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vocabulary = LabelVocabulary.from_labels(TRAIN_LABELS)
    wanted = int(vocabulary.encode(["Effusion|Cardiomegaly"])[0])
    seen: list[list[int]] = []
    original = UNet2DModel.forward

    def spy(self, sample, timestep, class_labels=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(class_labels.tolist())
        return original(self, sample, timestep, class_labels=class_labels, **kwargs)

    monkeypatch.setattr(UNet2DModel, "forward", spy)
    generate_samples(cond_run, 2, out=tmp_path / "out", label="Effusion|Cardiomegaly", guidance_scale=2.5, **FAST)
    null = vocabulary.null_class
    assert seen == [[null, null, wanted, wanted]] * 3
    rows = read_manifest(tmp_path / "out")
    assert {(row["label"], row["guidance"]) for row in rows} == {("Cardiomegaly|Effusion", "2.5")}


def test_different_labels_give_different_images(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", label_cells=TRAIN_LABELS, class_offset=3.0)
    common = {"seed": 0, "guidance_scale": 1.0, **FAST}
    generate_samples(run, 2, out=tmp_path / "a", label="Cardiomegaly", **common)
    generate_samples(run, 2, out=tmp_path / "a2", label="Cardiomegaly", **common)
    generate_samples(run, 2, out=tmp_path / "b", label="No Finding", **common)
    for i in range(2):
        name = f"sample_{i:06d}.png"
        a, a2, b = (read_png(tmp_path / folder / name).astype(int) for folder in ("a", "a2", "b"))
        assert np.array_equal(a, a2)
        assert np.abs(a - b).mean() > 10


def test_label_mix_from_data_follows_training_counts(cond_run: Path, tmp_path: Path) -> None:
    vocabulary = LabelVocabulary.from_labels(TRAIN_LABELS)
    plan = plan_labels(vocabulary, None, "from-data", seed=4)
    drawn = np.array([plan.class_id(i) for i in range(3000)])
    expected = np.array(vocabulary.counts) / sum(vocabulary.counts)
    assert np.abs(np.bincount(drawn, minlength=3) / 3000 - expected).max() < 0.03
    # The draw for image i depends only on (seed, i).
    assert plan.class_ids([7, 3]).tolist() == [plan.class_id(7), plan.class_id(3)]
    assert plan_labels(vocabulary, None, "from-data", seed=5).class_ids(range(50)).tolist() != drawn[:50].tolist()

    generate_samples(cond_run, 6, seed=4, out=tmp_path / "out", label_mix="from-data", **FAST)
    rows = read_manifest(tmp_path / "out")
    assert [row["label"] for row in rows] == [vocabulary.label_sets[c] for c in drawn[:6]]
    assert {row["guidance"] for row in rows} == {"2"}  # conditional default


def test_label_errors_are_clear(cond_run: Path, uncond_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CxrsynthError, match="'Pneumothorax' was not in this model's training data"):
        generate_samples(cond_run, 1, out=tmp_path / "a", label="Pneumothorax", **FAST)
    with pytest.raises(CxrsynthError, match="--label was given but this model is unconditional"):
        generate_samples(uncond_run, 1, out=tmp_path / "b", label="No Finding", **FAST)
    with pytest.raises(CxrsynthError, match="unconditional"):
        generate_samples(uncond_run, 1, out=tmp_path / "c", guidance_scale=3.0, **FAST)
    with pytest.raises(CxrsynthError, match="both given"):
        generate_samples(cond_run, 1, out=tmp_path / "d", label="No Finding", label_mix="from-data", **FAST)
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in "abcd")


def test_pickled_weights_are_refused(uncond_run: Path) -> None:
    unet_dir = uncond_run / "pipeline" / "unet"
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    torch.save({"weights": 1}, unet_dir / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(CxrsynthError, match="only pickled weights"):
        generate_samples(uncond_run, 1, **FAST)


def test_cli_sample_runs_and_reports_errors(cond_run: Path, uncond_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sample", "--run", str(cond_run), "--num-images", "2", "--sampler", "dpmsolver", "--steps", "2",
            "--label", "No Finding", "--format", "dicom", "--device", "cpu", "--seed", "9"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    assert "process 0 of 1: wrote 2 new images" in capsys.readouterr().err
    rows = read_manifest(cond_run / "samples")
    assert [(r["file"], r["sampler"], r["steps"], r["seed"], r["label"]) for r in rows] == [
        ("sample_000000.dcm", "dpmsolver", "2", "9", "No Finding"),
        ("sample_000001.dcm", "dpmsolver", "2", "9", "No Finding"),
    ]
    with pytest.raises(SystemExit) as failed:
        main(["sample", "--run", str(uncond_run), "--num-images", "1", "--label", "No Finding"])
    assert failed.value.code == 2
    assert "unconditional" in capsys.readouterr().err
