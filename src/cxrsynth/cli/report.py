"""``cxrsynth report``: one self-contained HTML report and a model card for a run (parsing only).

The work is :func:`cxrsynth.report.runner.write_report`; heavy libraries load only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

REPORT_HELP = (
    "Write RUN/report.html and RUN/MODEL_CARD.md: are these synthetic X-rays realistic, useful, and safe to share?\n\n"
    "report.html is one self-contained file (images embedded, no network, printable): run summary (data counts by "
    "split and patients, preset, steps, time), training curve, synthetic images beside real ones, fidelity and "
    "utility tables with real-vs-real baselines, the privacy section (differential-privacy guarantee when trained "
    "with DP, audit table, log-log ROC, memorization pairs, re-identification), and a verdict in plain words: what "
    "the numbers allow you to claim and what they do not. Stages that have not run are shown as not run, with the "
    "command that runs them. MODEL_CARD.md carries the same numbers without images."
)


def report_command(
    run: Path = typer.Option(..., "--run", help="Run folder written by `cxrsynth train` (any stage reached)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared-data folder (default: the one in RUN/config.yaml)."),
    samples: Optional[Path] = typer.Option(None, "--samples", help="Synthetic images shown (default RUN/samples)."),
    real_images: bool = typer.Option(
        True, "--real-images/--no-real-images",
        help="Embed real images (a grid of never-trained-on images and the audit's closest synthetic | training pairs). "
        "Use --no-real-images for a report that leaves the data custodian's hands.",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the real images shown."),
) -> None:
    """Write RUN/report.html and RUN/MODEL_CARD.md (see REPORT_HELP)."""
    from rich.console import Console

    from cxrsynth.report.runner import ReportOptions, write_report

    errors = Console(stderr=True)
    result = write_report(
        run, ReportOptions(data=data, samples=samples, include_real_images=real_images, seed=seed),
        log=lambda line: errors.print(f"[dim]report:[/] {line}", highlight=False),
    )
    console = Console()
    console.print(f"[bold]verdict:[/] {result.verdict.headline}", highlight=False)
    for label, value in result.verdict.key_numbers:
        console.print(f"  {label}: {value}", highlight=False)
    # soft_wrap: a path cut across lines cannot be copied (or found by a script reading the output).
    console.print(f"report: {result.html}\nmodel card: {result.model_card}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to the root ``cxrsynth`` app."""
    app.command("report", help=REPORT_HELP)(report_command)
