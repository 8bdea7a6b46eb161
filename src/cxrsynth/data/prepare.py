"""``cxrsynth data prepare``: turn a source (nih, dicom, folder, chestmnist) into a prepared folder.

Steps, the same for every format:

1. list the source (:mod:`cxrsynth.data.sources`): records, no pixels yet;
2. keep the first ``limit`` patients; refuse unreadable records, or drop and count them
   (``skip_bad``);
3. split by patient (:mod:`cxrsynth.data.splits`) and check no patient is in two splits;
4. decode, centre-crop and resize in a pool of worker processes, a bounded number of batches in
   flight, writing each row straight into a memory-mapped ``images.npy`` through a sliding window
   that is flushed and unmapped as it moves, so resident memory stays flat whatever the dataset size;
5. write ``index.csv`` and ``meta.json``. Everything is built in a temporary folder that is renamed
   to ``out`` only when complete (:func:`cxrsynth.fsutil.atomic_directory`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import itertools
import multiprocessing
import multiprocessing.pool
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrsynth.data.prepared import IMAGES_FILE, INDEX_FILE, META_FILE, SPLITS, check_patient_splits, split_labels
from cxrsynth.data.sources import FORMATS, PROBLEM_COLUMN, PixelTask, SourceListing
from cxrsynth.data.sources.chestmnist import list_chestmnist
from cxrsynth.data.sources.dicom import list_dicom
from cxrsynth.data.sources.folder import list_folder
from cxrsynth.data.sources.imaging import CROP_METHOD, RESIZE_METHOD, SKIP_BAD_FIX, crop_and_resize, geometry_warning
from cxrsynth.data.sources.nih import NIH_FINDINGS, list_nih, order_label_names
from cxrsynth.data.splits import assign_patient_splits, check_fraction
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_directory, atomic_write_json, check_output_parent

MIN_SIZE, MAX_SIZE = 8, 4096
_BATCH_BYTES = 4 << 20  # pixels per worker batch: small enough to bound memory, big enough to amortise IPC
_WINDOW_BYTES = 64 << 20  # span of images.npy mapped at once while writing
_BATCHES_IN_FLIGHT_PER_WORKER = 4
MAX_SKIPPED_EXAMPLES = 20


def default_workers() -> int:
    """Worker processes used when none is given: min(4, CPU count)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class PrepareOptions:
    """Settings shared by every source format.

    Attributes:
        size: side of the prepared square images in pixels.
        holdout_fraction: share of the non-test patients put in ``holdout``.
        test_fraction: share of patients put in ``test`` when the source fixes no test split.
        seed: seed of the patient splits.
        limit: keep only the first ``limit`` patients (in source order); None keeps all.
        workers: decoding processes; 1 decodes in this process.
        skip_bad: leave out missing or unreadable images (counted in meta.json) instead of failing.
        progress: show progress bars.
    """

    size: int = 128
    holdout_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    limit: int | None = None
    workers: int = 1
    skip_bad: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`CxrsynthError` for a setting outside its range."""
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise CxrsynthError(f"--size must be within {MIN_SIZE}..{MAX_SIZE}, got {self.size}", "pass e.g. --size 128")
        check_fraction(self.holdout_fraction, "--holdout-fraction")
        check_fraction(self.test_fraction, "--test-fraction")
        if self.limit is not None and self.limit < 1:
            raise CxrsynthError(f"--limit must be at least 1, got {self.limit}", "omit --limit to keep every patient")
        if self.workers < 1:
            raise CxrsynthError(f"--workers must be at least 1, got {self.workers}", "pass e.g. --workers 4")


# ---------------------------------------------------------------- decoding, in worker processes


def _decode_batch(batch: list[PixelTask], size: int) -> list[tuple[np.ndarray | None, str, str]]:
    """Decode, crop and resize a batch; a bad image gives ``(None, problem, fix)`` instead of raising.

    A good image gives ``(image, note, "")``, ``note`` being its :func:`geometry_warning` (or "").
    """
    results: list[tuple[np.ndarray | None, str, str]] = []
    for decode, payload in batch:
        try:
            pixels = decode(payload)
            note = geometry_warning(pixels.shape, size) if pixels.ndim == 2 and pixels.size else None
            results.append((crop_and_resize(pixels, size), note or "", ""))
        except CxrsynthError as exc:
            results.append((None, exc.problem, exc.fix))
        except ValueError as exc:  # e.g. an image with no pixels
            where = payload if isinstance(payload, str) else "image"
            results.append((None, f"{where}: {exc}", SKIP_BAD_FIX))
    return results


def _batches(tasks: Iterable[PixelTask], batch_size: int) -> Iterator[list[PixelTask]]:
    iterator = iter(tasks)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch


def _worker_context() -> multiprocessing.context.BaseContext:
    """Start method of the decoding workers: fork on Linux, spawn elsewhere.

    Spawn and forkserver children re-run the parent's ``__main__`` — for the ``cxrsynth`` command
    that imports every stage and torch, seconds per worker. Fork shares the loaded modules; the pool
    forks all its workers up front (:func:`decoding_pool`), before any progress-bar thread exists.
    """
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


@contextlib.contextmanager
def decoding_pool(workers: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """A pool of ``workers`` decoding processes, started now and terminated on exit; None for 1 worker."""
    if workers == 1:
        yield None
        return
    pool = _worker_context().Pool(processes=workers)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def decode_all(
    tasks: Iterable[PixelTask], size: int, pool: multiprocessing.pool.Pool | None, max_in_flight: int = 8
) -> Iterator[tuple[np.ndarray | None, str, str]]:
    """Decode every task to a ``size``×``size`` uint8 image, in order, with bounded memory.

    Tasks are consumed lazily and at most ``max_in_flight`` batches are in flight, so neither the
    task stream (which may carry pixel arrays) nor the results pile up.

    Args:
        tasks: ``(decoder, payload)`` pairs (picklable when a pool is used).
        size: output side.
        pool: worker processes from :func:`decoding_pool`; None decodes in this process.
        max_in_flight: batches submitted to the pool and not yet collected, at most.

    Yields:
        ``(image, note, "")`` for a good image (``note``: its geometry warning, or ""), ``(None, problem, fix)``
        for a bad one.
    """
    batch_size = max(1, min(32, _BATCH_BYTES // (size * size)))
    if pool is None:
        for batch in _batches(tasks, batch_size):
            yield from _decode_batch(batch, size)
        return
    pending: deque[multiprocessing.pool.AsyncResult] = deque()
    for batch in _batches(tasks, batch_size):
        pending.append(pool.apply_async(_decode_batch, (batch, size)))
        if len(pending) >= max_in_flight:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


# ---------------------------------------------------------------- writing images.npy


class _RowWriter:
    """Write rows of an ``images.npy`` in increasing order through a sliding memory map."""

    def __init__(self, path: Path, count: int, size: int) -> None:
        created = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size))
        self.offset = int(created.offset)
        del created
        self.path, self.count, self.size = path, count, size
        self.window_rows = max(1, _WINDOW_BYTES // (size * size))
        self.window: np.memmap | None = None
        self.window_start = 0

    def write(self, row: int, image: np.ndarray) -> None:
        """Store ``image`` at ``row`` (rows must come in increasing order)."""
        if self.window is None or row >= self.window_start + len(self.window):
            self._close_window()
            self.window_start = row
            rows = min(self.window_rows, self.count - row)
            self.window = np.memmap(
                self.path, dtype=np.uint8, mode="r+", offset=self.offset + row * self.size * self.size,
                shape=(rows, self.size, self.size),
            )  # fmt: skip
        self.window[row - self.window_start] = image

    def _close_window(self) -> None:
        # flushing and unmapping keeps written pages out of this process's resident memory
        if self.window is not None:
            self.window.flush()
            self.window = None

    def finish(self, rows_written: int) -> None:
        """Flush, and shrink the array to ``rows_written`` rows when some were left out."""
        self._close_window()
        if rows_written == self.count:
            return
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": (rows_written, self.size, self.size)}
        )
        if len(header.getvalue()) != self.offset:
            # numpy pads .npy headers for in-place growth, so a shorter shape always fits; guard anyway
            raise RuntimeError(f"cannot rewrite the header of {self.path} in place")
        with self.path.open("r+b") as handle:
            handle.write(header.getvalue())
            handle.truncate(self.offset + rows_written * self.size * self.size)


# ---------------------------------------------------------------- records → splits


def limit_patients(records: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """Keep the records of the first ``limit`` distinct patients, in source order (all when None).

    A record with no patient id (an unreadable file) counts as its own patient.
    """
    if limit is None:
        return records
    keys = records["patient_id"].where(records["patient_id"].notna(), "\0" + records["image_id"].astype(str))
    kept = set(pd.unique(keys)[:limit])
    return records[keys.isin(kept)].reset_index(drop=True)


def _drop_bad_records(records: pd.DataFrame, skip_bad: bool) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Refuse records with a listing problem, or drop them and return them as skipped."""
    if PROBLEM_COLUMN not in records.columns:
        return records, []
    bad = records[PROBLEM_COLUMN].notna()
    if not bad.any():
        return records, []
    problems = records.loc[bad, PROBLEM_COLUMN].tolist()
    if not skip_bad:
        raise CxrsynthError(
            f"{len(problems)} listed image(s) cannot be used; first: {problems[0]}",
            SKIP_BAD_FIX,
        )
    skipped = [{"image_id": str(i), "problem": str(p)} for i, p in zip(records.loc[bad, "image_id"], problems)]
    return records[~bad].reset_index(drop=True), skipped


