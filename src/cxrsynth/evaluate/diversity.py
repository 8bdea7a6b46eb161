"""Diversity: mean MS-SSIM over random pairs of images (torchmetrics).

A generator that collapses onto a few images makes its samples look alike: the mean multi-scale
SSIM over random *synthetic* pairs rises above the same mean over random *real* pairs. Equal
values mean the synthetic set is as varied as the real one (by this measure).

MS-SSIM's standard setting (5 scales, 11-px Gaussian window) needs images ≥ 176 px; for smaller
images :func:`ms_ssim_settings` keeps the 11-px window and uses as many scales as fit (the coarsest
scale must still be at least one window wide), with the standard per-scale exponents of those
scales renormalised to sum to 1. The settings used are reported with the values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from cxrsynth.errors import CxrsynthError

STANDARD_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of Wang et al. (2003), finest scale first."""

DEFAULT_PAIRS = 500


@dataclass(frozen=True)
class MsSsimSettings:
    """Window size and per-scale exponents used for one image size."""

    kernel_size: int
    betas: tuple[float, ...]

    @property
    def scales(self) -> int:
        """Number of scales."""
        return len(self.betas)


def ms_ssim_settings(size: int) -> MsSsimSettings:
    """The largest standard-looking MS-SSIM setting that fits ``size``-px images (see module docstring).

    Raises:
        CxrsynthError: for images under 8 px.
    """
    for kernel in (11, 7, 5, 3):
        for scales in range(len(STANDARD_BETAS), 0, -1):
            coarsest = size // 2 ** (scales - 1)
            # torchmetrics' own precondition, plus a coarsest scale at least one window wide.
            fits_torchmetrics = size >= 2**scales and size // max(1, scales - 1) ** 2 > kernel - 1
            if coarsest >= kernel and fits_torchmetrics:
                betas = np.asarray(STANDARD_BETAS[:scales])
                return MsSsimSettings(kernel_size=kernel, betas=tuple(float(b) for b in betas / betas.sum()))
    raise CxrsynthError(f"images of {size} px are too small for MS-SSIM", "evaluate images of at least 8 px")


def random_pairs(count: int, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """``n_pairs`` random index pairs (n_pairs×2) of distinct images among ``count``."""
    first = rng.integers(0, count, size=n_pairs)
    # An offset in 1..count-1 guarantees the second index differs from the first.
    second = (first + rng.integers(1, count, size=n_pairs)) % count
    return np.stack([first, second], axis=1)


def pairwise_ms_ssim(images: np.ndarray, pairs: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """MS-SSIM of each given pair of uint8 images N×S×S (data range 1); returns one value per pair."""
    array = np.asarray(images)
    settings = ms_ssim_settings(array.shape[-1])
    values = []
    for start in range(0, len(pairs), batch_size):
        block = pairs[start : start + batch_size]
        first = torch.from_numpy(np.asarray(array[block[:, 0]], dtype=np.float32) / 255.0)[:, None]
        second = torch.from_numpy(np.asarray(array[block[:, 1]], dtype=np.float32) / 255.0)[:, None]
        values.append(
            multiscale_structural_similarity_index_measure(
                first,
                second,
                data_range=1.0,
                kernel_size=settings.kernel_size,
                betas=settings.betas,
                reduction="none",
                normalize="relu",
            ).numpy()
        )
    return np.concatenate(values).astype(np.float64)


def mean_pairwise_ms_ssim(images: np.ndarray, n_pairs: int = DEFAULT_PAIRS, seed: int = 0) -> tuple[float, int]:
    """Mean MS-SSIM over ``n_pairs`` random pairs of distinct images (uint8 N×S×S, N ≥ 2).

    Returns:
        ``(mean, pairs_used)``.

    Raises:
        CxrsynthError: for fewer than 2 images or non-square images.
    """
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise CxrsynthError(f"MS-SSIM needs uint8 N×S×S images, got {array.dtype} {tuple(array.shape)}")
    if len(array) < 2:
        raise CxrsynthError("MS-SSIM diversity needs at least 2 images", "use more samples")
    pairs = random_pairs(len(array), n_pairs, np.random.default_rng(seed))
    return float(pairwise_ms_ssim(array, pairs).mean()), int(len(pairs))
