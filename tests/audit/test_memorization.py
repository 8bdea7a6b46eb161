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
    assert leaky["binomial_p_value"] < 1e-6 and leaky["member"]["q50"] < leaky["holdout"]["q50"]
    fresh = dcr_comparison(pixel_vectors(patients(30, 8)), pixel_vectors(members), pixel_vectors(holdout))
    assert 0.2 < fresh["fraction_closer_to_member"] < 0.8 and fresh["binomial_p_value"] > 0.01


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