def split_records(records: pd.DataFrame, listing: SourceListing, options: PrepareOptions) -> pd.DataFrame:
    """Add the ``split`` column (by patient) and check no patient is in two splits."""
    assignment = assign_patient_splits(
        records["patient_id"],
        holdout_fraction=options.holdout_fraction,
        test_fraction=options.test_fraction,
        seed=options.seed,
        test_patients=listing.test_patients,
    )
    records = records.copy()
    records["split"] = records["patient_id"].map(assignment)
    check_patient_splits(records, str(listing.source))
    return records


# ---------------------------------------------------------------- the prepared folder


def _index_frame(records: pd.DataFrame) -> pd.DataFrame:
    """index.csv columns: ``row, image_id, patient_id, split, labels`` then kept metadata."""
    hidden = [column for column in records.columns if column.startswith("_")]
    frame = records.drop(columns=hidden).reset_index(drop=True)
    frame.insert(0, "row", np.arange(len(frame), dtype=np.int64))
    leading = ["row", "image_id", "patient_id", "split", "labels"]
    return frame[leading + [column for column in frame.columns if column not in leading]]


def _counts(index: pd.DataFrame) -> dict[str, dict[str, int]]:
    return {
        split: {
            "images": int((index["split"] == split).sum()),
            "patients": int(index.loc[index["split"] == split, "patient_id"].nunique()),
        }
        for split in SPLITS
    }


