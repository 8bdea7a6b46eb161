"""Sources that ``cxrsynth data prepare`` reads: one module per on-disk format.

Each format module turns its folder (or file) into a :class:`SourceListing`: one record per image
(id, patient, labels, kept metadata) and a way to get each image's pixels, without decoding any
pixel yet. :mod:`cxrsynth.data.prepare` then limits, splits, decodes and writes the prepared folder
the same way for every format. :mod:`.imaging` holds the pixel decoding they share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from cxrsynth.data.prepared import join_labels, split_labels
from cxrsynth.errors import CxrsynthError

FORMATS: tuple[str, ...] = ("nih", "dicom", "folder", "chestmnist")
SOURCE_COLUMN = "_source"
"""Hidden record column: where a record's pixels are (a path, or a locator for :attr:`SourceListing.stream`)."""
PROBLEM_COLUMN = "_problem"
"""Hidden record column: why a record cannot be read (e.g. its file is missing); empty when fine.
prepare refuses such records, or leaves them out and counts them with ``--skip-bad``."""

Decoder = Callable[[Any], np.ndarray]
PixelTask = tuple[Decoder, Any]


@dataclass
class SourceListing:
    """What a source offers, before any pixel is decoded.

    Attributes:
        format: the format name (one of :data:`FORMATS`).
        source: the folder or file read.
        records: one row per image, in source order: ``image_id``, ``patient_id``, ``labels``
            (``|``-joined, ``No Finding`` when none), kept metadata columns,
            :data:`SOURCE_COLUMN` for :attr:`decode`, and optionally :data:`PROBLEM_COLUMN`.
            ``patient_id`` may be missing only on a record that has a problem.
        decode: a picklable top-level function mapping a :data:`SOURCE_COLUMN` value to a 2-D
            ``uint8`` or 0..255 ``float32`` array; it raises ``CxrsynthError`` for an unreadable image.
        test_patients: patients fixed to the test split by the source (e.g. ``test_list.txt``);
            None means the test split is a seeded patient split.
        test_split: how the test split is chosen, recorded in meta.json.
        patient_ids_real: False when each image stands for its own patient (no ids in the source).
        patient_ids_note: what meta.json says about patient ids when they are not real.
        extra_meta: format-specific facts recorded in meta.json (e.g. the CSV file read).
        stream: for sources whose pixels are read as one stream (an ``.npz``), a function that
            yields one ``(decoder, payload)`` task per record of the given frame, in its order.
    """

    format: str
    source: Path
    records: pd.DataFrame
    decode: Decoder | None = None
    test_patients: frozenset[str] | None = None
    test_split: str = "seeded patient split"
    patient_ids_real: bool = True
    patient_ids_note: str = ""
    extra_meta: dict[str, Any] = field(default_factory=dict)
    stream: Callable[[pd.DataFrame], Iterator[PixelTask]] | None = None

    def pixel_tasks(self, records: pd.DataFrame) -> Iterator[PixelTask]:
        """Lazily yield one ``(decoder, payload)`` task per row of ``records`` (a subset of :attr:`records`)."""
        if self.stream is not None:
            return self.stream(records)
        if self.decode is None:
            raise TypeError(f"{self.format} listing has neither decode nor stream")
        decode = self.decode
        return ((decode, value) for value in records[SOURCE_COLUMN].tolist())


def canonical_labels(cell: object) -> str:
    """Normalise a labels cell (``A|B``, ``A | B``, empty, NaN) to the index.csv form (``No Finding`` when none)."""
    return join_labels(split_labels(cell) if isinstance(cell, str) else [])


def read_csv_table(path: Path, required: tuple[str, ...], what: str, fix: str) -> pd.DataFrame:
    """Read a CSV of strings and check it has the columns a source needs.

    Args:
        path: the CSV file.
        required: column names that must be present.
        what: how the error names the file's role (e.g. "NIH labels CSV").
        fix: what to tell the user when a column is missing.

    Returns:
        The table, every cell a string (empty cells as NaN), column names stripped of spaces.

    Raises:
        CxrsynthError: when the file is missing, unreadable, or lacks a required column.
    """
    if not path.is_file():
        raise CxrsynthError(f"{what} {path} does not exist", fix)
    try:
        # index_col=False: rows ending in a stray comma (common in Data_Entry_2017.csv) must not
        # turn the first column into the index and shift every other column
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CxrsynthError(f"{what} {path} cannot be read as CSV ({exc})", fix) from None
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise CxrsynthError(
            f"{what} {path} lacks required column(s) {', '.join(repr(c) for c in missing)} "
            f"(found: {', '.join(repr(c) for c in table.columns)})",
            fix,
        )
    return table
