"""The built-in phantom dataset: NIH layout, determinism, patient identity, visible findings, CLI."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrsynth.data import phantom
from cxrsynth.data.phantom import (
    DEFAULT_PREVALENCE,
    FINDINGS,
    PhantomSummary,
    generate_phantom,
    parse_prevalence,
    plan_patient,
    render_studies,
)
from cxrsynth.errors import CxrsynthError

NIH_HEADER_LINE = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NO_FINDINGS = {name: 0.0 for name in FINDINGS}


def read_rows(out: Path) -> list[list[str]]:
    with open(out / "Data_Entry_2017.csv", newline="") as handle:
        return list(csv.reader(handle))[1:]


def read_list(path: Path) -> list[str]:
    return path.read_text().splitlines()


def load_images(out: Path, names: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(out / "images" / name), dtype=np.float32) for name in names])


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PhantomSummary]:
    """20 patients, mean 3 studies, 64², default prevalences."""
    out = tmp_path_factory.mktemp("phantom") / "phantom"
    summary = generate_phantom(out, patients=20, studies_per_patient=3, size=64, seed=3, prevalence=None)
    return out, summary


# --- layout -----------------------------------------------------------------------------------


def test_writes_nih_layout_with_exact_header(dataset: tuple[Path, PhantomSummary]) -> None:
    out, summary = dataset
    expected = ["Data_Entry_2017.csv", "images", "test_list.txt", "train_val_list.txt"]
    assert sorted(p.name for p in out.iterdir()) == expected
    assert (out / "Data_Entry_2017.csv").read_text().splitlines()[0] == NIH_HEADER_LINE
    rows = read_rows(out)
    assert len(rows) == summary.n_images
    assert all(len(row) == 11 for row in rows)
    files = sorted(p.name for p in (out / "images").iterdir())
    assert files == sorted(row[0] for row in rows)
    for name, labels, follow_up, patient, age, sex, view, width, height, sx, sy in rows:
        assert name == f"{int(patient):08d}_{int(follow_up):03d}.png"
        assert patient == str(int(patient)) and 1 <= int(patient) <= 20
        assert labels == "No Finding" or set(labels.split("|")) <= set(FINDINGS)
        assert 0 < int(age) < 100 and sex in {"M", "F"} and view in {"PA", "AP"}
        assert (int(width), int(height)) == (64, 64) and float(sx) == float(sy) > 0
    assert {row[1] for row in rows} - {"No Finding"}, "some images should have findings at default prevalence"
    assert summary.n_patients == 20 and len({row[3] for row in rows}) == 20


def test_images_are_8bit_grayscale_of_the_requested_size(dataset: tuple[Path, PhantomSummary]) -> None:
    out, _ = dataset
    for path in sorted((out / "images").iterdir())[:10]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (64, 64)
            pixels = np.asarray(image)
        assert pixels.dtype == np.uint8 and pixels.min() < 20 and pixels.max() > 200  # black background, white bone


def test_split_lists_are_disjoint_by_patient_cover_everything_and_are_80_20(
    dataset: tuple[Path, PhantomSummary],
) -> None:
    out, summary = dataset
    train_val, test = read_list(out / "train_val_list.txt"), read_list(out / "test_list.txt")
    assert sorted(train_val + test) == sorted(p.name for p in (out / "images").iterdir())
    train_patients, test_patients = {n[:8] for n in train_val}, {n[:8] for n in test}
    assert not train_patients & test_patients
    assert len(test_patients) == 4 == summary.n_test_patients  # 20% of 20 patients
    assert summary.n_test_images == len(test) and summary.n_train_val_images == len(train_val)


def test_studies_per_patient_vary_between_one_and_twice_the_mean(dataset: tuple[Path, PhantomSummary]) -> None:
    out, _ = dataset
    counts = np.bincount([int(row[3]) for row in read_rows(out)])[1:]
    assert counts.min() >= 1 and counts.max() <= 6
    assert len(set(counts.tolist())) >= 3, "counts should vary between patients"
    assert 2.0 <= counts.mean() <= 4.0
    single = [plan_patient(0, index, 1.0, DEFAULT_PREVALENCE) for index in range(10)]
    assert all(len(plan.studies) == 1 for plan in single)


def test_summary_is_readable(dataset: tuple[Path, PhantomSummary]) -> None:
    out, summary = dataset
    text = str(summary)
    assert str(out) in text and f"{summary.n_images} images" in text and "No Finding" in text
    assert sum(summary.finding_counts.values()) >= summary.n_images - summary.n_no_finding


# --- determinism and identity -----------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    kwargs = dict(patients=4, studies_per_patient=2, size=32, prevalence=None)
    first = folder_bytes(generate_phantom(tmp_path / "a", seed=7, **kwargs).out)
    second = folder_bytes(generate_phantom(tmp_path / "b", seed=7, **kwargs).out)
    other = folder_bytes(generate_phantom(tmp_path / "c", seed=8, **kwargs).out)
    assert first == second
    shared = set(first) & set(other) - {"Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"}
    assert shared and all(first[name] != other[name] for name in shared)


def test_follow_ups_are_recognisably_the_same_patient(dataset: tuple[Path, PhantomSummary]) -> None:
    """Nearest neighbour (normalised pixels) of a follow-up is another image of the same patient."""
    out, _ = dataset
    names = sorted(p.name for p in (out / "images").iterdir())
    patients = np.array([name[:8] for name in names])
    features = load_images(out, names).reshape(len(names), -1)
    features = (features - features.mean(1, keepdims=True)) / features.std(1, keepdims=True)
    distances = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    has_follow_up = np.array([(patients == p).sum() > 1 for p in patients])
    same = patients[distances.argmin(1)] == patients
    rate = same[has_follow_up].mean()
    chance = (np.bincount(np.unique(patients, return_inverse=True)[1]) - 1).sum() / (len(names) * (len(names) - 1))
    assert rate >= 0.7, f"only {rate:.0%} of follow-ups matched their own patient"
    assert rate >= 10 * chance


def test_different_patients_have_different_anatomy() -> None:
    plans = [plan_patient(0, index, 1.0, NO_FINDINGS) for index in range(6)]
    widths = {round(plan.anatomy.thorax_half_width, 4) for plan in plans}
    hearts = {round(plan.anatomy.heart_left_extent, 4) for plan in plans}
    assert len(widths) == 6 and len(hearts) == 6
    assert {plan.anatomy.sex for plan in plans_of(40)} == {"M", "F"}
    # Any integer seed works, negative ones too, and names a different dataset.
    assert plan_patient(-1, 0, 1.0, NO_FINDINGS).anatomy != plan_patient(0, 0, 1.0, NO_FINDINGS).anatomy


def plans_of(count: int) -> list[phantom.PatientPlan]:
    return [plan_patient(1, index, 1.0, NO_FINDINGS) for index in range(count)]


# --- findings ---------------------------------------------------------------------------------


def with_and_without(finding: str, patient: int, size: int = 96) -> tuple[np.ndarray, np.ndarray, phantom.PatientPlan]:
    """The same film (positioning, exposure, noise) rendered without and with one finding."""
    plan = plan_patient(11, patient, 1.0, NO_FINDINGS)
    study = dataclasses.replace(plan.studies[0], findings=(), view="PA")
    before, after = render_studies(plan, size, (study, dataclasses.replace(study, findings=(finding,))))
    return before.astype(np.float32), after.astype(np.float32), plan


def changed_blob(difference: np.ndarray, threshold: float) -> tuple[int, tuple[float, float]]:
    """Pixel count and centroid (x, y in [0, 1]) of pixels that brightened by more than ``threshold``."""
    rows, cols = np.nonzero(difference > threshold)
    size = difference.shape[0]
    if rows.size == 0:
        return 0, (float("nan"), float("nan"))
    return int(rows.size), (float((cols.mean() + 0.5) / size), float((rows.mean() + 0.5) / size))


# Positioning (shift, rotation, scale) moves a film by at most a few hundredths of its width.
POSITION_TOLERANCE = 0.06


@pytest.mark.parametrize("patient", [0, 1, 2])
def test_nodule_is_a_small_bright_spot_at_its_site(patient: int) -> None:
    before, after, plan = with_and_without("Nodule", patient)
    count, centre = changed_blob(after - before, 12)
    size = before.shape[0]
    assert 2 <= count <= np.pi * (2 * plan.sites.nodule_radius * size) ** 2, "a nodule is a small spot"
    site = plan.sites.nodule_center
    assert np.hypot(centre[0] - site[0], centre[1] - site[1]) < POSITION_TOLERANCE


@pytest.mark.parametrize("patient", [0, 1, 2])
def test_consolidation_is_an_opacity_at_its_site(patient: int) -> None:
    before, after, plan = with_and_without("Consolidation", patient)
    count, centre = changed_blob(after - before, 6)
    assert count >= 0.004 * before.size
    site = plan.sites.consolidation_center
    assert np.hypot(centre[0] - site[0], centre[1] - site[1]) < POSITION_TOLERANCE + 0.03


@pytest.mark.parametrize("patient", [0, 1, 2])
def test_pneumothorax_darkens_a_rim_of_lung_without_markings(patient: int) -> None:
    before, after, plan = with_and_without("Pneumothorax", patient)
    darker = (after - before) < -10
    assert darker.sum() > 0.01 * darker.size
    side = plan.sites.pneumothorax_side
    columns = np.arange(before.shape[1]) + 0.5 < before.shape[1] * plan.anatomy.midline
    on_side = columns if side == 0 else ~columns
    assert darker[:, on_side].sum() > 0.9 * darker.sum(), "only the affected lung changes"
    # The lung collapses toward the hilum, so the air rim lies at the periphery (lateral and apical).
    anatomy = plan.anatomy
    rows, cols = np.nonzero(darker)
    from_midline = np.abs((cols + 0.5) / before.shape[1] - anatomy.midline)
    half_way = (anatomy.lung_medial[side] + anatomy.lung_lateral[side]) / 2
    assert np.median(from_midline) > half_way
    assert np.median((rows + 0.5) / before.shape[0]) < anatomy.lung_base_y[side] - 0.1


@pytest.mark.parametrize("patient", [0, 1, 2])
def test_effusion_whitens_a_lung_base(patient: int) -> None:
    before, after, plan = with_and_without("Effusion", patient)
    brighter = (after - before) > 10
    assert brighter.sum() > 0.01 * brighter.size
    rows = np.nonzero(brighter)[0] / before.shape[0]
    apex, base = plan.anatomy.lung_apex_y[0], plan.anatomy.lung_base_y[0]
    assert np.median(rows) > apex + 0.6 * (base - apex)


def heart_area(image: np.ndarray) -> float:
    """Fraction of bright pixels left of the patient's midline in the lower chest (the cardiac silhouette)."""
    size = image.shape[0]
    box = image[int(0.5 * size) : int(0.78 * size), int(0.5 * size) : int(0.88 * size)]
    return float((box > np.percentile(image, 60)).mean())