def _package_version() -> str:
    try:
        return importlib.metadata.version("cxrsynth")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _meta(listing: SourceListing, options: PrepareOptions, index: pd.DataFrame, skipped: list[dict[str, str]],
          odd_geometry: list[dict[str, str]] | None = None) -> dict:
    findings = order_label_names(name for cell in index["labels"] for name in split_labels(cell))
    meta = {
        "source": str(Path(listing.source).resolve()),
        "format": listing.format,
        "size": options.size,
        "seed": options.seed,
        "split_fractions": {
            "holdout": options.holdout_fraction,
            "test": options.test_fraction if listing.test_patients is None else None,
        },
        "test_split": listing.test_split,
        "counts": _counts(index),
        "images": int(len(index)),
        "labels": findings,
        "crop": CROP_METHOD,
        "resize": RESIZE_METHOD,
        "pixels": "8-bit grayscale; sources deeper than 8 bits scaled by their real min..max",
        "skipped_bad": len(skipped),
        "skipped_examples": skipped[:MAX_SKIPPED_EXAMPLES],
        "patient_ids": "real" if listing.patient_ids_real else "per-image",
        "limit": options.limit,
        "odd_geometry": len(odd_geometry or []),
        "odd_geometry_examples": (odd_geometry or [])[:MAX_SKIPPED_EXAMPLES],
        "warnings": prepare_warnings(index, odd_geometry or []),
        "cxrsynth_version": _package_version(),
    }
    if not listing.patient_ids_real:
        meta["patient_ids_note"] = listing.patient_ids_note
    meta.update(listing.extra_meta)
    return meta


