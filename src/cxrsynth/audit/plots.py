"""The audit's figures: ``roc.png`` (every attack, log-log) and ``memorization.png`` (DCR, closest pairs)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrsynth.fsutil import atomic_write_bytes

MIN_FPR = 1e-3


@dataclass(frozen=True)
class RocCurve:
    """One attack's ROC on the evaluation half, in its chosen direction."""

    name: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    inverted: bool


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_roc(curves: list[RocCurve], path: str | Path, title: str) -> Path:
    """ROC curves on log-log axes, FPR and TPR from 1e-3 to 1, with the chance diagonal; returns ``path``."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 5.0))
    grid = np.logspace(np.log10(MIN_FPR), 0, 200)
    axis.plot(grid, grid, linestyle="--", color="grey", linewidth=1, label="chance")
    for curve in curves:
        # Clip zeros to the axis floor so curves that start at FPR 0 are drawn from the edge.
        label = f"{curve.name} (AUC {curve.auc:.3f}{', inverted' if curve.inverted else ''})"
        axis.step(np.clip(curve.fpr, MIN_FPR, 1), np.clip(curve.tpr, MIN_FPR, 1), where="post", label=label, linewidth=1.5)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(MIN_FPR, 1)
    axis.set_ylim(MIN_FPR, 1.15)  # headroom: a perfect attack's curve runs along TPR = 1
    axis.set_xlabel("false positive rate (non-members called members)")
    axis.set_ylabel("true positive rate (members found)")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(True, which="both", alpha=0.3)
    return _save(figure, path)


def _pairs_mosaic(samples: np.ndarray, members: np.ndarray, columns: int = 4) -> np.ndarray:
    """A mosaic of (sample | nearest member) pairs, ``columns`` pairs per row, 2-pixel gaps."""
    count, size, _ = samples.shape
    rows = int(np.ceil(count / columns))
    gap = 2
    pair_width = 2 * size + gap
    mosaic = np.full((rows * (size + gap), columns * (pair_width + 3 * gap)), 255, dtype=np.uint8)
    for i in range(count):
        top = (i // columns) * (size + gap)
        left = (i % columns) * (pair_width + 3 * gap)
        mosaic[top : top + size, left : left + size] = samples[i]
        mosaic[top : top + size, left + size + gap : left + pair_width] = members[i]
    return mosaic


def plot_memorization(
    path: str | Path,
    pixel_dcr: tuple[np.ndarray, np.ndarray] | None,
    closest_pairs: tuple[np.ndarray, np.ndarray] | None,
    summary: str,
) -> Path:
    """DCR histograms (member vs holdout) and the closest (sample | member) pairs; or ``summary`` alone.

    Args:
        path: the PNG to write.
        pixel_dcr: member and holdout distance-to-closest-record arrays, or None when not measured.
        closest_pairs: synthetic images and their nearest member images (uint8), or None.
        summary: one line under the title (e.g. counts flagged, or why nothing was measured).
    """
    plt = _pyplot()
    if pixel_dcr is None or closest_pairs is None:
        figure, axis = plt.subplots(figsize=(6, 1.5))
        axis.axis("off")
        axis.text(0.5, 0.5, summary, ha="center", va="center", wrap=True, fontsize=10)
        return _save(figure, path)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1, 1.3]})
    member, holdout = pixel_dcr
    bins = np.linspace(0.0, max(member.max(), holdout.max()) * 1.05 + 1e-9, 30)
    left.hist(holdout, bins=bins, alpha=0.6, label=f"to holdout (median {np.median(holdout):.3f})")
    left.hist(member, bins=bins, alpha=0.6, label=f"to member (median {np.median(member):.3f})")
    left.set_xlabel("distance to closest record (normalised pixels)")
    left.set_ylabel("synthetic images")
    left.legend(fontsize=8)
    left.set_title("DCR: equal-size member and holdout sets", fontsize=10)
    right.imshow(_pairs_mosaic(*closest_pairs), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    right.axis("off")
    right.set_title("closest pairs: synthetic | nearest training image", fontsize=10)
    figure.suptitle(summary, fontsize=10)
    return _save(figure, path)
