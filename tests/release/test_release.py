"""`cxrsynth release`: a planted copy of a training image is never exported; top-up, manifest, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrsynth.cli import main
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError
from cxrsynth.release import (
    Candidates,
    ReleaseOptions,
    SampledCandidates,
    ScreenResult,
    build_screen,
    calibration_patients,
    release_run,
    select_release,
)
from tests.factories import make_prepared_folder, smooth_patient_images
from tests.tiny_run import copy_run

FAST = ["--reid-steps", "10", "--device", "cpu", "--sampler", "dpmsolver", "--steps", "2", "--batch-size", "8"]


def member_images(run: Path) -> np.ndarray:
    data = load_prepared(json_data_path(run))
    return np.asarray(data.images[np.sort(data.rows("member"))])


def json_data_path(run: Path) -> Path:
    from cxrsynth.evaluate.runner import run_data_path

    return run_data_path(run)


def test_the_screen_flags_copies_of_training_images_and_passes_new_patients(tmp_path: Path) -> None:
    data = load_prepared(make_prepared_folder(tmp_path / "data", n_patients=24, images_per_patient=2, size=32))
    screen = build_screen(data, ReleaseOptions(reid_steps=10, device="cpu"), device="cpu")
    members = np.asarray(data.images[np.sort(data.rows("member"))])
    rng = np.random.default_rng(7)
    copies = members[[0, 5, 11]]
    nudged = np.clip(members[[3]].astype(int) + rng.integers(-3, 4, size=members[[3]].shape), 0, 255).astype(np.uint8)
    new_patients = np.concatenate([smooth_patient_images(rng, 1, 32) for _ in range(4)])
    result = screen.screen(np.concatenate([copies, nudged, new_patients]))
    assert result.near_copy[:4].all() and not result.passed[:4].any()
    assert result.linked_to_member[:3].all()  # an exact copy embeds exactly like its training image
    assert not result.near_copy[4:].any()
    described = screen.describe()
    assert described["near_copy"]["ratio_threshold"] == pytest.approx(1 / 6)
    linked = described["linked_to_member"]
    assert linked["quantile"] == 0.99 and linked["calibration_patients"] == 2 and linked["member_patients"] == 12
    held_out = set(calibration_patients(data, seed=0))
    assert not held_out & set(screen.gallery.train_patients)  # calibration patients are unseen by the network


class FlagMultiplesOfThree:
    """A stand-in screen: flags candidate images whose first pixel marks an index divisible by 3."""

    def screen(self, images: np.ndarray) -> ScreenResult:
        flagged = images[:, 0, 0] % 3 == 0
        return ScreenResult(near_copy=flagged, linked_to_member=np.zeros(len(images), bool))


def counting_source(start: int, count: int) -> Candidates:
    indices = np.arange(start, start + count)
    images = np.zeros((count, 4, 4), np.uint8)
    images[:, 0, 0] = indices % 256
    rows = [{"file": f"sample_{i:06d}.png", "index": str(i)} for i in indices]
    return Candidates(indices, images, rows)


def test_the_release_is_the_first_passing_candidates_however_they_are_batched() -> None:
    selection = select_release(FlagMultiplesOfThree(), counting_source, wanted=10, limit=100)
    kept = [int(row["index"]) for row in selection.rows]
    assert kept == [i for i in range(100) if i % 3][:10]
    assert selection.near_copy == sum(1 for i in range(selection.generated) if i % 3 == 0)
    assert selection.rounds >= 2  # the first round (11 candidates) cannot hold 10 passing ones
    with pytest.raises(CxrsynthError, match=r"only \d+ of 10 wanted images passed.*near-copies"):
        select_release(FlagMultiplesOfThree(), counting_source, wanted=10, limit=12)


def planting(members: np.ndarray, planted: dict[int, int]):
    """A candidate source that replaces candidates ``i`` by copies of member images ``planted[i]``."""

    class Planted(SampledCandidates):
        def __call__(self, start: int, count: int) -> Candidates:
            batch = super().__call__(start, count)
            images = batch.images.copy()
            for position, index in enumerate(batch.indices):
                if int(index) in planted:
                    images[position] = members[planted[int(index)]]
            return Candidates(batch.indices, images, batch.rows)

    return Planted


def test_release_never_exports_a_planted_copy_of_a_member_image(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    members = member_images(tiny_run)
    monkeypatch.setattr("cxrsynth.release.SampledCandidates", planting(members, {0: 0, 2: 7, 5: 13}))
    out = tmp_path / "release"
    with pytest.raises(SystemExit) as exit_info:
        main(["release", "--run", str(tiny_run), "--out", str(out), "--num-images", "6", *FAST])
    assert exit_info.value.code == 0
    assert "released 6 images" in capsys.readouterr().out

    names = sorted(path.name for path in out.iterdir())
    assert names == ["manifest.csv", "release.json", *(f"synthetic_{i:06d}.png" for i in range(6))]
    with (out / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "index", "seed", "sampler", "steps", "label", "guidance"]
    assert len(rows) == 6 and not {0, 2, 5} & {int(row["index"]) for row in rows}
    flat_members = members.reshape(len(members), -1)
    for row in rows:
        with Image.open(out / row["file"]) as image:
            pixels = np.asarray(image).reshape(1, -1)
        assert not (flat_members == pixels).all(axis=1).any(), f"{row['file']} is a training image"

    report = json.loads((out / "release.json").read_text())
    assert report["num_images"] == 6 and report["candidates"]["released"] == 6
    assert report["dropped"]["near_copy"] >= 3 and report["dropped"]["total"] >= 3
    assert report["candidates"]["generated"] == report["candidates"]["passed"] + report["dropped"]["total"]
    assert report["screens"]["linked_to_member"]["similarity_threshold"] < 1.0
    assert report["audit"]["verdict"] and report["sampling"]["steps"] == 2
    data = load_prepared(json_data_path(tiny_run))
    shared = (out / "release.json").read_text() + (out / "manifest.csv").read_text()
    for identifier in [*data.index["patient_id"], *data.index["image_id"]]:
        assert identifier not in shared


def test_dicom_release_marks_images_synthetic(tiny_run: Path, tmp_path: Path) -> None:
    import pydicom

    out = tmp_path / "release"
    report = release_run(tiny_run, out, ReleaseOptions(num_images=2, image_format="dicom", steps=2, reid_steps=10,
                                                       device="cpu", batch_size=8))
    assert report["image_format"] == "dicom"
    files = sorted(out.glob("*.dcm"))
    assert [path.name for path in files] == ["synthetic_000000.dcm", "synthetic_000001.dcm"]
    dataset = pydicom.dcmread(files[1])
    assert dataset.PatientID == "SYNTHETIC" and "SYNTHETIC" in dataset.SeriesDescription
    assert dataset.InstanceNumber == 2 and dataset.pixel_array.dtype == np.uint8


def test_release_refuses_unaudited_runs_and_existing_folders(tiny_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    shutil.rmtree(run / "audit")
    out = tmp_path / "release"
    with pytest.raises(SystemExit) as exit_info:
        main(["release", "--run", str(run), "--out", str(out), *FAST])
    assert exit_info.value.code == 2
    assert "has no audit" in " ".join(capsys.readouterr().err.split()) and not out.exists()

    out.mkdir()
    with pytest.raises(CxrsynthError, match="already exists"):
        release_run(tiny_run, out, ReleaseOptions(num_images=1, reid_steps=10, device="cpu"))
    shutil.rmtree(run / "pipeline")
    with pytest.raises(CxrsynthError, match="no trained model"):
        release_run(run, tmp_path / "other", ReleaseOptions(num_images=1))
    with pytest.raises(CxrsynthError, match="--reid-quantile"):
        release_run(tiny_run, tmp_path / "other", ReleaseOptions(reid_quantile=1.0))
    assert not (tmp_path / "other").exists()
