"""A folder tree of DICOM radiographs, read with pydicom.

Pixels: the stored values go through the modality LUT / rescale (``apply_modality_lut``), then the
VOI LUT if the file has one, else its window (``WindowCenter``/``WindowWidth``), and the VOI output
range is mapped onto 0..255; a file with neither is scaled by its real min..max. ``MONOCHROME1``
images are inverted so bone is bright, as in ``MONOCHROME2``.

Patients come from ``PatientID``. Finding labels come from an optional CSV (``--labels-csv``)
with a ``labels`` column (finding names joined by ``|``; empty or ``No Finding`` when none) and one
key column: ``file`` (path relative to SRC) or ``SOPInstanceUID``. With a CSV, the CSV lists the
images and other DICOM files are ignored (counted in meta.json); without one, every DICOM image
under SRC is used and labelled ``No Finding``.

Compressed transfer syntaxes need pydicom pixel-data plugins; when none is installed for a
file's syntax, prepare stops before decoding and names the file and the packages to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.pixels.processing import apply_voi, apply_windowing
from tqdm import tqdm

from cxrsynth.data.sources import PROBLEM_COLUMN, SOURCE_COLUMN, SourceListing, canonical_labels, read_csv_table
from cxrsynth.data.sources.imaging import MAX_DECODE_PIXELS, SKIP_BAD_FIX, scale_to_display_range
from cxrsynth.errors import CxrsynthError

KEY_COLUMNS: tuple[str, ...] = ("file", "SOPInstanceUID")
_HEADER_TAGS = ["PatientID", "SOPInstanceUID", "ViewPosition", "PatientSex", "PatientAge", "Rows", "NumberOfFrames"]
_CSV_FIX = "give a CSV with columns file,labels or SOPInstanceUID,labels (labels joined by |)"


def _is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble, or a ``.dcm``/``.dicom`` name (some files lack the preamble)."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def find_dicom_files(root: Path) -> list[Path]:
    """DICOM files under ``root`` (recursive, hidden entries skipped), sorted by relative path."""
    found = [
        path
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts) and _is_dicom_file(path)
    ]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def _age_in_years(value: Any) -> int | None:
    """DICOM ages (``045Y``, ``006M``, ``012W``, ``003D``) as whole years; None when absent or malformed."""
    text = str(value or "").strip().upper()
    if len(text) < 2 or not text[:-1].isdigit():
        return None
    return int(text[:-1]) if text[-1] == "Y" else 0 if text[-1] in "MWD" else None


def _decoder_problem(transfer_syntax: pydicom.uid.UID) -> str | None:
    """Why pydicom cannot decode this transfer syntax here (None when it can)."""
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        return f"pydicom has no decoder at all for transfer syntax {transfer_syntax.name} ({transfer_syntax})"
    if decoder.is_available:
        return None
    return (
        f"no installed pydicom plugin decodes transfer syntax {transfer_syntax.name} ({transfer_syntax}); "
        f"install one of: {'; '.join(decoder.missing_dependencies)}"
    )


def _read_header(path: Path, root: Path) -> dict[str, Any]:
    """The record fields of one DICOM file, from its header only (no pixel data read)."""
    relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    record: dict[str, Any] = {"image_id": relative, "file": relative, SOURCE_COLUMN: str(path), PROBLEM_COLUMN: None}
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_HEADER_TAGS)
        transfer_syntax = header.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(header, "file_meta", {}) else None
    except Exception as exc:  # pydicom raises many types for broken files; all mean "unreadable"
        record[PROBLEM_COLUMN] = f"DICOM file {path} cannot be read ({type(exc).__name__}: {exc})"
        return record
    patient = str(header.get("PatientID", "") or "").strip()
    record.update(
        patient_id=patient or None,
        sop_instance_uid=str(header.get("SOPInstanceUID", "") or "") or None,
        view=str(header.get("ViewPosition", "") or "").strip().upper() or None,
        sex=str(header.get("PatientSex", "") or "").strip() or None,
        age=_age_in_years(header.get("PatientAge")),
        _transfer_syntax=transfer_syntax,
    )
    if "Rows" not in header:
        record[PROBLEM_COLUMN] = f"DICOM file {path} has no image (no Rows element)"
    elif int(header.get("NumberOfFrames", 1) or 1) > 1:
        record[PROBLEM_COLUMN] = f"DICOM file {path} has {header.NumberOfFrames} frames; cxrsynth reads single-frame radiographs"
    return record


def _refuse_undecodable_syntaxes(records: pd.DataFrame) -> None:
    """Stop before decoding when a transfer syntax present has no installed decoder."""
    readable = records[records[PROBLEM_COLUMN].isna() & records["_transfer_syntax"].notna()]
    for transfer_syntax, group in readable.groupby("_transfer_syntax"):
        problem = _decoder_problem(pydicom.uid.UID(str(transfer_syntax)))
        if problem:
            raise CxrsynthError(
                f"{len(group)} DICOM file(s) cannot be decoded, e.g. {group[SOURCE_COLUMN].iloc[0]}: {problem}",
                "pip install the package(s) named above into this environment, or convert the files to "
                "uncompressed DICOM (e.g. `gdcmconv --raw`)",
            )


def _apply_voi_to_display(values: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """VOI LUT (preferred) or window → 0..255 by the VOI output range; min..max when there is neither."""
    lut_sequence = dataset.get("VOILUTSequence")
    if lut_sequence and "LUTDescriptor" in lut_sequence[0] and "LUTData" in lut_sequence[0]:
        entries, first_mapped, _ = (int(v) for v in lut_sequence[0].LUTDescriptor)
        full_lut = apply_voi(np.arange(first_mapped, first_mapped + (entries or 2**16), dtype=np.int64), dataset)
        low, high = float(full_lut.min()), float(full_lut.max())
        shown = apply_voi(np.rint(values).astype(np.int64), dataset).astype(np.float64)
    elif dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None:
        with np.errstate(over="ignore"):  # the range probe saturates a sigmoid window on purpose
            low, high = (float(v) for v in apply_windowing(np.array([-1e30, 1e30]), dataset))
        shown = apply_windowing(np.asarray(values, dtype=np.float64), dataset)
    else:
        return scale_to_display_range(values)
    if high <= low:
        return np.zeros(shown.shape, dtype=np.float32)
    return np.clip((shown - low) * (255.0 / (high - low)), 0.0, 255.0).astype(np.float32)


def decode_dicom(path: str) -> np.ndarray:
    """Decode one single-frame DICOM radiograph to display pixels, bone bright.

    Args:
        path: the DICOM file.

    Returns:
        ``float32`` 2-D array in 0..255 (see the module docstring for the steps).

    Raises:
        CxrsynthError: when the file cannot be read, its pixel data cannot be decoded with the
            installed handlers (naming the packages to install), or it is not a single-frame image.
    """
    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many types for broken files; all mean "unreadable"
        raise CxrsynthError(f"DICOM file {path} cannot be read ({type(exc).__name__}: {exc})", SKIP_BAD_FIX) from None
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    problem = _decoder_problem(transfer_syntax) if transfer_syntax is not None else None
    if problem:
        raise CxrsynthError(f"DICOM file {path} cannot be decoded: {problem}", "pip install the package(s) named above")
    # Checked from the header, before decoding: a multi-frame or huge file must not be decoded to be refused.
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        raise CxrsynthError(f"DICOM file {path} has several frames; cxrsynth reads single-frame radiographs", SKIP_BAD_FIX)
    pixels_in_header = int(dataset.get("Rows", 0) or 0) * int(dataset.get("Columns", 0) or 0)
    if pixels_in_header > MAX_DECODE_PIXELS:
        raise CxrsynthError(
            f"DICOM file {path} is {dataset.get('Columns')}×{dataset.get('Rows')} pixels, above the decoding budget "
            f"of {MAX_DECODE_PIXELS:,} pixels", SKIP_BAD_FIX)
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # decoders raise many types on broken pixel data
        raise CxrsynthError(
            f"DICOM file {path}: pixel data cannot be decoded ({type(exc).__name__}: {exc})", SKIP_BAD_FIX
        ) from None
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        # colour files (secondary captures) are display-ready: take their luminance
        luminance = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return luminance.astype(np.float32) if int(dataset.get("BitsStored", 8)) <= 8 else scale_to_display_range(luminance)
    values = apply_modality_lut(pixels, dataset)
    shown = _apply_voi_to_display(values, dataset)
    if str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        shown = 255.0 - shown
    return shown.astype(np.float32)


def _labels_for(records: pd.DataFrame, labels_csv: Path, root: Path) -> tuple[pd.DataFrame, int]:
    """Keep the records the CSV lists, with its labels; CSV rows with no file become problem records."""
    table = read_csv_table(labels_csv, ("labels",), "DICOM labels CSV", _CSV_FIX)
    key = next((column for column in KEY_COLUMNS if column in table.columns), None)
    if key is None:
        raise CxrsynthError(f"DICOM labels CSV {labels_csv} has neither a file nor a SOPInstanceUID column", _CSV_FIX)
    table = table.dropna(subset=[key])
    table[key] = table[key].str.strip()
    if table[key].duplicated().any():
        raise CxrsynthError(f"{labels_csv} lists {key} {table.loc[table[key].duplicated(), key].iloc[0]} twice", "keep one row per image")
    record_key = "file" if key == "file" else "sop_instance_uid"
    by_key = {value: i for i, value in enumerate(records[record_key].tolist()) if isinstance(value, str)}
    kept, labels, missing = [], [], []
    for value, cell in zip(table[key], table["labels"]):
        if value in by_key:
            kept.append(by_key[value])
            labels.append(canonical_labels(cell))
        else:
            missing.append(value)
    listed = records.iloc[kept].copy()
    listed["labels"] = labels
    if missing:
        absent = pd.DataFrame(
            {
                "image_id": missing,
                "file": missing if key == "file" else None,
                PROBLEM_COLUMN: [f"{key} {value} is listed in {labels_csv} but not found under {root}" for value in missing],
            }
        )
        listed = pd.concat([listed, absent], ignore_index=True)
    return listed.reset_index(drop=True), len(records) - len(kept)


def list_dicom(src: str | Path, labels_csv: str | Path | None = None, progress: bool = True) -> SourceListing:
    """List a DICOM folder tree, reading headers only.

    Args:
        src: the folder, searched recursively for DICOM files.
        labels_csv: optional labels CSV (see the module docstring); it then lists the images.
        progress: show a progress bar while reading headers.

    Returns:
        The listing; kept metadata ``file``, ``sop_instance_uid``, ``view``, ``sex``, ``age``.

    Raises:
        CxrsynthError: when the folder is missing or has no DICOM file, a used file has no PatientID,
            the CSV is malformed, or a transfer syntax present has no installed decoder.
    """
    root = Path(src)
    if not root.is_dir():
        raise CxrsynthError(f"DICOM folder {root} does not exist", "point SRC at a folder of DICOM files")
    files = find_dicom_files(root)
    if not files:
        raise CxrsynthError(f"{root} contains no DICOM files", "point SRC at a folder of DICOM (.dcm) files")
    headers = [_read_header(path, root) for path in tqdm(files, desc="read DICOM headers", unit="file", disable=not progress)]
    columns = ["image_id", "patient_id", "labels", "file", "sop_instance_uid", "view", "sex", "age", SOURCE_COLUMN, PROBLEM_COLUMN, "_transfer_syntax"]
    records = pd.DataFrame.from_records(headers, columns=columns)
    records["labels"] = canonical_labels(None)
    ignored = 0
    if labels_csv:
        records, ignored = _labels_for(records, Path(labels_csv), root)
    no_patient = records[PROBLEM_COLUMN].isna() & records["patient_id"].isna()
    if no_patient.any():
        raise CxrsynthError(
            f"{int(no_patient.sum())} DICOM file(s) have no PatientID, e.g. {records.loc[no_patient, SOURCE_COLUMN].iloc[0]}; "
            "splits are by patient and cannot be made without it",
            "fill in PatientID (a pseudonym is fine), or use --format folder with a CSV giving patient_id",
        )
    _refuse_undecodable_syntaxes(records)
    records = records.drop(columns=["_transfer_syntax"])
    records["age"] = records["age"].astype("Int64")
    return SourceListing(
        format="dicom",
        source=root,
        records=records,
        decode=decode_dicom,
        extra_meta={
            "labels_csv": str(labels_csv) if labels_csv else None,
            "label_source": "labels CSV" if labels_csv else "none: every image is labelled No Finding",
            "unlisted_files_ignored": ignored,
            "pixels": "8-bit grayscale: modality LUT, then VOI LUT or window mapped by its output range (else min..max), MONOCHROME1 inverted",
        },
    )
