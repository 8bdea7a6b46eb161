"""NIH ChestX-ray14 (and the built-in phantom, which writes the same layout).

Layout read from ``SRC``:

* images in ``SRC/images/`` (flat) or the Kaggle layout ``SRC/images_001/images/ … images_012/images/``;
* ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` (the v2020 file wins when both are
  present); both variants share the columns used here, and a trailing empty column is ignored;
* optional ``test_list.txt`` (and ``train_val_list.txt``): image names, one a line. When
  ``test_list.txt`` is present, its patients form the test split; lists that share a patient are
  refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from cxrsynth.data.sources import PROBLEM_COLUMN, SOURCE_COLUMN, SourceListing, canonical_labels, read_csv_table
from cxrsynth.data.sources.imaging import decode_image_file
from cxrsynth.data.splits import check_disjoint_patient_lists
from cxrsynth.errors import CxrsynthError

NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
"""The 14 ChestX-ray14 findings in the dataset's customary order."""

CSV_NAMES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED_COLUMNS: tuple[str, ...] = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
)  # fmt: skip
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
_SRC_FIX = (
    "point SRC at the ChestX-ray14 folder: Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv) beside "
    "images/ or images_001/images/ … images_012/images/"
)


def order_label_names(names: Iterable[str]) -> list[str]:
    """Order finding names: the NIH findings in their customary order first, then any others alphabetically."""
    unique = set(names)
    known = [name for name in NIH_FINDINGS if name in unique]
    return known + sorted(unique - set(NIH_FINDINGS))


def format_patient_id(value: str) -> str:
    """NIH patient ids as in file names: ``'12'`` → ``'00000012'``; non-numeric ids are kept (stripped)."""
    text = str(value).strip()
    return f"{int(text):08d}" if text.isdigit() else text


def find_nih_csv(src: Path) -> Path:
    """The labels CSV in ``src`` (v2020 preferred).

    Raises:
        CxrsynthError: when neither file name is present.
    """
    for name in CSV_NAMES:
        if (src / name).is_file():
            return src / name
    raise CxrsynthError(f"{src} has no {' or '.join(CSV_NAMES)}", _SRC_FIX)


def index_nih_images(src: Path) -> dict[str, Path]:
    """Map image file name → path over ``src/images/`` and ``src/images_*/images/``.

    Raises:
        CxrsynthError: when no image folder exists, or one name is in two folders.
    """
    folders = [src / "images"] + sorted(path / "images" for path in src.glob("images_*"))
    folders = [folder for folder in folders if folder.is_dir()]
    if not folders:
        raise CxrsynthError(f"{src} has no images/ folder and no images_NNN/images/ folders", _SRC_FIX)
    found: dict[str, Path] = {}
    for folder in folders:
        for entry in sorted(folder.iterdir()):
            if entry.name in found:
                raise CxrsynthError(
                    f"image {entry.name} is in two folders: {found[entry.name]} and {entry}",
                    "remove the duplicate so each listed image has one file",
                )
            found[entry.name] = entry
    return found


