"""``cxrsynth audit``: membership inference, memorization and re-identification of a run (parsing only).

The work is :func:`cxrsynth.audit.runner.audit_run`; this module maps options onto it and prints
the table and the verdict. Heavy libraries load only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cxrsynth.cli.common import table_console, threads_option, torch_threads

ATTACKS_HELP = (
    "Comma-separated attacks (default: every one that applies). White-box (need the model): loss (ε-prediction "
    "MSE at --timestep over --noise-draws draws), sima (score norm on the clean image), gsa (gradient norms of the loss, "
    "an attack classifier fitted on calibration), lira and rmia (need --reference-models), recon (one-step x̂₀ reconstruction error, the seed's attack), "
    "secmi (t-error after DDIM inversion, Duan et al. 2023), pia and pian (proximal initialisation, Kong et al. "
    "2024). Black-box (need synthetic images): nn (pixel distance to the nearest synthetic image), nn_domain "
    "(domain-feature distance). No access: blind (image statistics only; a validity check that should stay near "
    "AUC 0.5)."
)


audit_app = typer.Typer(no_args_is_help=False)


@audit_app.callback(invoke_without_command=True)
def audit_command(
    context: typer.Context,
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder written by `cxrsynth train`; results go to RUN/audit/. "
                                       "Required unless a subcommand (stats) is given."),
    attacks: Optional[str] = typer.Option(None, "--attacks", help=ATTACKS_HELP),
    num_members: Optional[int] = typer.Option(
        None, "--num-members", min=4,
        help="Member patients audited, one image each, and as many holdout (never trained on) patients "
        "(default min(1000, available)). Half of each group calibrates thresholds, the other half is scored.",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the audited set, the halves, noise draws and fitted models."),
    samples: Optional[Path] = typer.Option(
        None, "--samples",
        help="Synthetic images for the black-box attacks, memorization and re-identification (default RUN/samples). "
        "Without any, those parts are skipped with the reason.",
    ),
    timestep: Optional[int] = typer.Option(
        None, "--timestep", min=1,
        help="Diffusion timestep t of the loss, recon, pia, pian and sima attacks. Default: loss, pia, pian and sima "
        "choose t on the calibration half (a sweep over 10..300, recorded in audit.json attacks.NAME.selected); recon uses 200."),
    secmi_timestep: int = typer.Option(100, "--secmi-timestep", min=2, help="SecMI's t_sec (Duan et al. use 100)."),
    secmi_interval: int = typer.Option(10, "--secmi-interval", min=1,
                                       help="SecMI's DDIM step k (Duan et al. use 10); t_sec must be a multiple of k."),
    unit: Optional[str] = typer.Option(
        None, "--unit",
        help="image: one image per audited patient. patient: also score every image of each audited patient (up to "
        "--max-images-per-patient) and judge the patient on them (mean, min or max, chosen on calibration); image- and "
        "patient-level results are reported side by side. Default: patient when the data has real patient ids."),
    max_images_per_patient: int = typer.Option(8, "--max-images-per-patient", min=1,
                                               help="Images scored per audited patient with --unit patient."),
    reference_models: int = typer.Option(
        0, "--reference-models", min=0,
        help="Train K reference models (the run's preset and recipe) on random patient halves of the member+holdout "
        "pool for the lira and rmia attacks; cached in RUN/audit/reference/ and reused by later audits. 0: skip them."),
    reference_steps: Optional[int] = typer.Option(None, "--reference-steps", min=1,
                                                  help="Training steps of each reference model (default: the run's own)."),
    noise_draws: int = typer.Option(8, "--noise-draws", min=1, help="Noise draws averaged by the loss and recon attacks (NFE per image)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per UNet forward pass."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared-data folder (default: the one in RUN/config.yaml)."),
    classifier_steps: int = typer.Option(
        400, "--classifier-steps", min=1,
        help="Training steps of the domain classifier (trained on the test split) whose features nn_domain and the "
        "feature-space memorization check use; cached in RUN/eval/.",
    ),
    reid_steps: int = typer.Option(
        300, "--reid-steps", min=1,
        help="Training steps of the patient-verification network (holdout+test patients only) used for re-identification.",
    ),
    threads: Optional[int] = threads_option(),
) -> None:
    """Audit what a trained run leaks about its training patients; write RUN/audit/ (see AUDIT_HELP)."""
    if context.invoked_subcommand is not None:
        return
    if run is None:
        from cxrsynth.errors import CxrsynthError

        raise CxrsynthError("cxrsynth audit needs --run RUN (the run folder to audit)",
                            "give --run RUN, or use a subcommand: `cxrsynth audit stats SCORES.csv --out OUT.json`")
    from rich.console import Console

    from cxrsynth.audit.runner import AuditOptions, audit_run, parse_attacks, results_table

    options = AuditOptions(
        attacks=parse_attacks(attacks),
        num_members=num_members,
        seed=seed,
        samples=samples,
        timestep=timestep,
        noise_draws=noise_draws,
        device=device,
        batch_size=batch_size,
        data=data,
        classifier_steps=classifier_steps,
        reid_steps=reid_steps,
        progress=True,
        secmi_timestep=secmi_timestep,
        secmi_interval=secmi_interval,
        unit=unit,
        max_images_per_patient=max_images_per_patient,
        reference_models=reference_models,
        reference_steps=reference_steps,
    )
    errors = Console(stderr=True)
    with torch_threads(threads):
        report = audit_run(run, options, log=lambda line: errors.print(f"[dim]audit:[/] {line}", highlight=False))
    console = table_console()
    console.print(results_table(report))
    notes: dict[str, list[str]] = {}
    for name, result in report["attacks"].items():
        for note in result["notes"]:
            notes.setdefault(note, []).append(name)
    for note, names in notes.items():  # sample-size notes apply to every attack: say them once
        prefix = "" if len(names) == len(report["attacks"]) else f"{', '.join(names)}: "
        errors.print(f"[dim]note:[/] {prefix}{note}", highlight=False)
    for warning in report["warnings"]:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"[bold]verdict:[/] {report['verdict']}", highlight=False)
    console.print(f"wrote {Path(run) / 'audit'}")


STATS_HELP = (
    "The audit's statistics on any attack's membership scores, including scores from other tools.\n\n"
    "SCORES.csv: a 'member' column (1/0); optional 'half' (calibration/evaluation; absent: a seeded random half of "
    "each group), optional 'patient_id' (rows of one patient become one unit, their scores averaged); 'image_id' and "
    "'split' are ignored (so the scores.csv that `cxrsynth audit` writes can be re-analysed); every other column is one "
    "attack's scores. For each column: AUC with CI, Mann-Whitney and low-FPR tail tests, TPR at 1%/0.1%/0% FPR at "
    "calibration thresholds, the empirical epsilon lower bound; then one family-wise leak flag (Holm-Bonferroni, 5%) "
    "and the audit's power. Writes OUT.json (the keys of audit.json's attacks, summary and power)."
)


@audit_app.command("stats", help=STATS_HELP)
def stats_command(
    scores: Path = typer.Argument(..., help="CSV of membership scores (see above)."),
    out: Path = typer.Option(..., "--out", help="JSON file to write (written atomically)."),
    direction: Optional[list[str]] = typer.Option(
        None, "--direction",
        help="NAME=lower|higher: which scores of column NAME mean 'member' (repeatable). Default: chosen on the "
        "calibration half, as `cxrsynth audit` does.",
    ),
    delta: float = typer.Option(1e-5, "--delta", help="δ of the ε lower bounds (use the DP run's δ when testing a guarantee)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the random halves (when there is no 'half' column) and bootstraps."),
    independent_rows: bool = typer.Option(
        False, "--independent-rows",
        help="Accept a CSV without patient_id: every row is a different person. Without patient ids, several "
        "images of one patient make the p-values invalid."),
) -> None:
    """Compute the audit statistics of SCORES.csv and write OUT.json."""
    from cxrsynth.audit.runner import results_table
    from cxrsynth.audit.scores import audit_stats

    report = audit_stats(scores, out, direction, delta, seed, independent_rows)
    console = table_console()
    console.print(results_table(report))
    console.print(f"[bold]verdict:[/] {report['verdict']}", highlight=False)
    console.print(f"wrote {out}")


AUDIT_HELP = (
    "Audit what a trained run leaks about its training patients; write RUN/audit/.\n\n"
    "Membership inference attacks score one image per patient of the member and holdout splits; thresholds are "
    "chosen on a calibration half and every number is measured on the other half: AUC with a bootstrap CI, TPR at "
    "1% and 0.1% FPR, and an empirical ε lower bound (δ from RUN/privacy.json, else 1e-5). Synthetic images are "
    "also checked for near-copies of training images and for links to training patients.\n\n"
    "Writes audit.json, scores.csv (sensitive: it names training images), roc.png and memorization.png, and "
    "prints a table and a verdict. `cxrsynth audit stats SCORES.csv --out OUT.json` runs the same statistics on "
    "any attack's scores."
)


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command (and its ``stats`` subcommand) to the root ``cxrsynth`` app."""
    app.add_typer(audit_app, name="audit", help=AUDIT_HELP)


