"""Memorization: normalised pixel distances, nearest neighbours, Carlini's copy test, DCR comparison."""

from __future__ import annotations

import numpy as np
import pytest

from cxrsynth.audit.memorization import (
    CARLINI_RATIO_THRESHOLD,
    dcr_comparison,
    flag_memorized,
    measure_memorization,
    nearest_images,
    nearest_neighbours,
    pixel_vectors,
)
from cxrsynth.errors import CxrsynthError
from tests.factories import smooth_patient_images

SIZE = 24


def patients(count: int, seed: int) -> np.ndarray:
    """One image each of ``count`` different smooth 'patients'."""
    rng = np.random.default_rng(seed)
    return np.concatenate([smooth_patient_images(rng, 1, SIZE) for _ in range(count)])


def jitter(images: np.ndarray, seed: int, noise: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, noise, images.shape), 0, 255).astype(np.uint8)


def test_pixel_vectors_ignore_exposure_and_have_unit_norm() -> None:
    image = patients(1, 0)
    exposed = np.clip(image.astype(float) * 0.6 + 50, 0, 255).round().astype(np.uint8)
    a, b = pixel_vectors(image), pixel_vectors(exposed)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert np.linalg.norm(a - b) < 0.02
    assert np.all(pixel_vectors(np.full((1, SIZE, SIZE), 7, np.uint8)) == 0)
    with pytest.raises(CxrsynthError):
        pixel_vectors(np.zeros((2, 4, 5), np.uint8))


def test_nearest_neighbours_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    queries, references = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
    distances, indices = nearest_neighbours(queries, references, k=5, chunk=7)
    brute = np.linalg.norm(queries[:, None] - references[None], axis=2)
    expected = np.argsort(brute, axis=1)[:, :5]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(brute, expected, axis=1), rtol=1e-4)
    assert nearest_neighbours(queries, references[:3], k=50)[0].shape == (30, 3)


def test_nearest_images_merge_blocks_and_select_rows() -> None:
    images = patients(40, 14)
    queries = pixel_vectors(jitter(images[[5, 30]], 15))
    rows = np.arange(2, 40, 2)  # even rows only: 5 is not among them, 30 is (position 14)
    whole = nearest_neighbours(queries, pixel_vectors(images[rows]), k=6)
    blocked = nearest_images(queries, images, rows, k=6, chunk=7)
    np.testing.assert_array_equal(blocked[1], whole[1])
    np.testing.assert_allclose(blocked[0], whole[0], rtol=1e-5)
    assert blocked[1][1, 0] == 14 and 5 not in rows[blocked[1][0]]


def test_copy_test_flags_a_near_copy_and_not_a_new_patient() -> None:
    members = patients(60, 2)
    synthetic = np.concatenate([jitter(members[[7]], 3), patients(1, 99), jitter(members[[41]], 4)])
    flags = flag_memorized(synthetic, members)
    assert flags.flagged.tolist() == [True, False, True]
    assert flags.nearest_member[[0, 2]].tolist() == [7, 41]
    assert flags.neighbours == 50 and flags.threshold == CARLINI_RATIO_THRESHOLD
    assert flags.ratio[1] > 0.5  # a new patient is about as far from its nearest member as from the 50 nearest


def test_dcr_comparison_detects_samples_close_to_members_only() -> None:
    members, holdout = patients(40, 5), patients(40, 6)
    copies = pixel_vectors(jitter(members[:30], 7))
    leaky = dcr_comparison(copies, pixel_vectors(members), pixel_vectors(holdout))
    assert leaky["fraction_closer_to_member"] == 1.0
    assert leaky["p_value"] < 1e-3 and leaky["member"]["q50"] < leaky["holdout"]["q50"]
    fresh = dcr_comparison(pixel_vectors(patients(30, 8)), pixel_vectors(members), pixel_vectors(holdout))
    assert 0.2 < fresh["fraction_closer_to_member"] < 0.8 and fresh["p_value"] > 0.01


def test_measure_memorization_reports_flags_and_closest_pairs() -> None:
    members, holdout = patients(30, 10), patients(30, 11)
    synthetic = np.concatenate([jitter(members[[3]], 12), patients(19, 13)])
    names = [f"{i:06d}.png" for i in range(20)]
    result = measure_memorization(synthetic, names, members, np.arange(30), members[:20], holdout[:20], features=pixel_vectors)
    report = result.report
    assert report["n_flagged"] == 1 and report["flagged_samples"] == ["000000.png"]
    assert report["fraction_flagged"] == pytest.approx(0.05)
    assert report["closest_pairs"][0]["sample"] == "000000.png" and len(report["closest_pairs"]) == 16
    assert report["dcr_domain"] is not None and set(report["dcr_pixel"]["member"]) == {"q05", "q25", "q50", "q75", "mean"}
    samples, nearest = result.closest_pairs
    np.testing.assert_array_equal(nearest[0], members[3])
    assert samples.shape == nearest.shape == (16, SIZE, SIZE)


