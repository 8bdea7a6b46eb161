"""``cxrsynth release``: export privacy-screened synthetic images for sharing (parsing only).

The work is :func:`cxrsynth.release.release_run`; heavy libraries load only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrsynth.cli.common import threads_option, torch_threads

RELEASE_HELP = (
    "Export synthetic images for sharing, screened for privacy (privacy-enhancing sampling, Packhäuser et al. 2023).\n\n"
    "Candidates are generated as by `cxrsynth sample`, from a fresh secret seed that is never written anywhere (so "
    "nobody can regenerate the dropped ones), and each is dropped when it is "
    "a near-copy of a training image (Carlini et al.'s copy ratio below --copy-ratio, default 1/6) or when the "
    "audit's patient-verification network finds it more similar to some training patient than --reid-quantile "
    "(default 99%) of real images of never-seen patients are (threshold calibrated on holdout/test patients kept "
    "out of the network's training). New candidates are generated until --num-images have passed.\n\n"
    "Runs trained with differential privacy (RUN/privacy.json) are released UNSCREENED by default: the screen looks at "
    "the member images, which (ε, δ) does not cover, so only an unscreened release is covered by the guarantee. "
    "--screen screens a DP run anyway, and release.json then states that the release is not covered by (ε, δ). "
    "Runs without DP are always screened.\n\n"
    "The --out folder gets the images (PNG, or DICOM marked SYNTHETIC) numbered synthetic_000000… without gaps, "
    "manifest.csv (file, sampler, steps, label, guidance; no seed, no candidate index, no patient or source id) and "
    "release.json (what the release's privacy rests on, counts dropped by reason, thresholds, the run's audit "
    "verdict; never which patients matched, never the seed). The run must have been audited (`cxrsynth audit`). "
    "Rejected candidates are deleted; DIR appears only when complete."
)


def release_command(
    run: Path = typer.Option(..., "--run", help="Run folder with a trained model (pipeline/) and an audit (audit/audit.json)."),
    out: Path = typer.Option(..., "--out", help="Output folder (created; must not exist unless --overwrite)."),
    num_images: int = typer.Option(100, "--num-images", min=1, help="Images to release; every one passes the screen."),
    image_format: str = typer.Option("png", "--format", help="png, or dicom (Secondary Capture marked SYNTHETIC, no patient data)."),
    sampler: str = typer.Option(
        "ddpm", "--sampler", help="ddpm (stochastic, the default: no speckle from a briefly trained model), ddim or "
        "dpmsolver (as `cxrsynth sample`)."),
    steps: Optional[int] = typer.Option(25, "--steps", min=1, help="Denoising steps."),
    seed: int = typer.Option(
        0, "--seed", min=0,
        help="Seed of the screen (calibration patients, verification network). The candidates' seed is always a fresh "
        "secret one, never written anywhere.",
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per forward pass while generating."),
    label: Optional[str] = typer.Option(None, "--label", help="Conditional runs: one label set for every image (as `cxrsynth sample`)."),
    label_mix: Optional[str] = typer.Option(None, "--label-mix", help="Conditional runs: 'from-data' (the default when --label is not given)."),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance-scale", help="Classifier-free guidance weight of conditional runs (default 2.0)."),
    copy_ratio: float = typer.Option(
        1 / 6, "--copy-ratio",
        help="Drop a candidate whose distance to its nearest training image, divided by the mean distance to its 50 "
        "nearest, is below this (Carlini et al.; default 1/6, the audit's threshold).",
    ),
    reid_quantile: float = typer.Option(
        0.99, "--reid-quantile",
        help="Drop a candidate whose similarity to its most similar training patient exceeds this quantile of the same "
        "similarity for real images of never-seen patients (0.99: a generator that leaks nothing loses about 1%).",
    ),
    reid_steps: int = typer.Option(300, "--reid-steps", min=1, help="Training steps of the patient-verification network."),
    max_candidates: Optional[int] = typer.Option(
        None, "--max-candidates", min=1,
        help="Give up (writing nothing) after this many candidates (default 4 x --num-images).",
    ),
    screen: Optional[bool] = typer.Option(
        None, "--screen/--no-screen",
        help="Screen the candidates. Default: screened, except for runs trained with DP, which are released unscreened "
        "so that (ε, δ) covers the release; --screen on a DP run screens it and states in release.json that it is no "
        "longer covered by (ε, δ). --no-screen is refused for runs without DP.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared-data folder (default: the one in RUN/config.yaml)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier release (a folder holding release.json) once the new one is complete; never any other folder."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Export privacy-screened synthetic images (see RELEASE_HELP)."""
    from rich.console import Console

    from cxrsynth.release import ReleaseOptions, release_run

    options = ReleaseOptions(
        num_images=num_images, image_format=image_format, sampler=sampler, steps=steps, seed=seed,
        batch_size=batch_size, label=label, label_mix=label_mix, guidance_scale=guidance_scale,
        copy_ratio=copy_ratio, reid_quantile=reid_quantile, reid_steps=reid_steps, max_candidates=max_candidates,
        screen=screen, device=device, data=data, overwrite=overwrite, progress=True,
    )
    errors = Console(stderr=True)
    with torch_threads(threads):
        report = release_run(run, out, options, log=lambda line: errors.print(f"[dim]release:[/] {line}", highlight=False))
    dropped = report["dropped"]
    if dropped is None:
        how = "not screened"
    else:
        how = (f"dropped {dropped['total']} of {report['candidates']['generated']} candidates ({dropped['near_copy']} "
               f"near-copies, {dropped['linked_to_member']} linked to training patients)")
    Console().print(
        f"released {report['num_images']} images to {out}; {how}; {report['privacy']['statement']} "
        f"Details in {out / 'release.json'}",
        highlight=False, soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add the ``release`` command to the root ``cxrsynth`` app."""
    app.command("release", help=RELEASE_HELP)(release_command)
