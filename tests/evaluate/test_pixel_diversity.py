"""Pixel statistics (histograms, power spectra) and MS-SSIM diversity on constructed images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate.diversity import mean_pairwise_ms_ssim, ms_ssim_settings, random_pairs
from cxrsynth.evaluate.pixel import histogram_wasserstein, power_spectrum_distance, radial_power_spectrum


def test_histogram_wasserstein_of_shifted_constant_images_is_the_shift() -> None:
    dark, bright = np.full((3, 8, 8), 100, np.uint8), np.full((5, 8, 8), 110, np.uint8)
    assert histogram_wasserstein(dark, bright) == pytest.approx(10.0)
    assert histogram_wasserstein(dark, dark) == 0.0


def test_power_spectrum_peaks_at_the_frequency_of_a_sinusoid() -> None:
    size, cycles = 32, 4
    x = np.arange(size)
    wave = 127.5 + 100 * np.cos(2 * np.pi * cycles * x / size)[None, :].repeat(size, axis=0)
    frequencies, power = radial_power_spectrum(wave.round().astype(np.uint8)[None])
    assert frequencies[np.argmax(power)] == pytest.approx(cycles / size)


def test_blur_removes_high_frequency_power() -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, size=(6, 32, 32)).astype(np.uint8)
    blurred = np.stack([gaussian_filter(image.astype(float), 2.0) for image in noisy]).round().astype(np.uint8)
    _, noisy_power = radial_power_spectrum(noisy)
    _, blurred_power = radial_power_spectrum(blurred)
    assert blurred_power[-1] < 1e-3 * noisy_power[-1]
    assert power_spectrum_distance(noisy, noisy) == 0.0
    assert power_spectrum_distance(noisy, blurred) > 1.0
    with pytest.raises(CxrsynthError, match="one size"):
        power_spectrum_distance(noisy, noisy[:, :16, :16])


def test_ms_ssim_settings_fit_the_image_size() -> None:
    assert ms_ssim_settings(256).scales == 5 and ms_ssim_settings(256).kernel_size == 11
    assert (ms_ssim_settings(64).kernel_size, ms_ssim_settings(64).scales) == (11, 3)
    assert (ms_ssim_settings(32).kernel_size, ms_ssim_settings(32).scales) == (11, 2)
    assert sum(ms_ssim_settings(64).betas) == pytest.approx(1.0)


def test_random_pairs_never_pair_an_image_with_itself() -> None:
    pairs = random_pairs(3, 500, np.random.default_rng(0))
    assert (pairs[:, 0] != pairs[:, 1]).all() and pairs.max() == 2


def test_collapsed_set_scores_higher_ms_ssim_than_a_varied_one() -> None:
    rng = np.random.default_rng(1)
    varied = np.stack([gaussian_filter(rng.normal(128, 60, (32, 32)), 1.5) for _ in range(12)]).clip(0, 255).astype(np.uint8)
    collapsed = np.repeat(varied[:1], 12, axis=0)
    collapsed_mean, pairs = mean_pairwise_ms_ssim(collapsed, n_pairs=20)
    varied_mean, _ = mean_pairwise_ms_ssim(varied, n_pairs=20)
    assert collapsed_mean == pytest.approx(1.0, abs=1e-5)
    assert varied_mean < 0.5 and pairs == 20
