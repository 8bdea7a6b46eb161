"""``cxrsynth data info``: what a prepared folder holds, per split, and a sample grid to look at."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from cxrsynth.data.prepared import NO_FINDING, SPLITS, PreparedData, load_prepared, split_labels
from cxrsynth.fsutil import atomic_write_bytes

GRID_FILE = "sample_grid.png"
_MIN_TILE, _MAX_TILE, _LABEL_WIDTH, _GAP = 96, 256, 80, 2


def summarize_prepared(data: PreparedData) -> dict:
    """Counts of a prepared folder.

    Returns:
        ``{"root", "format", "size", "images", "label_names", "splits": {split: {"images",
        "patients", "labels": {finding: images with it, …, "No Finding": images with none}}}}``.
    """
    splits = {}
    for split in SPLITS:
        subset = data.index[data.index["split"] == split]
        label_counts = {name: 0 for name in data.label_names}
        normal = 0
        for cell in subset["labels"]:
            findings = split_labels(cell)
            normal += not findings
            for name in findings:
                label_counts[name] = label_counts.get(name, 0) + 1
        label_counts[NO_FINDING] = normal
        splits[split] = {"images": int(len(subset)), "patients": int(subset["patient_id"].nunique()), "labels": label_counts}
    return {
        "root": str(data.root),
        "format": data.meta.get("format"),
        "size": data.size,
        "images": int(len(data.index)),
        "label_names": data.label_names,
        "splits": splits,
    }


def print_summary(summary: dict, console: Console | None = None) -> None:
    """Print :func:`summarize_prepared`'s counts as two rich tables (splits, then findings per split)."""
    console = console or Console()
    splits = summary["splits"]
    overview = Table(title=f"{summary['root']}  ({summary['format']}, {summary['size']}², {summary['images']} images)")
    overview.add_column("split")
    overview.add_column("images", justify="right")
    overview.add_column("patients", justify="right")
    for split in SPLITS:
        overview.add_row(split, str(splits[split]["images"]), str(splits[split]["patients"]))
    console.print(overview)
    findings = Table(title="images per finding")
    findings.add_column("finding")
    for split in SPLITS:
        findings.add_column(split, justify="right")
    for name in [*summary["label_names"], NO_FINDING]:
        findings.add_row(name, *(str(splits[split]["labels"].get(name, 0)) for split in SPLITS))
    console.print(findings)


def sample_grid(data: PreparedData, per_split: int = 8, seed: int = 0) -> Image.Image:
    """A grayscale grid: one row per non-empty split (named at the left), ``per_split`` random images each.

    Tiles are shown at the prepared size, enlarged to at least 96 px (and at most 256 px) per side.
    """
    rng = np.random.default_rng(seed)
    tile = int(min(max(data.size, _MIN_TILE), _MAX_TILE))
    rows = [(split, data.rows(split)) for split in SPLITS if len(data.rows(split))]
    columns = max(1, min(per_split, max((len(r) for _, r in rows), default=1)))
    grid = Image.new("L", (_LABEL_WIDTH + columns * (tile + _GAP), max(1, len(rows)) * (tile + _GAP)), color=0)
    draw = ImageDraw.Draw(grid)
    for y, (split, split_rows) in enumerate(rows):
        chosen = np.sort(rng.choice(split_rows, size=min(columns, len(split_rows)), replace=False))
        top = y * (tile + _GAP)
        draw.text((6, top + tile // 2 - 6), split, fill=255)
        for x, row in enumerate(chosen):
            image = Image.fromarray(np.asarray(data.images[row]))
            if tile != data.size:
                image = image.resize((tile, tile), Image.Resampling.LANCZOS)
            grid.paste(image, (_LABEL_WIDTH + x * (tile + _GAP), top))
    return grid


def write_sample_grid(data: PreparedData, path: str | Path, per_split: int = 8, seed: int = 0) -> Path:
    """Save :func:`sample_grid` as a PNG at ``path`` (atomically). Returns the path."""
    buffer = io.BytesIO()
    sample_grid(data, per_split=per_split, seed=seed).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def describe_prepared(path: str | Path, grid: str | Path | None = None, console: Console | None = None) -> dict:
    """Load a prepared folder, print its counts and write its sample grid.

    Args:
        path: the prepared folder.
        grid: where to write the grid PNG (default ``path/sample_grid.png``).
        console: where to print (stdout by default).

    Returns:
        :func:`summarize_prepared`'s dict, plus ``"grid"``: the PNG path.

    Raises:
        CxrsynthError: when ``path`` is not a valid prepared folder.
    """
    data = load_prepared(path)
    summary = summarize_prepared(data)
    print_summary(summary, console)
    grid_path = write_sample_grid(data, Path(grid) if grid is not None else Path(path) / GRID_FILE)
    (console or Console()).print(f"sample grid: {grid_path}")
    return {**summary, "grid": str(grid_path)}