@pytest.mark.parametrize("patient", [0, 1, 2])
def test_cardiomegaly_widens_the_cardiac_silhouette(patient: int) -> None:
    before, after, _ = with_and_without("Cardiomegaly", patient)
    assert heart_area(after) > heart_area(before) + 0.08
    assert (after - before).mean() > 1.0, "the heart only grows; nothing darkens"


def test_cardiomegaly_enlarges_the_heart_on_a_sample(tmp_path: Path) -> None:
    out = tmp_path / "cardio"
    generate_phantom(
        out, patients=16, studies_per_patient=2, size=64, seed=4, prevalence={**NO_FINDINGS, "Cardiomegaly": 0.5}
    )
    rows = read_rows(out)
    areas = np.array([heart_area(image) for image in load_images(out, [row[0] for row in rows])])
    has = np.array(["Cardiomegaly" in row[1] for row in rows])
    assert has.sum() >= 6 and (~has).sum() >= 6
    assert areas[has].mean() > areas[~has].mean() + 0.08


def test_effusion_brightens_lung_bases_on_a_sample(tmp_path: Path) -> None:
    out = tmp_path / "effusion"
    prevalence = {**NO_FINDINGS, "Effusion": 0.5}
    generate_phantom(out, patients=16, studies_per_patient=2, size=64, seed=4, prevalence=prevalence)
    rows = read_rows(out)
    images = load_images(out, [row[0] for row in rows])
    images = (images - images.mean((1, 2), keepdims=True)) / images.std((1, 2), keepdims=True)
    # Lateral lung bases (costophrenic angles) on both sides, in exposure-normalised units.
    lateral = np.r_[np.arange(8, 22), np.arange(42, 56)]
    base_brightness = images[:, int(0.62 * 64) : int(0.76 * 64)][:, :, lateral].mean((1, 2))
    has = np.array(["Effusion" in row[1] for row in rows])
    assert has.sum() >= 4 and (~has).sum() >= 4
    assert base_brightness[has].mean() > base_brightness[~has].mean() + 0.2


