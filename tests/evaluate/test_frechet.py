"""Fréchet distance, k-NN precision/recall and bootstrap intervals against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_part

from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate.bootstrap import half_sample_frechet, percentile_interval
from cxrsynth.evaluate.frechet import (
    frechet_distance,
    frechet_distance_from_statistics,
    gaussian_statistics,
    knn_precision_recall,
)


def test_two_known_gaussians_by_hand() -> None:
    # Commuting (diagonal) covariances: FD = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2 = (1 + 4) + (1 + 1) = 7.
    mu1, sigma1 = np.zeros(2), np.diag([1.0, 4.0])
    mu2, sigma2 = np.array([1.0, 2.0]), np.diag([4.0, 9.0])
    assert frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) == pytest.approx(7.0, abs=1e-9)


def test_samples_of_known_gaussians_approach_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal([0.0, 0.0], [1.0, 2.0], size=(40_000, 2))
    b = rng.normal([1.0, 2.0], [2.0, 3.0], size=(40_000, 2))
    assert frechet_distance(a, b) == pytest.approx(7.0, abs=0.15)


def test_non_commuting_covariances_match_torch_fidelity_eigenvalue_formula() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    ours = frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2)
    theirs = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-8)
    assert ours > 1.0


def _sqrtm_reference(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The pytorch-fid formula: scipy.linalg.sqrtm of the product, ε offset when not finite, real part."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


@pytest.mark.parametrize("rows", [400, 20])
def test_agrees_with_scipy_sqrtm_including_singular_covariances(rows: int) -> None:
    rng = np.random.default_rng(rows)
    a = rng.normal(size=(rows, 32)) @ rng.normal(size=(32, 32))
    b = rng.normal(0.3, 1.0, size=(rows, 32)) @ rng.normal(size=(32, 32))
    stats_a, stats_b = gaussian_statistics(a), gaussian_statistics(b)
    assert frechet_distance(a, b) == pytest.approx(_sqrtm_reference(*stats_a, *stats_b), rel=1e-5)


def test_identical_sets_give_zero_distance_and_full_precision_recall() -> None:
    features = np.random.default_rng(2).normal(size=(50, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    result = knn_precision_recall(features, features.copy())
    assert (result.precision, result.recall) == (1.0, 1.0)


def test_fewer_images_than_dimensions_stays_finite() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 32)), rng.normal(1.0, 1.0, size=(5, 32))
    mu1, s1 = gaussian_statistics(a)
    assert np.linalg.matrix_rank(s1) < 32
    distance = frechet_distance(a, b)
    assert np.isfinite(distance) and distance > 10.0


def test_precision_recall_on_a_constructed_line() -> None:
    # Real points 0..9; synthetic: 0..3 (on the real manifold) and 100..103 (far away).
    real = np.arange(10, dtype=float)[:, None]
    synthetic = np.array([0, 1, 2, 3, 100, 101, 102, 103], dtype=float)[:, None]
    result = knn_precision_recall(real, synthetic, k=3)
    assert result.precision == pytest.approx(0.5)
    # Synthetic balls (3rd-neighbour radii) around 0..3 reach up to 6: real 0..6 covered, 7..9 not.
    assert result.recall == pytest.approx(0.7)


def test_precision_recall_match_torch_fidelity() -> None:
    rng = np.random.default_rng(4)
    real, synthetic = rng.normal(size=(80, 5)), rng.normal(0.4, 1.3, size=(60, 5))
    ours = knn_precision_recall(real, synthetic)
    precision, recall = calculate_precision_recall_part(torch.from_numpy(synthetic), torch.from_numpy(real), 3)
    assert (ours.precision, ours.recall) == (pytest.approx(precision), pytest.approx(recall))


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(CxrsynthError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(CxrsynthError, match="widths differ"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(CxrsynthError, match="NaN"):
        knn_precision_recall(np.full((5, 2), np.nan), np.zeros((5, 2)))


def test_half_sample_interval_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(200, 3)), rng.normal(0.5, 1.0, size=(200, 3))
    first = half_sample_frechet(a, b, resamples=100, seed=7)
    assert first.interval == half_sample_frechet(a, b, resamples=100, seed=7).interval
    assert first.interval[0] < first.estimate < first.interval[1]
    # The estimate is the expected distance at the half sizes: close to, and above, the full-sample one.
    assert frechet_distance(a, b) < first.estimate < 1.5 * frechet_distance(a, b)
    assert percentile_interval(np.array([np.nan])) is None
