"""Tick labels of the evaluation figures never overlap (the power spectrum is on log axes)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrsynth.evaluate.plots import NamedSet, pixel_statistics_figure


def overlapping_tick_labels(figure) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty tick labels of one axis whose drawn boxes intersect."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    clashes = []
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            labels = [label for label in axis.get_ticklabels(minor=False) + axis.get_ticklabels(minor=True)
                      if label.get_visible() and label.get_text().strip()]
            boxes = [label.get_window_extent(renderer) for label in labels]
            for i in range(len(labels)):
                for j in range(i + 1, len(labels)):
                    if boxes[i].overlaps(boxes[j]):
                        clashes.append((labels[i].get_text(), labels[j].get_text()))
    return clashes


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_power_spectrum_tick_labels_do_not_overlap(size: int) -> None:
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(size)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(20, size, size)), axis=1), axis=2)
    smooth = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    noisy = rng.integers(0, 256, size=(20, size, size), dtype=np.uint8)
    figure = pixel_statistics_figure([NamedSet("real", smooth), NamedSet("synthetic", noisy)])
    try:
        assert overlapping_tick_labels(figure) == []
        labels = [label.get_text() for label in figure.axes[1].xaxis.get_ticklabels() if label.get_text()]
        assert "1/2" in labels and len(labels) >= 2
    finally:
        plt.close(figure)
