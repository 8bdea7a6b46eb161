"""Figures of the evaluation, written as PNGs under ``RUN/eval/`` (matplotlib, Agg backend, atomic writes).

* ``pixel_stats.png`` — intensity histograms and radially averaged power spectra of the
  synthetic, reference and real-baseline image sets;
* ``domain_features.png`` — the domain-classifier features of those sets projected on the first
  two principal components of the reference features (a collapsed or shifted generator is visible);
* ``utility_auroc.png`` — AUROC per finding, TSTR vs TRTR, with bootstrap intervals.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrsynth.evaluate.pixel import GRAY_LEVELS, intensity_histogram, radial_power_spectrum
from cxrsynth.fsutil import atomic_write_bytes


@dataclass(frozen=True)
class NamedSet:
    """An image or feature set with the name it gets in legends (e.g. ``synthetic``, ``test``)."""

    name: str
    values: np.ndarray


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def power_of_two_ticks(axis, low: float, high: float) -> None:
    """Label a log frequency axis at 1/2, 1/4, … only (no minor labels).

    Matplotlib labels the minor ticks of a log axis spanning less than a decade or two
    (2×10⁻², 3×10⁻², …), and those labels overlap; powers of two are the natural ticks of
    frequencies 1/S … 1/2 cycles per pixel.
    """
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    exponents = range(int(np.floor(np.log2(high))), int(np.ceil(np.log2(low))) - 1, -1)
    ticks = [2.0**e for e in exponents if low * 0.999 <= 2.0**e <= high * 1.001]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(lambda value, _: f"1/{round(1 / value):d}" if value < 1 else f"{value:g}")
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def pixel_statistics_figure(image_sets: list[NamedSet]):
    """The matplotlib figure of :func:`plot_pixel_statistics` (for drawing or inspecting)."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    frequency_range = [np.inf, 0.0]
    for named in image_sets:
        left.plot(GRAY_LEVELS, intensity_histogram(named.values), label=f"{named.name} (N={len(named.values)})")
        frequencies, power = radial_power_spectrum(named.values)
        right.loglog(frequencies, power, label=named.name)
        frequency_range = [min(frequency_range[0], frequencies.min()), max(frequency_range[1], frequencies.max())]
    if frequency_range[1] > 0:
        power_of_two_ticks(right.xaxis, *frequency_range)
    left.set(xlabel="gray level", ylabel="fraction of pixels", title="Intensity histogram")
    right.set(xlabel="spatial frequency (cycles/pixel)", ylabel="mean power", title="Radially averaged power spectrum")
    left.legend()
    right.legend()
    return figure


def plot_pixel_statistics(image_sets: list[NamedSet], path: str | Path) -> Path:
    """Two panels: intensity histogram and radial power spectrum of each uint8 image set. Returns ``path``."""
    return _save(pixel_statistics_figure(image_sets), path)


def plot_feature_projection(feature_sets: list[NamedSet], path: str | Path) -> Path:
    """Scatter of feature sets on the first two principal axes of the first set. Returns ``path``."""
    plt = _pyplot()
    reference = feature_sets[0].values.astype(np.float64)
    centre = reference.mean(axis=0)
    _, _, axes = np.linalg.svd(reference - centre, full_matrices=False)
    basis = axes[:2].T
    figure, ax = plt.subplots(figsize=(5.5, 5))
    for named in feature_sets:
        projected = (named.values.astype(np.float64) - centre) @ basis
        ax.scatter(projected[:, 0], projected[:, 1], s=6, alpha=0.5, label=f"{named.name} (N={len(named.values)})")
    ax.set(xlabel="PC 1", ylabel="PC 2", title="Domain-classifier features")
    ax.legend()
    return _save(figure, path)


def plot_utility(utility: dict, path: str | Path) -> Path:
    """Bars of per-finding AUROC (TSTR vs TRTR) with their 95% intervals. Returns ``path``."""
    plt = _pyplot()
    rows = [row for row in utility["per_finding"] if row["tstr_auroc"] is not None]
    positions = np.arange(len(rows))
    figure, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(rows) + 2), 4))
    for offset, key, label in ((-0.2, "tstr", "TSTR (synthetic)"), (0.2, "trtr", "TRTR (real)")):
        values = np.array([row[f"{key}_auroc"] for row in rows])
        intervals = [row[f"{key}_auroc_ci"] or [v, v] for row, v in zip(rows, values)]
        errors = np.abs(np.array(intervals).T - values) if rows else None
        ax.bar(positions + offset, values, width=0.4, yerr=errors, capsize=2, label=label)
    ax.axhline(0.5, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(positions, [row["finding"] for row in rows], rotation=45, ha="right")
    ax.set(ylabel="AUROC on real test images", ylim=(0, 1.15), title="Downstream utility")
    ax.legend(loc="upper center", ncol=2)
    return _save(figure, path)
