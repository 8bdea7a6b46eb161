"""``cxrsynth evaluate``: realism, diversity and usefulness of a run's synthetic images (parsing only).

The work is :func:`cxrsynth.evaluate.runner.evaluate_run`; this module maps options onto it and
prints the summary table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrsynth.cli.common import threads_option, torch_threads
from cxrsynth.evaluate.table import NOT_REQUESTED, results_table

ALL_METRICS = "fid,kid,prc,domain,utility,diversity,pixel"


def evaluate_command(
    run: Path = typer.Option(..., "--run", help="Run folder written by `cxrsynth train`; results go to RUN/eval/."),
    samples: Optional[Path] = typer.Option(
        None, "--samples",
        help="Folder of synthetic images with manifest.csv (default RUN/samples). If it holds fewer than "
        "--num-samples images, the missing ones are generated (DPM-Solver++ 25 steps for a new folder).",
    ),
    reference: str = typer.Option(
        "test", "--reference", help="Real split the synthetic images are compared with: test (default) or member."
    ),
    num_samples: Optional[int] = typer.Option(
        None, "--num-samples", min=2,
        help="Synthetic images to evaluate (default: all present; when none exist, min(1000, reference size) "
        "are generated).",
    ),
    inception_weights: Optional[Path] = typer.Option(
        None, "--inception-weights",
        help="Local torch-fidelity Inception file (weights-inception-2015-12-05-6726825d.pth) for offline machines. "
        "Without weights FID/KID/precision/recall are reported as null with the reason; the rest still runs.",
    ),
    download_inception: bool = typer.Option(
        False, "--download-inception",
        help="Allow downloading the Inception weights into torch-fidelity's cache when they are not found locally.",
    ),
    metrics: str = typer.Option(
        ALL_METRICS, "--metrics",
        help="Comma-separated metric groups: fid, kid, prc (Inception precision/recall), domain (Fréchet distance "
        "and k-NN precision/recall in a CXR classifier's features), utility (TSTR vs TRTR AUROC), diversity "
        "(MS-SSIM), pixel (histogram and power spectrum).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of every random choice (classifier, subsets, pairs, bootstrap)."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Prepared-data folder to compare with (default: the one in RUN/config.yaml)."
    ),
    classifier_steps: int = typer.Option(
        400, "--classifier-steps", min=1,
        help="Training steps (batch 64) of the domain classifier and of the TSTR classifier (same budget).",
    ),
    threads: Optional[int] = threads_option(),
) -> None:
    """Measure how realistic, diverse and useful the synthetic images are; write RUN/eval/fidelity.json.

    Prints a table (metric, value, real baseline, N). Each real baseline compares the other real split
    with the reference at the same N: what "as good as real" looks like.
    """
    from rich.console import Console

    from cxrsynth.evaluate.runner import EvaluateOptions, evaluate_run, parse_metrics

    options = EvaluateOptions(
        samples=samples,
        reference=reference,
        num_samples=num_samples,
        inception_weights=inception_weights,
        download_inception=download_inception,
        metrics=parse_metrics(metrics),
        seed=seed,
        data=data,
        classifier_steps=classifier_steps,
        progress=True,
    )
    errors = Console(stderr=True)
    with torch_threads(threads):
        report = evaluate_run(run, options, log=lambda line: errors.print(f"[dim]evaluate:[/] {line}", highlight=False))
    console = Console()
    console.print(results_table(report))
    for warning in report["warnings"]:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for key in ("fid_skipped", "utility_skipped"):
        if report.get(key) and report[key] != NOT_REQUESTED:
            errors.print(f"[yellow]{key}:[/] {report[key]}", highlight=False)
    console.print(f"wrote {Path(run) / 'eval' / 'fidelity.json'}")


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to the root ``cxrsynth`` app."""
    app.command("evaluate")(evaluate_command)
