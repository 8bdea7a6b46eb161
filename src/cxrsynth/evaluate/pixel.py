"""Pixel statistics: intensity histograms and radially averaged power spectra (texture and noise).

These need no learned features, so they catch what feature-based metrics can miss: wrong
brightness/contrast (histogram), and missing or excess fine texture or noise (power spectrum).

* :func:`histogram_wasserstein` — 1-D Wasserstein-1 distance between the pooled pixel-intensity
  distributions of two image sets, in gray levels (0..255), via ``scipy.stats.wasserstein_distance``.
* :func:`power_spectrum_distance` — root-mean-square difference, in decades (log10 units), between
  the two sets' mean radially averaged power spectra; each image's mean is removed first so the
  DC term doesn't dominate, and the DC bin is excluded.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance

from cxrsynth.errors import CxrsynthError

GRAY_LEVELS = np.arange(256, dtype=np.float64)


def _check(images: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3 or len(array) == 0:
        raise CxrsynthError(f"{what} must be a non-empty uint8 N×H×W array, got {array.dtype} {tuple(array.shape)}")
    return array


def intensity_histogram(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Normalised 256-bin histogram (sums to 1) of all pixels of uint8 images N×H×W."""
    array = _check(images, "images")
    counts = np.zeros(256, dtype=np.float64)
    for start in range(0, len(array), chunk):
        counts += np.bincount(np.asarray(array[start : start + chunk]).ravel(), minlength=256)
    return counts / counts.sum()


def histogram_wasserstein(images_a: np.ndarray, images_b: np.ndarray) -> float:
    """Wasserstein-1 distance (gray levels) between the pixel-intensity distributions of two image sets."""
    return float(
        wasserstein_distance(GRAY_LEVELS, GRAY_LEVELS, intensity_histogram(images_a), intensity_histogram(images_b))
    )


def radial_power_spectrum(images: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean radially averaged power spectrum of square uint8 images N×S×S.

    Returns:
        ``(frequencies, power)``: frequencies in cycles per pixel for radii 1..S/2 (DC excluded),
        and the mean power at each (images scaled to [0, 1], per-image mean removed).

    Raises:
        CxrsynthError: for non-square or malformed images.
    """
    array = _check(images, "images")
    size = array.shape[1]
    if array.shape[2] != size:
        raise CxrsynthError(f"power spectra need square images, got {array.shape[1]}×{array.shape[2]}")
    frequency = np.fft.fftfreq(size)
    radius = np.rint(np.hypot(frequency[:, None], frequency[None, :]) * size).astype(np.int64)
    max_radius = size // 2
    total = np.zeros((size, size), dtype=np.float64)
    for start in range(0, len(array), chunk):
        block = np.asarray(array[start : start + chunk], dtype=np.float64) / 255.0
        block -= block.mean(axis=(1, 2), keepdims=True)
        total += (np.abs(np.fft.fft2(block)) ** 2).sum(axis=0)
    mean_power = total / len(array)
    inside = radius <= max_radius
    sums = np.bincount(radius[inside], weights=mean_power[inside], minlength=max_radius + 1)
    counts = np.bincount(radius[inside], minlength=max_radius + 1)
    radii = np.arange(1, max_radius + 1)
    return radii / size, sums[1:] / counts[1:]


def _log_spectrum(power: np.ndarray) -> np.ndarray:
    # A floor keeps a perfectly flat image (zero power) finite instead of -inf.
    return np.log10(np.maximum(power, 1e-20))


def power_spectrum_distance(images_a: np.ndarray, images_b: np.ndarray) -> float:
    """RMS difference (decades) between the mean radial power spectra of two sets of same-size images.

    Raises:
        CxrsynthError: when the image sizes differ.
    """
    if np.asarray(images_a).shape[1:] != np.asarray(images_b).shape[1:]:
        raise CxrsynthError(
            f"power spectra need images of one size, got {np.asarray(images_a).shape[1:]} and {np.asarray(images_b).shape[1:]}"
        )
    _, power_a = radial_power_spectrum(images_a)
    _, power_b = radial_power_spectrum(images_b)
    return float(np.sqrt(np.mean((_log_spectrum(power_a) - _log_spectrum(power_b)) ** 2)))
