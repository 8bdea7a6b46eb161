"""``cxrsynth data …``: make the phantom dataset, prepare a source, describe prepared data."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(
    help="Make the built-in phantom dataset, prepare a source into the prepared-data folder, describe it.",
    no_args_is_help=True,
)


@data_app.command("phantom")
def phantom_command(
    out: Path = typer.Argument(..., help="Folder to create (NIH ChestX-ray14 layout: images/, Data_Entry_2017.csv, train_val_list.txt, test_list.txt)."),
    patients: int = typer.Option(400, "--patients", min=1, help="Number of synthetic patients."),
    studies_per_patient: float = typer.Option(
        3.0, "--studies-per-patient", min=1.0,
        help="Mean number of studies (follow-ups) per patient; each patient gets between 1 and 2x this mean.",
    ),
    size: int = typer.Option(128, "--size", min=32, max=1024, help="Image side in pixels (32..1024)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the dataset is fully determined by it."),
    prevalence: str = typer.Option(
        "", "--prevalence",
        help="Override finding prevalences, e.g. 'Cardiomegaly=0.2,Nodule=0.05'. "
        "Findings: Cardiomegaly, Effusion, Nodule, Pneumothorax, Consolidation.",
    ),
) -> None:
    """Write the built-in phantom chest X-ray dataset in the NIH ChestX-ray14 on-disk layout.

    Every patient has individual anatomy, recognisable across follow-ups; findings have visible signs.
    """
    from cxrsynth.data.phantom import generate_phantom, parse_prevalence

    summary = generate_phantom(
        out,
        patients=patients,
        studies_per_patient=studies_per_patient,
        size=size,
        seed=seed,
        prevalence=parse_prevalence(prevalence) if prevalence else None,
    )
    typer.echo(str(summary))


class SourceFormat(str, Enum):
    """Source formats ``cxrsynth data prepare`` reads (see :mod:`cxrsynth.data.sources`)."""

    nih = "nih"
    dicom = "dicom"
    folder = "folder"
    chestmnist = "chestmnist"


@data_app.command("prepare")
def prepare_command(
    src: Optional[Path] = typer.Argument(
        None,
        help="The source: a ChestX-ray14-layout folder (nih), a DICOM folder tree (dicom), a folder of PNG/JPEG "
        "files (folder), or a ChestMNIST .npz or folder holding chestmnist*.npz (chestmnist; optional, see --root).",
    ),
    format: SourceFormat = typer.Option(
        ..., "--format", case_sensitive=False,
        help="Source format: nih (ChestX-ray14 layout, also the phantom), dicom, folder (PNG/JPEG) or chestmnist (.npz).",
    ),
    size: int = typer.Option(128, "--size", help="Side of the prepared square images in pixels (centre crop, then Lanczos resize)."),
    out: Path = typer.Option(..., "--out", help="Prepared-data folder to create (images.npy, index.csv, meta.json); must not exist."),
    holdout_fraction: float = typer.Option(
        0.2, "--holdout-fraction", help="Share of the non-test patients put in the holdout split (never trained on; the audit's non-members)."
    ),
    test_fraction: float = typer.Option(
        0.2, "--test-fraction",
        help="Share of patients put in the test split when the source has no test list "
        "(nih without test_list.txt, dicom, folder, chestmnist without a test split).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the patient splits."),
    views: Optional[str] = typer.Option(None, "--views", help="nih only: keep these View Positions, comma-separated (e.g. PA or PA,AP). Default: all."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Keep only the first N patients (in source order), for quick runs."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decoding processes (default: min(4, CPU count))."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Leave out missing or unreadable images (counted in meta.json) instead of stopping at the first."
    ),
    labels_csv: Optional[Path] = typer.Option(
        None, "--labels-csv",
        help="dicom and folder only: finding labels. folder: columns file,patient_id,labels (file relative to SRC). "
        "dicom: columns labels and file (relative to SRC) or SOPInstanceUID. Labels are joined by |.",
    ),
    root: Optional[Path] = typer.Option(
        None, "--root", help="chestmnist only: folder holding chestmnist*.npz, instead of SRC (default: ~/.medmnist). Nothing is downloaded."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Prepare a source into the prepared-data folder every later stage reads.

    Writes OUT/images.npy (uint8 N×S×S, memory-mappable), OUT/index.csv (row, image_id, patient_id,
    split, labels + metadata) and OUT/meta.json. Splits are by patient: test (test_list.txt for nih,
    else a seeded share), then member/holdout from the rest. Memory stays bounded for any dataset size;
    on failure nothing is left at OUT.
    """
    from cxrsynth.data.prepare import prepare_dataset
    from cxrsynth.errors import CxrsynthError

    if root is not None and format is not SourceFormat.chestmnist:
        raise CxrsynthError("--root applies to --format chestmnist only", "pass the source folder as SRC")
    if root is not None and src is not None:
        raise CxrsynthError("give either SRC or --root, not both", "drop one of them")
    result = prepare_dataset(
        src if src is not None else root,
        out,
        format=format.value,
        size=size,
        holdout_fraction=holdout_fraction,
        test_fraction=test_fraction,
        seed=seed,
        views=[view for view in views.split(",") if view.strip()] if views else None,
        limit=limit,
        workers=workers,
        skip_bad=skip_bad,
        labels_csv=labels_csv,
        progress=progress,
    )
    for warning in _meta_warnings(result):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"prepared {result}; describe it with: cxrsynth data info {result}")


def _meta_warnings(prepared: Path) -> list[str]:
    """The ``warnings`` a prepared folder's meta.json records (empty when none)."""
    import json

    from cxrsynth.data.prepared import META_FILE

    meta = json.loads((Path(prepared) / META_FILE).read_text(encoding="utf-8"))
    return [str(warning) for warning in meta.get("warnings") or []]


@data_app.command("info")
def info_command(
    data: Path = typer.Argument(..., help="A prepared-data folder (written by `cxrsynth data prepare`)."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Where to write the sample-grid PNG (default: DATA/sample_grid.png)."),
) -> None:
    """Show images, patients and findings per split of a prepared folder, and write a sample grid PNG."""
    from cxrsynth.data.info import describe_prepared

    describe_prepared(data, grid=grid)
