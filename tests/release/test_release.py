"""`cxrsynth release`: a planted copy of a training image is never exported, and nothing released lets a reader
regenerate it; DP runs are released unscreened (covered by their guarantee) unless --screen; top-up, manifest, errors."""

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
    from cxrsynth.runfolder import run_data_path

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
        seeds: list[int] = []  # the candidate seeds the release used

        def __call__(self, start: int, count: int) -> Candidates:
            Planted.seeds.append(self.seed)
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
    monkeypatch.setattr("cxrsynth.release.bundle.SampledCandidates", planting(members, {0: 0, 2: 7, 5: 13}))
    out = tmp_path / "release"
    with pytest.raises(SystemExit) as exit_info:
        main(["release", "--run", str(tiny_run), "--out", str(out), "--num-images", "6", *FAST])
    assert exit_info.value.code == 0
    assert "released 6 images" in capsys.readouterr().out

    names = sorted(path.name for path in out.iterdir())
    assert names == ["manifest.csv", "release.json", *(f"synthetic_{i:06d}.png" for i in range(6))]
    with (out / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "sampler", "steps", "label", "guidance"]
    assert [row["file"] for row in rows] == [f"synthetic_{i:06d}.png" for i in range(6)]
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


SECRET = 7_654_321_098_765
"""A distinctive candidate seed: the tests look for it in everything a release writes."""


def all_keys(value) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in all_keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in all_keys(item)}
    return set()


