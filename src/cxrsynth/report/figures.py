"""Figures the report draws itself (the stages' own PNGs are embedded as they are).

* :func:`training_curve_png` — loss (log scale) against step, and ε against step for a DP run;
* :func:`mosaic_png` — a grid of images, enlarged to a readable tile size;
* :func:`synthetic_and_real` — the images of the "synthetic beside real" grid.

Every function returns PNG bytes (nothing is written: the report embeds them).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from cxrsynth.errors import CxrsynthError
from cxrsynth.runfolder import read_samples

GRID_IMAGES = 16
"""Images per side of the synthetic-vs-real grid."""

GRID_COLUMNS = 4
MIN_TILE, MAX_TILE, GAP = 96, 160, 4


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is rendered on servers
    import matplotlib.pyplot as plt

    return plt


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def training_curve_png(records: list[dict], target_epsilon: float | None = None, private_loss: bool = False) -> bytes | None:
    """Loss (log scale) against step, with ε against step beside it when the records carry ``epsilon``.

    Args:
        records: ``train_log.jsonl`` records (``step``, ``loss``, optionally ``epsilon``).
        target_epsilon: drawn as a dashed line on the ε panel when given.
        private_loss: the run is DP: the loss panel's title says the loss is not covered by the
            guarantee (it is the members' un-noised loss), so the figure is labelled even when cut out.

    Returns:
        PNG bytes, or None when no record has a finite loss.
    """
    points = [(int(r["step"]), float(r["loss"])) for r in records
              if "step" in r and isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]) and r["loss"] > 0]
    if not points:
        return None
    epsilons = [(int(r["step"]), float(r["epsilon"])) for r in records
                if isinstance(r.get("epsilon"), (int, float)) and math.isfinite(r["epsilon"])]
    plt = _pyplot()
    panels = 2 if epsilons else 1
    figure, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.2), squeeze=False)
    loss_axis = axes[0][0]
    steps, losses = zip(*points)
    loss_axis.plot(steps, losses, marker="." if len(points) < 30 else None, linewidth=1.4)
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss (ε-prediction MSE)")
    loss_axis.set_title("training loss: members, un-noised\n(not covered by the DP guarantee)" if private_loss
                        else "training loss", fontsize=10)
    loss_axis.grid(True, which="both", alpha=0.3)
    if epsilons:
        eps_axis = axes[0][1]
        eps_steps, values = zip(*epsilons)
        eps_axis.plot(eps_steps, values, color="tab:red", linewidth=1.4, label="ε spent")
        if target_epsilon is not None:
            eps_axis.axhline(target_epsilon, color="grey", linestyle="--", linewidth=1, label="target ε")
        eps_axis.set_xlabel("optimizer step")
        eps_axis.set_ylabel("ε")
        eps_axis.set_title("privacy budget spent", fontsize=10)
        eps_axis.legend(fontsize=8)
        eps_axis.grid(True, alpha=0.3)
    return _figure_png(figure)


def mosaic_png(images: np.ndarray, columns: int = GRID_COLUMNS) -> bytes:
    """A grid of uint8 grayscale images (N×S×S), tiles enlarged to 96–160 px, on a white background.

    Raises:
        ValueError: for an empty or malformed array.
    """
    images = np.asarray(images)
    if images.ndim != 3 or len(images) == 0 or images.dtype != np.uint8:
        raise ValueError(f"expected non-empty uint8 N×S×S images, got {images.dtype} {images.shape}")
    tile = int(min(max(images.shape[1], MIN_TILE), MAX_TILE))
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    canvas = Image.new("L", (columns * (tile + GAP) - GAP, rows * (tile + GAP) - GAP), color=255)
    for i, pixels in enumerate(images):
        image = Image.fromarray(np.ascontiguousarray(pixels))
        if tile != image.width:
            image = image.resize((tile, tile), Image.Resampling.LANCZOS)
        canvas.paste(image, ((i % columns) * (tile + GAP), (i // columns) * (tile + GAP)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def synthetic_and_real(contents, count: int = GRID_IMAGES, seed: int = 0) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """The first ``count`` synthetic images and ``count`` seeded real images never trained on.

    Real images come from the ``test`` split, else ``holdout``; ``member`` (training) images only
    when neither exists.

    Args:
        contents: a :class:`cxrsynth.report.collect.RunContents`.
        count: images per side.
        seed: seed of the real images' choice.

    Returns:
        ``(synthetic or None, real or None, split of the real images or "")``.
    """
    synthetic = None
    size = contents.data.size if contents.data is not None else None
    if contents.samples is not None:
        try:
            synthetic = read_samples(contents.samples.folder, count, size or _sample_side(contents.samples.folder), []).images
        except CxrsynthError as exc:
            contents.problems.append(f"synthetic images could not be read: {exc.problem}")
    real, split = None, ""
    if contents.data is not None:
        for split in ("test", "holdout", "member"):
            rows = contents.data.rows(split)
            if len(rows):
                chosen = np.sort(np.random.default_rng(seed).choice(rows, size=min(count, len(rows)), replace=False))
                real = np.asarray(contents.data.images[chosen])
                break
    return synthetic, real, split if real is not None else ""


def _sample_side(folder) -> int:
    """Side of the first sample file (used when the prepared data is unavailable, so nothing is resized)."""
    files = sorted(folder.glob("*.png")) or sorted(folder.glob("*.dcm"))
    if not files:
        return 0
    if files[0].suffix == ".dcm":
        import pydicom

        return int(pydicom.dcmread(files[0], stop_before_pixels=True).Rows)
    with Image.open(files[0]) as image:
        return int(image.width)
