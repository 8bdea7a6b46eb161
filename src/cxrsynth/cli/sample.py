"""``cxrsynth sample``: generate synthetic radiographs from a trained run (parsing only).

The work is :func:`cxrsynth.sample.generate_samples`; this module maps options onto it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrsynth.cli.common import threads_option, torch_threads


def sample_command(
    run: Path = typer.Option(..., "--run", help="Run folder written by `cxrsynth train` (its pipeline/ is loaded)."),
    num_images: int = typer.Option(..., "--num-images", min=1, help="Number of images; ids 0..N-1."),
    sampler: str = typer.Option(
        "ddpm", "--sampler",
        help="ddpm (ancestral, the training chain; slow), ddim (deterministic, eta 0) or "
        "dpmsolver (DPM-Solver++ 2nd order; best quality per step).",
    ),
    steps: Optional[int] = typer.Option(
        None, "--steps", min=1, help="Denoising steps. Default: 1000 for ddpm, 50 for ddim, 25 for dpmsolver."
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per forward pass (per process)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed; image i is fully determined by (seed, i)."),
    out: Optional[Path] = typer.Option(
        None, "--out",
        help="Output folder (default RUN/samples). Re-running into it skips images already written; "
        "other settings into the same folder are refused.",
    ),
    image_format: str = typer.Option(
        "png", "--format", help="png, or dicom (Secondary Capture marked SYNTHETIC, no patient data)."
    ),
    label: Optional[str] = typer.Option(
        None, "--label",
        help="Conditional runs: one label set for every image, e.g. 'Cardiomegaly|Effusion' or 'No Finding'. "
        "Must be a set seen in training.",
    ),
    label_mix: Optional[str] = typer.Option(
        None, "--label-mix",
        help="Conditional runs: 'from-data' draws each image's label set with the training frequencies (the "
        "default when --label is not given; refused for DP runs, whose models store no label counts); "
        "'uniform' draws every label set of the model alike (the default for DP runs).",
    ),
    guidance_scale: Optional[float] = typer.Option(
        None, "--guidance-scale",
        help="Classifier-free guidance weight for conditional runs (default 2.0; 1 = plain conditional). "
        "Not allowed for unconditional runs.",
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto (this process's GPU if any, else CPU), cpu, cuda or cuda:N."
    ),
    threads: Optional[int] = threads_option(),
) -> None:
    """Generate synthetic radiographs (PNG or DICOM) and manifest.csv from a trained run.

    Resumable and shardable: `accelerate launch --num_processes K -m cxrsynth sample ...` splits the ids
    across processes; each id is written exactly once.
    """
    from cxrsynth.sample import generate_samples

    with torch_threads(threads):
        report = generate_samples(
            run,
            num_images,
            sampler=sampler,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            out=out,
            image_format=image_format,
            label=label,
            label_mix=label_mix,
            guidance_scale=guidance_scale,
            device=device,
        )
    typer.echo(
        f"process {report.process_index} of {report.num_processes}: wrote {len(report.written)} new images, "
        f"{len(report.skipped)} already present",
        err=True,
    )
    if report.manifest is not None:
        typer.echo(f"{num_images} images in {report.out}; manifest: {report.manifest}")


def register(app: typer.Typer) -> None:
    """Add the ``sample`` command to the root ``cxrsynth`` app."""
    app.command("sample")(sample_command)
