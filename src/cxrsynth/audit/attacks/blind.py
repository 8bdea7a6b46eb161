"""``blind``: a validity check that looks at no model at all.

A logistic regression on simple image statistics (intensity quantiles and histogram, contrast,
edge strength, noise level, power in four spatial-frequency bands) is fitted on the calibration
half to tell members from non-members. Members and holdout images drawn from one patient pool are
exchangeable, so it should score an AUC near 0.5; a clearly higher value means the *split* leaks
(e.g. members scanned on another machine or in another year), and then every other attack's AUC
partly measures that difference instead of the model (Das et al., "Blind Baselines Beat Membership
Inference Attacks for Foundation Models", 2024).

Scores are the predicted probability of membership (higher ⇒ member). Calibration rows are scored
out-of-fold (5-fold cross-fitting), so they are honest for choosing a direction too; evaluation
rows are scored by the model fitted on the whole calibration half.
"""

from __future__ import annotations

import numpy as np

from cxrsynth.audit.crossfit import cross_fitted_probabilities
from cxrsynth.audit.registry import AttackContext, register_attack

HISTOGRAM_BINS = 8
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
FREQUENCY_BANDS = 4
REGULARISATION_C = 0.1


def image_statistics(images: np.ndarray) -> np.ndarray:
    """Simple statistics of uint8 images N×S×S → float64 N×F (F = 23).

    Intensity mean, std and quantiles; an 8-bin histogram; mean gradient magnitude; Laplacian
    standard deviation (noise/sharpness); log power in four radial frequency bands.
    """
    pixels = np.asarray(images, dtype=np.float64) / 255.0
    count, size, _ = pixels.shape
    flat = pixels.reshape(count, -1)
    columns = [flat.mean(axis=1), flat.std(axis=1)]
    columns += list(np.quantile(flat, QUANTILES, axis=1))
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    histogram = np.stack([np.histogram(row, bins=edges)[0] for row in flat]) / flat.shape[1]
    columns += list(histogram.T)
    gy, gx = np.gradient(pixels, axis=(1, 2))
    columns.append(np.sqrt(gx**2 + gy**2).reshape(count, -1).mean(axis=1))
    laplacian = (
        -4 * pixels[:, 1:-1, 1:-1] + pixels[:, :-2, 1:-1] + pixels[:, 2:, 1:-1] + pixels[:, 1:-1, :-2] + pixels[:, 1:-1, 2:]
    )
    columns.append(laplacian.reshape(count, -1).std(axis=1))
    power = np.abs(np.fft.fftshift(np.fft.fft2(pixels - pixels.mean(axis=(1, 2), keepdims=True)), axes=(1, 2))) ** 2
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    radius = np.sqrt(xx**2 + yy**2) / (size / 2)
    band_edges = np.linspace(0.0, 1.0, FREQUENCY_BANDS + 1)
    for low, high in zip(band_edges[:-1], band_edges[1:]):
        mask = (radius > low) & (radius <= high)
        columns.append(np.log10(power[:, mask].mean(axis=1) + 1e-12))
    return np.stack(columns, axis=1)


def _classifier(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=REGULARISATION_C, max_iter=2000, random_state=seed))


@register_attack(
    "blind", access="none", member_if="higher",
    description="validity check: logistic regression on simple image statistics, fitted on the calibration half",
)
def blind_scores(context: AttackContext) -> np.ndarray:
    """Out-of-fold (calibration) and fitted (evaluation) membership probabilities per audited image."""
    statistics = image_statistics(context.images)
    labels = np.asarray(context.calibration_is_member).astype(int)
    seed = context.settings.seed
    scores, _ = cross_fitted_probabilities(lambda: _classifier(seed), statistics, np.asarray(context.calibration_rows),
                                           labels, context.patients, seed)
    return scores