def unknown_findings(index: pd.DataFrame) -> dict[str, int]:
    """Finding names outside the 14 ChestX-ray14 findings, with their image counts (most frequent first)."""
    counts: dict[str, int] = {}
    for cell in index["labels"]:
        for name in split_labels(cell):
            if name not in NIH_FINDINGS:
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def prepare_warnings(index: pd.DataFrame, odd_geometry: list[dict[str, str]]) -> list[str]:
    """What meta.json ``warnings`` (and ``cxrsynth data prepare``) says about quietly surprising input.

    * finding names that are not ChestX-ray14 findings (each becomes a class of a conditional run;
      a typo becomes a class of its own), with the nearest known name when one is close;
    * images that are upscaled (short side below the output size) or lose more than half to the crop.
    """
    import difflib

    warnings: list[str] = []
    unknown = unknown_findings(index)
    if unknown:
        described = []
        for name, count in list(unknown.items())[:20]:
            close = difflib.get_close_matches(name, NIH_FINDINGS, n=1, cutoff=0.8)
            described.append(f"{name!r} ({count} image{'s' if count != 1 else ''}"
                             + (f"; did you mean {close[0]!r}?" if close else "") + ")")
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        warnings.append(
            f"{len(unknown)} finding name(s) are not ChestX-ray14 findings and will each be a class of their own: "
            f"{', '.join(described)}{more}. Fix typos in the labels CSV, or train with --findings A,B,... to "
            "choose the classes")
    if odd_geometry:
        warnings.append(
            f"{len(odd_geometry)} image(s) are much smaller than the output size or far from square "
            f"(first: {odd_geometry[0]['image_id']}: {odd_geometry[0]['problem']}); see meta.json odd_geometry_examples")
    return warnings


def refuse_existing_output(out: Path) -> None:
    """Raise :class:`CxrsynthError` when ``out`` exists (prepare never overwrites)."""
    if out.exists():
        raise CxrsynthError(f"output folder {out} already exists", "choose another --out, or remove it first")


def write_prepared(listing: SourceListing, out: str | Path, options: PrepareOptions) -> Path:
    """Write the prepared-data folder for a listed source (the shared core of every ``prepare_*``).

    Args:
        listing: what :mod:`cxrsynth.data.sources` listed.
        out: the folder to create; it must not exist.
        options: size, splits, limit, workers, skip_bad.

    Returns:
        ``out``, complete.

    Raises:
        CxrsynthError: for a bad option, an unusable image (unless ``skip_bad``), a patient in two
            splits, no image left, or an existing ``out``. Nothing is left at ``out`` on failure.
    """
    options.validate()
    out = Path(out)
    refuse_existing_output(out)
    check_output_parent(out)
    records = limit_patients(listing.records.reset_index(drop=True), options.limit)
    records, skipped = _drop_bad_records(records, options.skip_bad)
    if records.empty:
        raise CxrsynthError(f"{listing.source}: no usable image", "check the source folder and its CSV")
    records = split_records(records, listing, options)
    with atomic_directory(out) as tmp:
        writer = _RowWriter(tmp / IMAGES_FILE, len(records), options.size)
        good = np.zeros(len(records), dtype=bool)
        written = 0
        odd_geometry: list[dict[str, str]] = []
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(decoding_pool(options.workers))
            results = stack.enter_context(
                contextlib.closing(
                    decode_all(
                        listing.pixel_tasks(records), options.size, pool,
                        max_in_flight=options.workers * _BATCHES_IN_FLIGHT_PER_WORKER,
                    )  # fmt: skip
                )
            )
            bar = stack.enter_context(
                tqdm(total=len(records), desc=f"prepare {listing.format} → {options.size}²", unit="img", disable=not options.progress)
            )
            for position, (image, problem, fix) in enumerate(results):
                bar.update(1)
                if image is None:
                    if not options.skip_bad:
                        raise CxrsynthError(problem, fix)
                    skipped.append({"image_id": str(records["image_id"].iat[position]), "problem": problem})
                    continue
                if problem:
                    odd_geometry.append({"image_id": str(records["image_id"].iat[position]), "problem": problem})
                writer.write(written, image)
                good[position] = True
                written += 1
        if written == 0:
            raise CxrsynthError(f"{listing.source}: no image could be decoded; first problem: {skipped[0]['problem']}", SKIP_BAD_FIX)
        writer.finish(written)
        index = _index_frame(records[good])
        check_patient_splits(index, str(listing.source))
        index.to_csv(tmp / INDEX_FILE, index=False)
        atomic_write_json(tmp / META_FILE, _meta(listing, options, index, skipped, odd_geometry))
    return out


