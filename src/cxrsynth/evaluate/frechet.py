"""Distances between two sets of feature vectors: Fréchet distance and k-NN precision/recall.

Both take plain float arrays (N×D, one row per image) so any feature extractor can feed them:
the domain classifier here, the audit's features, or Inception features.

* :func:`frechet_distance` — the Fréchet (2-Wasserstein) distance between the Gaussians fitted to
  the two sets (Heusel et al., 2017: the formula behind FID):
  ``‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)``. Only the trace of the matrix square root is needed;
  it is computed exactly from the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (similar
  to Σ₁Σ₂), which needs no ε offset when covariances are singular and no discarding of imaginary
  round-off, unlike ``scipy.linalg.sqrtm`` of the product (the tests check both agree).
* :func:`knn_precision_recall` — improved precision and recall (Kynkäänniemi et al., NeurIPS 2019):
  each set's manifold is the union of balls around its points with radius the distance to the
  k-th nearest neighbour (k = 3) in the same set; precision is the fraction of synthetic points
  inside the real manifold, recall the fraction of real points inside the synthetic manifold.

Resampling intervals over these functions (half-samples at a matched N) live in :mod:`cxrsynth.evaluate.bootstrap`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxrsynth.errors import CxrsynthError

KNN_NEIGHBOURHOOD = 3
"""k of Kynkäänniemi et al.'s precision/recall (their default, and torch-fidelity's)."""


def _check_features(name: str, features: np.ndarray, min_rows: int) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise CxrsynthError(f"{name} must be a 2-D array (images × features), got shape {array.shape}")
    if array.shape[0] < min_rows:
        raise CxrsynthError(
            f"{name} has {array.shape[0]} image(s); at least {min_rows} are needed",
            "use more images (e.g. a larger --num-samples)",
        )
    if not np.all(np.isfinite(array)):
        raise CxrsynthError(f"{name} contains NaN or infinite values")
    return array


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean vector and (unbiased, N−1) covariance matrix of ``features`` (N×D, N ≥ 2)."""
    array = _check_features("features", features, 2)
    return array.mean(axis=0), np.atleast_2d(np.cov(array, rowvar=False))


def _psd_square_root(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (round-off negatives clipped)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((Σ₁ Σ₂)^½)`` for symmetric PSD matrices, via the symmetric form ``tr((Σ₁^½ Σ₂ Σ₁^½)^½)``.

    Σ₁Σ₂ is similar to Σ₁^½ Σ₂ Σ₁^½, which is symmetric PSD, so its eigenvalues are real and
    non-negative and ``eigvalsh`` gives them stably — also when the covariances are singular
    (fewer images than dimensions), where ``scipy.linalg.sqrtm`` of the product needs an ε offset
    and returns round-off imaginary parts. It is also ~10× faster, which matters for bootstraps.
    """
    root = _psd_square_root(sigma1)
    eigenvalues = np.linalg.eigvalsh(root @ sigma2 @ root)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂): ``‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr((Σ₁Σ₂)^½)``.

    Args:
        mu1, mu2: mean vectors (D).
        sigma1, sigma2: covariance matrices (D×D, symmetric positive semi-definite).

    Returns:
        The distance (≥ 0; float round-off below 0 is clipped).

    Raises:
        CxrsynthError: when the shapes disagree.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise CxrsynthError(
            f"Fréchet distance needs matching shapes, got means {mu1.shape}/{mu2.shape} and "
            f"covariances {sigma1.shape}/{sigma2.shape}"
        )
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(distance), 0.0)


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N₁×D and N₂×D, each N ≥ 2).

    Raises:
        CxrsynthError: for fewer than 2 rows, mismatched widths, or non-finite values.
    """
    a = _check_features("first feature set", features1, 2)
    b = _check_features("second feature set", features2, 2)
    if a.shape[1] != b.shape[1]:
        raise CxrsynthError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance_from_statistics(*gaussian_statistics(a), *gaussian_statistics(b))


def _kth_neighbour_radii(points: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest *other* point of the same set."""
    radii = []
    for start in range(0, len(points), chunk):
        distances = torch.cdist(points[start : start + chunk], points)
        # The point itself is at distance 0, so the k-th other neighbour is the (k+1)-th smallest.
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _fraction_inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    inside = []
    for start in range(0, len(queries), chunk):
        distances = torch.cdist(queries[start : start + chunk], centres)
        inside.append((distances <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).to(torch.float64).mean())


@dataclass(frozen=True)
class PrecisionRecall:
    """Improved precision and recall of a synthetic set with respect to a real one."""

    precision: float
    recall: float


def knn_precision_recall(
    real: np.ndarray, synthetic: np.ndarray, k: int = KNN_NEIGHBOURHOOD, chunk: int = 1024
) -> PrecisionRecall:
    """Kynkäänniemi et al.'s precision (synthetic inside the real manifold) and recall (real inside synthetic).

    Args:
        real: reference features, N_r×D (N_r > k).
        synthetic: synthetic features, N_s×D (N_s > k).
        k: neighbourhood size defining each point's ball radius.
        chunk: rows per distance block (bounds memory at chunk × N floats).

    Returns:
        :class:`PrecisionRecall`; identical sets give 1 and 1.

    Raises:
        CxrsynthError: when a set has k or fewer points or the widths differ.
    """
    real_array = torch.from_numpy(_check_features("real feature set", real, k + 1))
    synthetic_array = torch.from_numpy(_check_features("synthetic feature set", synthetic, k + 1))
    if real_array.shape[1] != synthetic_array.shape[1]:
        raise CxrsynthError(f"feature widths differ: {real_array.shape[1]} vs {synthetic_array.shape[1]}")
    real_radii = _kth_neighbour_radii(real_array, k, chunk)
    synthetic_radii = _kth_neighbour_radii(synthetic_array, k, chunk)
    return PrecisionRecall(
        precision=_fraction_inside(synthetic_array, real_array, real_radii, chunk),
        recall=_fraction_inside(real_array, synthetic_array, synthetic_radii, chunk),
    )
