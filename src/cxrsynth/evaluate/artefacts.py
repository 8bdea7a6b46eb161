"""Artefact rate: the share of synthetic images with pixel-level noise beyond what real images show.

Averages (FD, precision) let a few broken samples disappear; this counts them. Each image gets a
**noise score**: the mean absolute difference between the image and its 3×3 median filter, over
the interior pixels, in gray levels (0..255). Salt-and-pepper-like speckle, residual diffusion noise
and isolated saturated pixels raise it; smooth anatomy, edges of ribs and the mediastinum raise
it little, because a median filter keeps edges.

The threshold is a high quantile (:data:`REAL_QUANTILE`, 99.5%) of the scores of a *reference* set
of real images; the artefact rate of a set is the share of its images above it. By construction a
fresh set of real images from the same source scores about 0.5%: the **real baseline** is measured
on real images other than the reference (another split), so it shows the sampling noise of the
threshold. With few reference images the 99.5% quantile is the maximum or near it; the JSON states
the reference N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from cxrsynth.errors import CxrsynthError

REAL_QUANTILE = 0.995
"""Quantile of the reference real images' noise scores used as the artefact threshold."""


def noise_scores(images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Per-image noise score (float64, gray levels) of uint8 N×H×W images (see the module docstring).

    Raises:
        CxrsynthError: for anything but a non-empty uint8 N×H×W array with sides ≥ 5.
    """
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3 or len(array) == 0 or min(array.shape[1:]) < 5:
        raise CxrsynthError(f"noise scores need a non-empty uint8 N×H×W array (sides ≥ 5), got "
                            f"{array.dtype} {tuple(array.shape)}")
    scores = np.empty(len(array), dtype=np.float64)
    for start in range(0, len(array), chunk):
        block = np.asarray(array[start:start + chunk], dtype=np.float64)
        smooth = median_filter(block, size=(1, 3, 3), mode="nearest")
        residual = np.abs(block - smooth)[:, 1:-1, 1:-1]
        scores[start:start + len(block)] = residual.mean(axis=(1, 2))
    return scores


@dataclass(frozen=True)
class ArtefactRates:
    """Artefact rates of synthetic images and of real baseline images against one real threshold.

    Attributes:
        threshold: the noise score above which an image counts as an artefact (gray levels).
        quantile: the reference quantile the threshold is (0.995).
        n_reference: real images the threshold was set on.
        rate: share of synthetic images above the threshold.
        n_synthetic: synthetic images scored.
        count: synthetic images above the threshold.
        real_baseline: share of the baseline real images above it (≈ 1 − quantile by construction).
        n_real_baseline: baseline real images scored.
    """

    threshold: float
    quantile: float
    n_reference: int
    rate: float
    n_synthetic: int
    count: int
    real_baseline: float
    n_real_baseline: int

    def to_json(self) -> dict:
        """The ``artefacts`` object of fidelity.json."""
        return {"threshold": self.threshold, "quantile": self.quantile, "n_reference": self.n_reference,
                "rate": self.rate, "n_synthetic": self.n_synthetic, "count": self.count,
                "real_baseline": self.real_baseline, "n_real_baseline": self.n_real_baseline}


def artefact_rates(synthetic: np.ndarray, reference: np.ndarray, baseline: np.ndarray,
                   quantile: float = REAL_QUANTILE) -> ArtefactRates:
    """Score ``synthetic`` and ``baseline`` against the ``quantile`` of ``reference``'s noise scores.

    Args:
        synthetic: uint8 N×H×W synthetic images.
        reference: uint8 real images that set the threshold.
        baseline: uint8 real images, disjoint from ``reference``, scored like the synthetic ones.
        quantile: the reference quantile used as threshold.

    Raises:
        CxrsynthError: for an image array that is not uint8 N×H×W, or image sizes that differ.
    """
    shapes = {np.asarray(images).shape[1:] for images in (synthetic, reference, baseline)}
    if len(shapes) != 1:
        raise CxrsynthError(f"artefact rates need images of one size, got {sorted(shapes)}",
                            "evaluate synthetic and real images at the prepared size")
    threshold = float(np.quantile(noise_scores(reference), quantile))
    synthetic_scores, baseline_scores = noise_scores(synthetic), noise_scores(baseline)
    count = int((synthetic_scores > threshold).sum())
    return ArtefactRates(threshold=threshold, quantile=quantile, n_reference=len(reference),
                         rate=count / len(synthetic_scores), n_synthetic=len(synthetic_scores), count=count,
                         real_baseline=float((baseline_scores > threshold).mean()),
                         n_real_baseline=len(baseline_scores))