CANARIES_HELP = (
    "One-run privacy audit (Steinke, Nasr & Jagielski, NeurIPS 2023) of a run trained with `cxrsynth train "
    "--canaries M`: score the M canaries with a white-box attack fixed in advance (default loss at t = 100, 16 noise "
    "draws), guess 'in' for the highest scores and 'out' for the lowest, and turn the correct guesses into an ε lower "
    "bound at --confidence (δ from RUN/privacy.json, else 1e-5). Without --guesses, the best of 7 guess counts is "
    "reported with a union bound (the stated confidence holds). Writes RUN/audit/canaries.json. For a DP run, a bound "
    "above the run's ε means the accounting or the implementation is wrong: the command then exits with code 3."
)


@audit_app.command("canaries", help=CANARIES_HELP)
def canaries_command(
    run: Path = typer.Option(..., "--run", help="Run folder trained with --canaries M."),
    attack: str = typer.Option("loss", "--attack", help="White-box attack that scores the canaries (loss, pia, ...)."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence 1-β of the ε lower bound."),
    guesses: Optional[int] = typer.Option(
        None, "--guesses", min=1, help="Number of guesses r (half 'in', half 'out'); default: the best of 7 "
        "candidates (5%..100% of M), paid for with a union bound."),
    timestep: int = typer.Option(100, "--timestep", min=1, help="Diffusion timestep t of the attack."),
    noise_draws: int = typer.Option(16, "--noise-draws", min=1, help="Noise draws averaged per canary."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per UNet forward pass."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the attack's noise draws."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Compute the canaries' ε lower bound of RUN and write RUN/audit/canaries.json."""
    from rich.console import Console

    from cxrsynth.audit.canaries import audit_canaries

    errors = Console(stderr=True)
    with torch_threads(threads):
        report = audit_canaries(run, attack=attack, confidence=confidence, guesses=guesses, timestep=timestep,
                                noise_draws=noise_draws, batch_size=batch_size, seed=seed, device=device,
                                log=lambda line: errors.print(f"[dim]audit canaries:[/] {line}", highlight=False))
    console = Console()
    console.print(f"{report['correct_guesses']} of {report['guesses']} guesses correct on {report['m']} canaries "
                  f"({report['guess_selection']}): ε ≥ {report['eps_lower_bound']:.3f} at {confidence:.0%} confidence "
                  f"(δ = {report['delta']:.3g})", highlight=False)
    if report["epsilon"] is not None:
        console.print(f"DP guarantee ε = {report['epsilon']:.3f}; ratio ε_lb / ε = {report['ratio']:.3f}", highlight=False)
    console.print(f"wrote {Path(run) / 'audit' / 'canaries.json'}")
    if report["violation"]:
        errors.print(
            f"[bold red]PRIVACY VIOLATION:[/] the audit proves ε ≥ {report['eps_lower_bound']:.3f} at "
            f"{confidence:.0%} confidence, above the run's claimed ε = {report['epsilon']:.3f}. The DP accounting or "
            "its implementation is wrong (noise, clipping, sampling rate or number of privacy units): do not trust "
            "privacy.json, and report this as a bug.", highlight=False)
        raise typer.Exit(code=3)
