"""``cxrsynth train``: train a DDPM on a prepared folder's member split (option parsing only).

The work is :func:`cxrsynth.train.train`; this module maps options onto a
:class:`~cxrsynth.config.TrainConfig`. Options left out take the defaults shown, or, with
``--resume``, the values saved in ``RUN/config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from cxrsynth.cli.common import threads_option, torch_threads
from cxrsynth.config import TrainConfig
from cxrsynth.model.presets import preset_help

_DEFAULTS = TrainConfig(data="")


def _default(name: str) -> str:
    return f" Default {getattr(_DEFAULTS, name)} (with --resume: the run's)."


def train_command(
    data: Optional[Path] = typer.Option(
        None, "--data", help="Prepared-data folder (`cxrsynth data prepare`); only its member split is trained on. "
        "Required for a new run; with --resume, defaults to the run's."),
    run: Path = typer.Option(..., "--run", help="Run folder to create (or continue with --resume): config.yaml, "
                             "train_log.jsonl, checkpoints/, progress/, pipeline/."),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="UNet architecture; the image size comes from the data. " + preset_help() + "."
        + _default("preset")),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1,
                                            help="Optimizer steps to train for (or give --epochs)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", min=0.0,
                                           help="Passes over the member images to train for (or give --max-steps)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Images per process per micro-batch." + _default("batch_size")),
    grad_accum: Optional[int] = typer.Option(
        None, "--grad-accum", min=1,
        help="Micro-batches per optimizer step (effective batch = batch size x grad accum x processes)."
        + _default("grad_accum")),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak AdamW learning rate." + _default("lr")),
    seed: Optional[int] = typer.Option(
        None, "--seed", min=0, help="Seed of initialisation, data order, noise and timesteps." + _default("seed")),
    conditional: bool = typer.Option(
        False, "--conditional",
        help="Condition on finding labels: each label set is one class of the UNet's class embedding, plus a "
        "null class for classifier-free guidance (saved as label_vocabulary.json). Non-DP runs use the label "
        "sets seen in the member split; DP runs (and --findings) every set of at most --max-label-findings "
        "findings of the public schema, fixed before seeing the data, with no counts."),
    findings: Optional[str] = typer.Option(
        None, "--findings",
        help="Conditional runs: the public finding list of your label schema, comma-separated (not the findings "
        "seen in the data). Needed by DP runs on folder/DICOM sources; nih and chestmnist use the 14 "
        "ChestX-ray14 findings."),
    max_label_findings: Optional[int] = typer.Option(
        None, "--max-label-findings", min=1,
        help="Conditional runs with a schema: findings per label set (an image with more trains on its first "
        "ones in schema order)." + _default("max_label_findings")),
    label_dropout: Optional[float] = typer.Option(
        None, "--label-dropout", help="Conditional runs: probability of training on the null class instead of the "
        "label (enables classifier-free guidance)." + _default("label_dropout")),
    checkpoint_every: Optional[int] = typer.Option(
        None, "--checkpoint-every", min=1,
        help="Optimizer steps between checkpoints (the last step always gets one)." + _default("checkpoint_every")),
    keep_checkpoints: Optional[int] = typer.Option(
        None, "--keep-checkpoints", min=1, help="Newest checkpoints to keep." + _default("keep_checkpoints")),
    progress_every: Optional[int] = typer.Option(
        None, "--progress-every", min=0,
        help="Steps between progress grids (progress/step_N.png, 16 EMA samples, DDIM 20 steps); 0 = none."
        + _default("progress_every")),
    log_every: Optional[int] = typer.Option(
        None, "--log-every", min=1, help="Steps between train_log.jsonl records." + _default("log_every")),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --run from its newest checkpoint, exactly as if it had not "
        "stopped. Options left out come from its config.yaml; those that shape training must not change."),
    mixed_precision: Optional[str] = typer.Option(
        None, "--mixed-precision", help="no | bf16 | fp16 (fp16 needs a GPU)." + _default("mixed_precision")),
    log_with: Optional[str] = typer.Option(
        None, "--log-with", help="Also log to tensorboard (RUN/logs; needs `pip install tensorboard`)."),
    beta_schedule: Optional[str] = typer.Option(
        None, "--beta-schedule", help="linear (beta 1e-4 -> 0.02, DDPM) or cosine (diffusers squaredcos_cap_v2)."
        + _default("beta_schedule")),
    prediction_type: Optional[str] = typer.Option(
        None, "--prediction-type", help="What the UNet predicts: epsilon (the noise) or v_prediction (the velocity; "
        "saved in the pipeline's scheduler config)." + _default("prediction_type")),
    snr_gamma: Optional[float] = typer.Option(
        None, "--snr-gamma", help="Min-SNR-gamma loss weighting (Hang et al. 2023); 0 for the plain MSE."
        + _default("snr_gamma")),
    ema_decay: Optional[float] = typer.Option(
        None, "--ema-decay", help="Maximum EMA decay, reached after the EMA warm-up 1-(1+step)^-0.75."
        + _default("ema_decay")),
    warmup_steps: Optional[int] = typer.Option(
        None, "--warmup-steps", min=0, help="Linear learning-rate warm-up steps." + _default("warmup_steps")),
    max_grad_norm: Optional[float] = typer.Option(
        None, "--max-grad-norm", help="Gradient clipping norm; with --dp, the per-record clipping norm C."
        + _default("max_grad_norm")),
    dp: bool = typer.Option(
        False, "--dp", help="Differentially private training (DP-SGD, Opacus): each step Poisson-samples privacy "
        "units, clips each unit's gradient to --max-grad-norm and adds Gaussian noise calibrated to --epsilon. "
        "With the patient unit, each sampled patient contributes one of their images, drawn at random, so the "
        "guarantee covers a patient and all their images. Writes RUN/privacy.json; epsilon per log record."),
    epsilon: Optional[float] = typer.Option(
        None, "--epsilon", help="DP: target epsilon (required with --dp). The noise is calibrated so the planned "
        "steps spend at most this; a run that would exceed it stops."),
    delta: Optional[float] = typer.Option(
        None, "--delta", help="DP: delta of the guarantee. Default 1/(10 x number of privacy units), printed."),
    noise_multiplicity: Optional[int] = typer.Option(
        None, "--noise-multiplicity", min=1, help="DP: (timestep, noise) draws per record averaged before "
        "clipping (DPDM): less variance at no privacy cost, K times the compute. Default 4."),
    privacy_unit: Optional[str] = typer.Option(
        None, "--privacy-unit", help="DP: patient (one record per patient: the guarantee is per patient) or image. "
        "Default patient when the data has patient ids."),
    accountant: Optional[str] = typer.Option(
        None, "--accountant", help="DP: prv (privacy random variables, tight) or rdp (Renyi DP). Default prv."),
    logical_batch_size: Optional[int] = typer.Option(
        None, "--logical-batch-size", min=1, help="DP: expected records per step over all processes (large is "
        "better: e.g. 1024-4096 on GPU). Default: batch size x grad accum x processes."),
    physical_batch_size: Optional[int] = typer.Option(
        None, "--physical-batch-size", min=1, help="DP: most records per forward pass per process (memory bound; "
        "each costs --noise-multiplicity rows). Default: --batch-size."),
    canaries: Optional[int] = typer.Option(
        None, "--canaries", min=0, help="One-run privacy audit (Steinke et al. 2023): add M synthetic canary "
        "patients (one out-of-distribution image each, from a secret seed), each trained on with probability 1/2; "
        "kept only in RUN/canaries/. Then `cxrsynth audit canaries --run RUN` gives an epsilon lower bound. An audit "
        "run: `cxrsynth release` refuses it. Default 0 (none)."),
    threads: Optional[int] = threads_option(
        "Saved in config.yaml; with --resume, the run's unless given (a resume may change it)."),
) -> None:
    """Train a DDPM (diffusers UNet2DModel, 1000-step DDPMScheduler, EMA) on the member split of --data.

    Runs on CPU, one GPU, or several through `accelerate launch --num_processes N -m cxrsynth train ...`.
    Writes RUN/config.yaml, train_log.jsonl, checkpoints/ (resumable), progress/ and, at the end, pipeline/
    (a diffusers DDPMPipeline with the EMA weights; loads with DDPMPipeline.from_pretrained).

    With --dp --epsilon E: patient-level (default) differentially private training; RUN/privacy.json states
    the (epsilon, delta) guarantee and its unit. --resume continues the privacy budget already spent.
    """
    from cxrsynth.config import resolve_train_config
    from cxrsynth.train import train

    given: dict[str, Any] = {
        "data": str(data.resolve()) if data is not None else None,
        "preset": preset, "max_steps": max_steps, "epochs": epochs, "batch_size": batch_size,
        "grad_accum": grad_accum, "lr": lr, "seed": seed, "conditional": True if conditional else None,
        "findings": findings, "max_label_findings": max_label_findings,
        "label_dropout": label_dropout, "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints,
        "progress_every": progress_every, "log_every": log_every, "mixed_precision": mixed_precision,
        "log_with": log_with, "beta_schedule": beta_schedule,
        "prediction_type": prediction_type, "snr_gamma": snr_gamma, "ema_decay": ema_decay,
        "warmup_steps": warmup_steps, "max_grad_norm": max_grad_norm, "dp": True if dp else None,
        "epsilon": epsilon, "delta": delta, "noise_multiplicity": noise_multiplicity, "privacy_unit": privacy_unit,
        "accountant": accountant, "logical_batch_size": logical_batch_size,
        "physical_batch_size": physical_batch_size, "canaries": canaries, "threads": threads,
    }
    options = {name: value for name, value in given.items() if value is not None}
    config = resolve_train_config(run, options, resume)
    config.validate()  # before the threads are applied: an edited config.yaml may hold threads: 0
    with torch_threads(config.threads):
        pipeline = train(config, run, resume=resume)
    from accelerate import PartialState

    if PartialState().is_main_process:
        typer.echo(f"trained model: {pipeline}")


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the root ``cxrsynth`` app."""
    app.command("train")(train_command)