def read_list_file(path: Path) -> set[str]:
    """Image names of a ChestX-ray14 list file (one a line; blank lines ignored).

    Raises:
        CxrsynthError: when the file is not UTF-8 text.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CxrsynthError(f"{path} is not UTF-8 text ({exc})",
                            f"it should list image names such as 00000001_000.png, one a line; fix or delete {path.name}") from None
    return {line.strip() for line in text.splitlines() if line.strip()}


def _parse_age(ages: pd.Series) -> pd.Series:
    """Ages as nullable integers: ``58`` and the older ``058Y`` both give 58."""
    return pd.to_numeric(ages.astype("string").str.extract(r"(\d+)", expand=False), errors="coerce").astype("Int64")


def _read_entries(csv_path: Path) -> pd.DataFrame:
    table = read_csv_table(csv_path, REQUIRED_COLUMNS, "NIH labels CSV", _SRC_FIX)
    table = table.dropna(subset=["Image Index"])
    # " 00000001_000.png" and "00000001_000.png" are one image: strip before checking duplicates.
    table["Image Index"] = table["Image Index"].str.strip()
    missing_patient = table["Patient ID"].isna()
    if missing_patient.any():
        raise CxrsynthError(
            f"{csv_path}: {int(missing_patient.sum())} row(s) have no Patient ID "
            f"(first: {table.loc[missing_patient, 'Image Index'].iloc[0]})",
            "fill in Patient ID; splits are by patient",
        )
    duplicated = table["Image Index"].duplicated()
    if duplicated.any():
        raise CxrsynthError(
            f"{csv_path} lists image {table.loc[duplicated, 'Image Index'].iloc[0]} more than once",
            "keep one row per image",
        )
    return pd.DataFrame(
        {
            "image_id": table["Image Index"].str.strip(),
            "patient_id": [format_patient_id(value) for value in table["Patient ID"]],
            "labels": [canonical_labels(cell) for cell in table["Finding Labels"]],
            "follow_up": pd.to_numeric(table["Follow-up #"], errors="coerce").astype("Int64"),
            "age": _parse_age(table["Patient Age"]),
            "sex": table["Patient Gender"].str.strip(),
            "view": table["View Position"].str.strip().str.upper(),
        }
    )


def _test_patients_from_lists(src: Path, entries: pd.DataFrame) -> frozenset[str] | None:
    """Patients of ``test_list.txt`` (None without it), after refusing lists that share patients."""
    if not (src / TEST_LIST).is_file():
        return None
    patient_of = dict(zip(entries["image_id"], entries["patient_id"]))
    lists = {TEST_LIST: read_list_file(src / TEST_LIST)}
    if (src / TRAIN_VAL_LIST).is_file():
        lists[TRAIN_VAL_LIST] = read_list_file(src / TRAIN_VAL_LIST)
    patients = {
        name: {patient_of[image]: image for image in sorted(images) if image in patient_of} for name, images in lists.items()
    }
    check_disjoint_patient_lists(patients, str(src))
    return frozenset(patients[TEST_LIST])


def list_nih(src: str | Path, views: Sequence[str] | None = None) -> SourceListing:
    """List a ChestX-ray14-layout folder without decoding any pixel.

    Args:
        src: the folder (see the module docstring for the layout).
        views: keep only these ``View Position`` values (e.g. ``["PA"]``); None keeps all.

    Returns:
        The listing; a record whose image file is absent carries a problem (prepare reports it).
        Kept metadata: ``follow_up``, ``age``, ``sex``, ``view``.

    Raises:
        CxrsynthError: for a missing or malformed CSV, no image folder, duplicate image files,
            list files that share a patient, or no image left after the view filter.
    """
    root = Path(src)
    if not root.is_dir():
        raise CxrsynthError(f"NIH source folder {root} does not exist", _SRC_FIX)
    csv_path = find_nih_csv(root)
    entries = _read_entries(csv_path)
    test_patients = _test_patients_from_lists(root, entries)
    if views:
        wanted = {view.strip().upper() for view in views if view.strip()}
        entries = entries[entries["view"].isin(wanted)].reset_index(drop=True)
        if entries.empty:
            raise CxrsynthError(
                f"{csv_path}: no image has View Position in {sorted(wanted)}",
                "check --views (ChestX-ray14 has PA and AP)",
            )
    files = index_nih_images(root)
    entries[SOURCE_COLUMN] = [str(files[name]) if name in files else None for name in entries["image_id"]]
    entries[PROBLEM_COLUMN] = [
        None if name in files else f"image {name} is listed in {csv_path.name} but not found under {root}"
        for name in entries["image_id"]
    ]
    return SourceListing(
        format="nih",
        source=root,
        records=entries,
        decode=decode_image_file,
        test_patients=test_patients,
        test_split=f"patients of {TEST_LIST}" if test_patients is not None else "seeded patient split (no test_list.txt)",
        extra_meta={"csv": csv_path.name, "views": sorted({v.strip().upper() for v in views}) if views else None},
    )