def test_nothing_in_a_release_lets_a_reader_regenerate_the_dropped_candidates(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom

    members = member_images(tiny_run)
    planted = planting(members, {1: 2, 3: 9})
    monkeypatch.setattr("cxrsynth.release.bundle.SampledCandidates", planted)
    monkeypatch.setattr("cxrsynth.release.bundle.secret_seed", lambda: SECRET)
    out = tmp_path / "release"
    report = release_run(tiny_run, out, ReleaseOptions(num_images=4, image_format="dicom", steps=2, reid_steps=10,
                                                       device="cpu", batch_size=8, seed=3))
    assert report["dropped"]["near_copy"] >= 2 and report["privacy"]["screened"]
    files = sorted(path.name for path in out.iterdir())
    assert files == ["manifest.csv", "release.json", *(f"synthetic_{i:06d}.dcm" for i in range(4))]  # no gaps
    with (out / "manifest.csv").open(newline="") as handle:
        assert csv.DictReader(handle).fieldnames == ["file", "sampler", "steps", "label", "guidance"]
    assert not {"seed", "index", "indices"} & (all_keys(report["sampling"]) | all_keys(report["candidates"]))
    assert report["screens"]["linked_to_member"]["network"]["seed"] == 3  # the screen's seed, not the candidates'
    for path in out.iterdir():  # the secret seed, in any spelling, is nowhere in the folder
        raw = path.read_bytes()
        assert str(SECRET).encode() not in raw and SECRET.to_bytes(8, "little") not in raw, path.name
    for path in sorted(out.glob("*.dcm")):
        comment = str(pydicom.dcmread(path).ImageComments)
        assert "SYNTHETIC" in comment and "seed" not in comment and "index" not in comment, comment
    assert set(planted.seeds) == {SECRET}  # the candidates came from the secret seed, not from --seed


def test_each_release_draws_a_fresh_secret_seed() -> None:
    from cxrsynth.release import secret_seed

    seeds = {secret_seed() for _ in range(4)}
    assert len(seeds) == 4 and all(0 <= seed < 2**63 for seed in seeds)


PRIVACY = {"epsilon": 7.5, "delta": 1e-3, "target_epsilon": 8.0, "unit": "patient", "accountant": "prv",
           "noise_multiplier": 1.1, "max_grad_norm": 1.0, "sample_rate": 0.3, "steps": 8, "privacy_units": 12}


def dp_run(tiny_run: Path, dest: Path, privacy: dict | str = PRIVACY) -> Path:
    """A copy of the tiny run marked as trained with DP (a ``privacy.json`` as DP training writes it)."""
    run = copy_run(tiny_run, dest)
    (run / "privacy.json").write_text(privacy if isinstance(privacy, str) else json.dumps(privacy))
    return run


def test_a_dp_run_is_released_unscreened_and_covered_by_its_guarantee(tiny_run: Path, tmp_path: Path) -> None:
    run = dp_run(tiny_run, tmp_path / "run")
    out = tmp_path / "release"
    # A data folder that does not exist: an unscreened release never reads the member images.
    report = release_run(run, out, ReleaseOptions(num_images=3, steps=2, device="cpu", batch_size=8,
                                                  data=tmp_path / "no-data-here"))
    privacy = report["privacy"]
    assert privacy == {**privacy, "dp": True, "screened": False, "covered_by_dp": True, "epsilon": 7.5, "delta": 1e-3,
                       "unit": "patient"}
    assert "Covered by the run's differential-privacy guarantee (ε = 7.5, δ = 0.001) per patient" in privacy["statement"]
    assert "not screened" in privacy["statement"] and any("label" in caveat for caveat in privacy["caveats"])
    assert report["dropped"] is None and report["screens"] is None and report["candidates"]["screened"] == 0
    assert report["audit"]["verdict"] is None and report["audit"]["leak_detected"] is None  # member-dependent
    assert report["warnings"] == []
    assert json.loads((out / "release.json").read_text()) == report
    # Nothing private of the run leaves it: no training log, no loss, no weights, no audit scores.
    assert sorted(path.name for path in out.iterdir()) == ["manifest.csv", "release.json",
                                                           *(f"synthetic_{i:06d}.png" for i in range(3))]
    text = (out / "release.json").read_text()
    assert not [key for key in all_keys(report) if "loss" in key or "img_per_s" in key]
    assert "train_log" not in text and "classifier" not in text and "scores" not in text


def test_screening_a_dp_run_is_explicit_and_says_the_release_is_not_covered(tiny_run: Path, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = dp_run(tiny_run, tmp_path / "run")
    out = tmp_path / "release"
    with pytest.raises(SystemExit) as exit_info:
        main(["release", "--run", str(run), "--out", str(out), "--num-images", "2", "--screen", *FAST])
    assert exit_info.value.code == 0
    assert "NOT covered" in " ".join(capsys.readouterr().out.split())
    report = json.loads((out / "release.json").read_text())
    assert report["privacy"]["screened"] and not report["privacy"]["covered_by_dp"]
    assert report["privacy"]["statement"].startswith("NOT covered by the run's differential-privacy guarantee")
    assert report["screens"]["near_copy"]["ratio_threshold"] == pytest.approx(1 / 6)
    assert any("not covered" in warning for warning in report["warnings"])


def test_no_screen_is_refused_without_dp_and_a_broken_privacy_json_is_an_error(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CxrsynthError, match="--no-screen.*without differential privacy"):
        release_run(tiny_run, tmp_path / "a", ReleaseOptions(num_images=1, screen=False))
    broken = dp_run(tiny_run, tmp_path / "run", privacy='{"delta": 0.001}')
    with pytest.raises(CxrsynthError, match="privacy.json holds no valid epsilon and delta"):
        release_run(broken, tmp_path / "b", ReleaseOptions(num_images=1))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class NoLinks:
    """A stand-in member gallery that links nothing (the test is about the copy screen)."""

    def match(self, images: np.ndarray):
        from types import SimpleNamespace

        return SimpleNamespace(similarity=np.zeros(len(images)))


def test_a_near_copy_of_a_patient_with_many_follow_ups_is_still_dropped(tmp_path: Path) -> None:
    from cxrsynth.audit.memorization import flag_memorized
    from cxrsynth.release import ReleaseScreen

    # 56 images per patient: a candidate's 50 nearest training images are all its own patient's follow-ups.
    data = load_prepared(make_prepared_folder(tmp_path / "data", n_patients=12, images_per_patient=56, size=32))
    rows = np.sort(data.rows("member"))
    rng = np.random.default_rng(3)
    source = np.asarray(data.images[rows[:1]]).astype(int)
    nudged = np.clip(source + rng.integers(-4, 5, size=source.shape), 0, 255).astype(np.uint8)
    per_image = flag_memorized(nudged, data.images, rows)  # one image per *image*: the follow-ups hide the copy
    assert not per_image.flagged[0], per_image.ratio
    screen = ReleaseScreen(data=data, copy_ratio=1 / 6, gallery=NoLinks(), similarity_threshold=1.0)
    assert screen.screen(nudged).near_copy[0]