def follow_ups(image: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` studies of one patient: the same anatomy with small acquisition differences."""
    return np.concatenate([jitter(image[None], seed + i, noise=3.0) for i in range(count)])


def test_copy_ratio_counts_a_patient_with_many_follow_ups_once() -> None:
    others = patients(60, 20)
    series = follow_ups(patients(1, 21)[0], 60, 22)  # one patient, 60 near-identical studies
    members = np.concatenate([series, others])
    patient_ids = np.array(["long"] * 60 + [f"p{i}" for i in range(60)])
    copy = jitter(series[[0]], 23, noise=1.0)
    per_image = flag_memorized(copy, members)
    assert not per_image.flagged[0]  # the other 59 follow-ups fill the denominator and hide the copy
    per_patient = flag_memorized(copy, members, patients=patient_ids)
    assert per_patient.flagged[0] and per_patient.nearest_member[0] < 60
    assert per_patient.neighbours == 50 and per_patient.ratio[0] < per_image.ratio[0] / 3


def test_nearest_images_per_patient_match_brute_force() -> None:
    rng = np.random.default_rng(30)
    images = patients(45, 31)
    patient_ids = rng.integers(0, 12, size=45).astype(str)
    rows = np.arange(45)[::-1]  # any order of rows
    queries = pixel_vectors(jitter(images[[3, 17, 40]], 32))
    distances, positions = nearest_images(queries, images, rows, k=5, chunk=4, patients=patient_ids[rows])
    brute = np.linalg.norm(queries[:, None] - pixel_vectors(images[rows])[None], axis=2)
    for q in range(3):
        per_patient = {}
        for column, patient in enumerate(patient_ids[rows]):
            per_patient[patient] = min(per_patient.get(patient, np.inf), brute[q, column])
        expected = sorted(per_patient.values())[:5]
        np.testing.assert_allclose(distances[q], expected, rtol=1e-4)
        np.testing.assert_allclose(brute[q, positions[q]], expected, rtol=1e-4)
        assert len(set(patient_ids[rows][positions[q]])) == 5


def _clustered_gallery_null(seed: int) -> tuple[float, float]:
    """DCR of samples that crowd onto a few real images, with nothing leaked: (binomial p, new p)."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(seed)
    gallery = rng.normal(size=(40, 6))
    is_member = rng.permutation(np.repeat([True, False], 20))
    centres = gallery[rng.choice(40, size=3, replace=False)]  # a mode-collapsed generator
    synthetic = centres[rng.integers(0, 3, size=200)] + rng.normal(0, 0.05, size=(200, 6))
    result = dcr_comparison(synthetic, gallery[is_member], gallery[~is_member], seed=seed)
    closer = int(round(result["fraction_closer_to_member"] * 200))
    return binomtest(closer, 200, 0.5, alternative="greater").pvalue, result["p_value"]


def test_dcr_test_holds_its_level_when_samples_crowd_onto_one_gallery() -> None:
    results = np.array([_clustered_gallery_null(seed) for seed in range(200)])
    binomial_rate, relabelling_rate = (results <= 0.05).mean(axis=0)
    assert binomial_rate > 0.25  # the binomial test over images rejects far too often
    assert relabelling_rate <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 200)


def test_copy_test_fires_on_member_copies_and_not_on_holdout_copies() -> None:
    from cxrsynth.audit.memorization import copy_test

    real = patients(80, 40)
    member_rows, holdout_rows = np.arange(40), np.arange(40, 80)
    ids = np.array([f"p{i}" for i in range(80)])
    fresh = patients(20, 41)
    leaky = np.concatenate([jitter(real[:12], 42), fresh])
    result = copy_test(pixel_vectors(leaky), real, member_rows, ids[:40], holdout_rows, ids[40:])
    assert result["n_flagged_member"] == 12 and result["n_flagged_holdout"] == 0
    assert result["p_value"] < 1e-3
    duplicated = np.concatenate([jitter(real[40:52], 43), fresh])  # near-copies of holdout patients
    null = copy_test(pixel_vectors(duplicated), real, member_rows, ids[:40], holdout_rows, ids[40:])
    assert null["n_flagged_holdout"] == 12 and null["p_value"] == 1.0
