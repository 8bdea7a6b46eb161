"""A plain folder of PNG/JPEG radiographs, with an optional labels CSV.

With ``--labels-csv`` the CSV lists the images: columns ``file`` (path relative to SRC, which may
not leave it — ``../../etc/passwd`` is refused —, or absolute), ``patient_id`` and optionally ``labels`` (finding names joined by ``|``; empty or
``No Finding`` when none). Files under SRC that the CSV does not name are ignored (their count is
recorded). Without a CSV every PNG/JPEG under SRC (recursive) is an image, each image is its own
patient, and every image is labelled ``No Finding`` — meta.json says both.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrsynth.data.sources import PROBLEM_COLUMN, SOURCE_COLUMN, SourceListing, canonical_labels, read_csv_table
from cxrsynth.data.sources.imaging import decode_image_file, find_image_files
from cxrsynth.errors import CxrsynthError

CSV_COLUMNS: tuple[str, ...] = ("file", "patient_id")
_CSV_FIX = "give a CSV with columns file,patient_id,labels (file relative to SRC; labels joined by |)"
PER_IMAGE_PATIENT_NOTE = (
    "no patient ids in the source: each image is treated as its own patient, so one real patient's "
    "images may fall in different splits"
)


def _listing_without_csv(root: Path) -> SourceListing:
    files = find_image_files(root)
    if not files:
        raise CxrsynthError(f"{root} contains no PNG or JPEG files", "point SRC at a folder of .png/.jpg/.jpeg radiographs")
    relative = [path.relative_to(root).as_posix() for path in files]
    records = pd.DataFrame(
        {
            "image_id": relative,
            "patient_id": relative,
            "labels": canonical_labels(None),
            "file": relative,
            SOURCE_COLUMN: [str(path) for path in files],
        }
    )
    return SourceListing(
        format="folder",
        source=root,
        records=records,
        decode=decode_image_file,
        patient_ids_real=False,
        patient_ids_note=PER_IMAGE_PATIENT_NOTE,
        extra_meta={"labels_csv": None, "label_source": "none: every image is labelled No Finding"},
    )


def _path_problem(name: str, path: Path, root: Path, labels_csv: Path) -> str | None:
    """Why a CSV ``file`` cannot be used (None when fine): missing, or a relative path that leaves SRC."""
    if not Path(name).is_absolute() and not path.resolve().is_relative_to(root.resolve()):
        return (f"{name!r} in {labels_csv} leaves the source folder {root}; relative paths must stay inside it "
                "(give an absolute path to use a file elsewhere on purpose)")
    if not path.is_file():
        return f"{path} is listed in {labels_csv} but does not exist"
    return None


def _listing_with_csv(root: Path, labels_csv: Path) -> SourceListing:
    table = read_csv_table(labels_csv, CSV_COLUMNS, "folder labels CSV", _CSV_FIX).dropna(subset=["file"])
    if table.empty:
        raise CxrsynthError(f"folder labels CSV {labels_csv} has no rows", _CSV_FIX)
    no_patient = table["patient_id"].isna()
    if no_patient.any():
        raise CxrsynthError(
            f"{labels_csv}: {int(no_patient.sum())} row(s) have no patient_id (first: {table.loc[no_patient, 'file'].iloc[0]})",
            "fill in patient_id for every row; splits are by patient",
        )
    files = table["file"].str.strip()
    if files.duplicated().any():
        raise CxrsynthError(f"{labels_csv} lists {files[files.duplicated()].iloc[0]} more than once", "keep one row per file")
    paths = [Path(name) if Path(name).is_absolute() else root / name for name in files]
    labels = table["labels"] if "labels" in table.columns else pd.Series([None] * len(table))
    records = pd.DataFrame(
        {
            "image_id": files.tolist(),
            "patient_id": table["patient_id"].str.strip().tolist(),
            "labels": [canonical_labels(cell) for cell in labels],
            "file": files.tolist(),
            SOURCE_COLUMN: [str(path) for path in paths],
            PROBLEM_COLUMN: [_path_problem(name, path, root, labels_csv) for name, path in zip(files, paths)],
        }
    )
    listed = {path.resolve() for path in paths}
    unlisted = sum(1 for path in find_image_files(root) if path.resolve() not in listed)
    return SourceListing(
        format="folder",
        source=root,
        records=records,
        decode=decode_image_file,
        extra_meta={"labels_csv": str(labels_csv), "label_source": "labels CSV", "unlisted_files_ignored": unlisted},
    )


def list_folder(src: str | Path, labels_csv: str | Path | None = None) -> SourceListing:
    """List a folder of PNG/JPEG images (see the module docstring) without decoding any pixel.

    Args:
        src: the folder, searched recursively.
        labels_csv: optional CSV with ``file,patient_id[,labels]``; it then lists the images.

    Returns:
        The listing; kept metadata column ``file`` (path relative to SRC as given).

    Raises:
        CxrsynthError: when the folder is missing or has no images, or the CSV is malformed.
    """
    root = Path(src)
    if not root.is_dir():
        raise CxrsynthError(f"image folder {root} does not exist", "point SRC at a folder of PNG/JPEG files")
    return _listing_with_csv(root, Path(labels_csv)) if labels_csv else _listing_without_csv(root)