# ---------------------------------------------------------------- one function per format


def prepare_nih(src: str | Path, out: str | Path, options: PrepareOptions, views: Sequence[str] | None = None) -> Path:
    """Prepare an NIH ChestX-ray14-layout folder (or the phantom). See :func:`cxrsynth.data.sources.nih.list_nih`."""
    return write_prepared(list_nih(src, views=views), out, options)


def prepare_dicom(src: str | Path, out: str | Path, options: PrepareOptions, labels_csv: str | Path | None = None) -> Path:
    """Prepare a DICOM folder tree. See :func:`cxrsynth.data.sources.dicom.list_dicom`."""
    return write_prepared(list_dicom(src, labels_csv=labels_csv, progress=options.progress), out, options)


def prepare_folder(src: str | Path, out: str | Path, options: PrepareOptions, labels_csv: str | Path | None = None) -> Path:
    """Prepare a folder of PNG/JPEG files. See :func:`cxrsynth.data.sources.folder.list_folder`."""
    return write_prepared(list_folder(src, labels_csv=labels_csv), out, options)


def prepare_chestmnist(src: str | Path | None, out: str | Path, options: PrepareOptions) -> Path:
    """Prepare a ChestMNIST ``.npz`` (``src`` None: medmnist's cache). See :func:`cxrsynth.data.sources.chestmnist.list_chestmnist`."""
    return write_prepared(list_chestmnist(src, size=options.size), out, options)


def prepare_dataset(
    src: str | Path | None,
    out: str | Path,
    format: str,
    size: int = 128,
    holdout_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    views: Sequence[str] | None = None,
    limit: int | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    labels_csv: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Prepare any supported source into the prepared-data folder ``out`` (DESIGN.md contract).

    Args:
        src: the source folder (nih, dicom, folder) or ChestMNIST ``.npz``/folder (None: ``~/.medmnist``).
        out: the folder to create; it must not exist.
        format: one of ``nih``, ``dicom``, ``folder``, ``chestmnist``.
        size: side of the prepared square images.
        holdout_fraction: share of the non-test patients put in ``holdout``.
        test_fraction: share of patients put in ``test`` when the source has no test list.
        seed: seed of the patient splits.
        views: nih only: keep these View Positions (e.g. ``["PA"]``).
        limit: keep the first ``limit`` patients only (quick runs).
        workers: decoding processes (default min(4, CPUs)).
        skip_bad: leave out missing/unreadable images, counted in meta.json, instead of failing.
        labels_csv: dicom and folder only: the labels CSV (see those modules).
        progress: show progress bars.

    Returns:
        ``out``.

    Raises:
        CxrsynthError: for an unknown format, an option that does not apply to it, or any
            problem :func:`write_prepared` or the source reader reports.
    """
    if format not in FORMATS:
        raise CxrsynthError(f"unknown format {format!r}", f"use one of {', '.join(FORMATS)}")
    if views and format != "nih":
        raise CxrsynthError("--views applies to --format nih only", "drop --views")
    if labels_csv and format not in ("dicom", "folder"):
        raise CxrsynthError("--labels-csv applies to --format dicom and folder only", "drop --labels-csv")
    if src is None and format != "chestmnist":
        raise CxrsynthError(f"--format {format} needs SRC, the source folder", "pass the folder as the first argument")
    options = PrepareOptions(
        size=size,
        holdout_fraction=holdout_fraction,
        test_fraction=test_fraction,
        seed=seed,
        limit=limit,
        workers=workers if workers is not None else default_workers(),
        skip_bad=skip_bad,
        progress=progress,
    )
    options.validate()
    refuse_existing_output(Path(out))
    if format == "nih":
        return prepare_nih(src, out, options, views=views)  # type: ignore[arg-type]
    if format == "dicom":
        return prepare_dicom(src, out, options, labels_csv=labels_csv)  # type: ignore[arg-type]
    if format == "folder":
        return prepare_folder(src, out, options, labels_csv=labels_csv)  # type: ignore[arg-type]
    return prepare_chestmnist(src, out, options)