def test_prevalence_one_and_zero_are_honoured(tmp_path: Path) -> None:
    out = tmp_path / "prev"
    generate_phantom(
        out, patients=6, studies_per_patient=2, size=32, seed=2,
        prevalence={"Nodule": 1.0, "Pneumothorax": 0.0, "Effusion": 0.0, "Cardiomegaly": 0.0, "Consolidation": 0.0},
    )
    labels = [row[1] for row in read_rows(out)]
    assert all(label == "Nodule" for label in labels)


# --- options and errors -----------------------------------------------------------------------


def test_parse_prevalence_reads_pairs() -> None:
    assert parse_prevalence("Cardiomegaly=0.2, nodule=0.05") == {"Cardiomegaly": 0.2, "Nodule": 0.05}
    assert parse_prevalence("") == {}
    assert set(DEFAULT_PREVALENCE) == set(FINDINGS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Atelectasis=0.1", "unknown finding"),
        ("Nodule=1.5", "outside [0, 1]"),
        ("Nodule=-0.1", "outside [0, 1]"),
        ("Nodule=often", "not a number"),
        ("Nodule", "Finding=probability"),
        ("Nodule=0.1,Nodule=0.2", "twice"),
    ],
)
def test_parse_prevalence_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(CxrsynthError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_prevalence(text)


def test_bad_options_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(CxrsynthError, match="size"):
        generate_phantom(tmp_path / "small", patients=2, size=31)
    with pytest.raises(CxrsynthError, match="unknown finding"):
        generate_phantom(tmp_path / "bad", patients=2, size=32, prevalence={"Mass": 0.1})
    assert list(tmp_path.iterdir()) == []


def test_a_failure_leaves_no_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = phantom._png_bytes

    def failing_png(image: np.ndarray) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return original(image)

    monkeypatch.setattr(phantom, "_png_bytes", failing_png)
    with pytest.raises(OSError, match="disk full"):
        generate_phantom(tmp_path / "out", patients=3, studies_per_patient=2, size=32)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(CxrsynthError, match="already exists"):
        generate_phantom(tmp_path / "out", patients=2, size=32)


def run_cli(args: list[str]) -> int:
    from cxrsynth.cli import main  # imports every stage (torch): only this test needs it

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0)


def test_cli_writes_the_dataset_and_refuses_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "phantom"
    args = ["data", "phantom", str(out), "--patients", "3", "--studies-per-patient", "2", "--size", "32", "--seed", "1"]
    assert run_cli([*args, "--prevalence", "Nodule=1"]) == 0
    assert "phantom dataset written" in capsys.readouterr().out
    assert all("Nodule" in row[1] for row in read_rows(out))
    before = folder_bytes(out)
    assert run_cli(args) == 2
    assert "already exists" in " ".join(capsys.readouterr().err.split())
    assert folder_bytes(out) == before
    assert run_cli(["data", "phantom", str(tmp_path / "other"), "--prevalence", "Mass=0.1"]) == 2
    assert not (tmp_path / "other").exists()
