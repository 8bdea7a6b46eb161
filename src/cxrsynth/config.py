"""Typed, documented run configuration, saved as ``RUN/config.yaml`` and restored from it.

Following diffusers' schedulers, every setting is a typed dataclass field with a default and a
docstring entry, written with the run and read back unchanged. ``config.yaml`` has two sections:

* ``train`` — :class:`TrainConfig`, the settings the user chose (every ``cxrsynth train``
  option, plus recipe constants a Python caller may change);
* ``facts`` — :class:`RunFacts`, what those settings resolved to on the data and machines used
  (image size, member counts and fingerprint, process count, total steps, parameter count,
  library versions). ``--resume`` checks the data against them.

UNet architectures live in :mod:`cxrsynth.model.presets`; this module only names them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_write_text
from cxrsynth.model.conditioning import DEFAULT_MAX_FINDINGS
from cxrsynth.model.prediction import PREDICTION_TYPES
from cxrsynth.model.presets import PRESETS

CONFIG_FILE = "config.yaml"
PRIVACY_FILE = "privacy.json"
"""The DP guarantee of a run (``RUN/privacy.json``): written by DP training, read by audit and report."""
CONFIG_FORMAT = 1
MIXED_PRECISION_CHOICES: tuple[str, ...] = ("no", "bf16", "fp16")
LOG_WITH_CHOICES: tuple[str, ...] = ("tensorboard",)
PRIVACY_UNITS: tuple[str, ...] = ("patient", "image")
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
BETA_SCHEDULES: dict[str, str] = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
"""``--beta-schedule`` value → diffusers ``DDPMScheduler(beta_schedule=…)`` name."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (``cxrsynth train`` options and recipe constants).

    Attributes:
        data: prepared-data folder (only its ``member`` split is trained on).
        preset: UNet architecture, a key of :data:`cxrsynth.model.presets.PRESETS`.
        max_steps: optimizer steps to train for (exclusive with ``epochs``).
        epochs: passes over the member images to train for, converted to steps.
        batch_size: images per process per micro-batch.
        grad_accum: micro-batches accumulated into one optimizer step.
        lr: peak AdamW learning rate (after warm-up).
        seed: seed of initialisation, data order, noise and timesteps.
        conditional: condition on finding label sets (class embedding, label dropout).
        findings: conditional runs: the public finding list (comma-separated) the label sets are
            built from, fixed before seeing the data; None means, for a DP run, the source format's
            published list (ChestX-ray14's 14 findings for ``nih``/``chestmnist``) and, otherwise,
            the label sets seen in the member split.
        max_label_findings: findings per label set when the label sets come from a schema.
        label_dropout: probability of replacing a label by the null class (classifier-free guidance).
        checkpoint_every: optimizer steps between checkpoints (the last step always gets one).
        keep_checkpoints: most recent checkpoints kept; older ones are deleted.
        progress_every: steps between progress sample grids (0: none).
        log_every: steps between ``train_log.jsonl`` records (each averages the steps since the last).
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (fp16 needs a GPU).
        log_with: also log to this tracker (``tensorboard``), or None.
        beta_schedule: ``linear`` (β 1e-4 → 0.02) or ``cosine`` (``squaredcos_cap_v2``).
        prediction_type: what the UNet predicts, ``v_prediction`` (v, the default: on the real NIH
            images it had FD 2.66 vs 3.91 and precision 0.94 vs 0.49 for ε at the same 600 steps,
            bench/RESULTS.md) or ``epsilon`` (ε); saved in the pipeline's scheduler config, so plain
            diffusers samples it correctly.
        snr_gamma: min-SNR-γ loss weighting (Hang et al. 2023; default 5.0, as diffusers' training
            examples use); 0 or None for the plain MSE.
        ema_decay: maximum EMA decay, reached after the EMA warm-up.
        warmup_steps: linear learning-rate warm-up steps.
        max_grad_norm: gradient clipping norm.
        num_train_timesteps: diffusion timesteps of the DDPM scheduler.
        beta_start: first β of the linear schedule.
        beta_end: last β of the linear schedule.
        adam_beta1: AdamW β₁.
        adam_beta2: AdamW β₂.
        adam_epsilon: AdamW ε.
        weight_decay: AdamW decoupled weight decay.
        ema_power: EMA warm-up power (decay = 1 − (1 + step)^−power, capped at ``ema_decay``).
        progress_sampler: sampler of the progress grids (``ddim``, ``dpmsolver`` or ``ddpm``).
        progress_steps: denoising steps of the progress grids.
        progress_images: images per progress grid.
        dp: train with patient- (or image-) level differentially private SGD (:mod:`cxrsynth.dp`).
        epsilon: DP target ε, required with ``dp``; training stops rather than exceed it.
        delta: DP δ; None means 1/(10 · number of privacy units).
        noise_multiplicity: DP: (timestep, noise) draws averaged per record before clipping.
        privacy_unit: DP: ``patient`` or ``image``; None means patient when the data has real
            patient ids, else image.
        accountant: DP accountant, ``prv`` (Gopi et al.) or ``rdp``.
        logical_batch_size: DP: expected records per optimizer step (all processes); None means
            ``batch_size`` × ``grad_accum`` × processes.
        physical_batch_size: DP: most records per forward pass on one process (each costs
            ``noise_multiplicity`` rows); None means ``batch_size``.
        canaries: one-run audit (Steinke et al. 2023): M synthetic canary patients, each included in
            training with probability ½ (:mod:`cxrsynth.train.canaries`); 0 for none. A run with
            canaries is an audit run: ``cxrsynth release`` refuses it.
        threads: torch CPU threads per process (``--threads``); None: the command's default
            (:func:`cxrsynth.cli.common.default_threads`). Changes the speed, not the recipe, so
            ``--resume`` may change it; on CPU a different count rounds sums differently (about 1e-8
            in the weights after 3 steps, bench/threads.py), so only an unchanged count keeps a resumed
            run bit-identical.
    """

    data: str
    preset: str = "small"
    max_steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-4
    seed: int = 0
    conditional: bool = False
    findings: str | None = None
    max_label_findings: int = DEFAULT_MAX_FINDINGS
    label_dropout: float = 0.1
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    progress_every: int = 1000
    log_every: int = 10
    mixed_precision: str = "no"
    log_with: str | None = None
    beta_schedule: str = "linear"
    prediction_type: str = "v_prediction"
    snr_gamma: float | None = 5.0
    ema_decay: float = 0.9999
    warmup_steps: int = 500
    max_grad_norm: float = 1.0
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    ema_power: float = 0.75
    progress_sampler: str = "ddpm"
    progress_steps: int = 20
    progress_images: int = 16
    dp: bool = False
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplicity: int = 4
    privacy_unit: str | None = None
    accountant: str = "prv"
    logical_batch_size: int | None = None
    physical_batch_size: int | None = None
    canaries: int = 0
    threads: int | None = None

    def validate(self) -> None:
        """Check every setting's range and choice.

        Raises:
            CxrsynthError: naming the first invalid setting and its valid values.
        """
        if self.preset not in PRESETS:
            _invalid("--preset", self.preset, f"one of {', '.join(PRESETS)}")
        if (self.max_steps is None) == (self.epochs is None):
            raise CxrsynthError(
                "give exactly one of --max-steps and --epochs",
                "e.g. --max-steps 2000 (optimizer steps) or --epochs 50 (passes over the member images)",
            )
        if self.max_steps is not None and self.max_steps < 1:
            _invalid("--max-steps", self.max_steps, "an integer >= 1")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            _invalid("--epochs", self.epochs, "a number > 0")
        for name in ("batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every",
                     "num_train_timesteps", "progress_steps", "progress_images"):
            if getattr(self, name) < 1:
                _invalid(_option(name), getattr(self, name), "an integer >= 1")
        for name in ("progress_every", "warmup_steps"):
            if getattr(self, name) < 0:
                _invalid(_option(name), getattr(self, name), "an integer >= 0")
        if not self.lr > 0:
            _invalid("--lr", self.lr, "a number > 0")
        if not self.conditional and (self.findings is not None or self.max_label_findings != DEFAULT_MAX_FINDINGS):
            raise CxrsynthError("--findings and --max-label-findings only apply to conditional training",
                                "add --conditional, or leave these options out")
        if self.max_label_findings < 1:
            _invalid("--max-label-findings", self.max_label_findings, "an integer >= 1")
        if not 0.0 <= self.label_dropout < 1.0:
            _invalid("--label-dropout", self.label_dropout, "a probability in [0, 1)")
        if not 0.0 <= self.ema_decay <= 1.0:
            _invalid("--ema-decay", self.ema_decay, "a number in [0, 1]")
        if not self.max_grad_norm > 0:
            _invalid("--max-grad-norm", self.max_grad_norm, "a number > 0")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            _invalid("--mixed-precision", self.mixed_precision, " | ".join(MIXED_PRECISION_CHOICES))
        if self.log_with is not None and self.log_with not in LOG_WITH_CHOICES:
            _invalid("--log-with", self.log_with, " | ".join(LOG_WITH_CHOICES))
        if self.beta_schedule not in BETA_SCHEDULES:
            _invalid("--beta-schedule", self.beta_schedule, " | ".join(BETA_SCHEDULES))
        if self.prediction_type not in PREDICTION_TYPES:
            _invalid("--prediction-type", self.prediction_type, " | ".join(PREDICTION_TYPES))
        if self.snr_gamma is not None and not (self.snr_gamma >= 0 and math.isfinite(self.snr_gamma)):
            _invalid("--snr-gamma", self.snr_gamma, "a number >= 0 (e.g. 5; 0 for the plain MSE)")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            _invalid("beta_start/beta_end", (self.beta_start, self.beta_end), "0 < beta_start < beta_end < 1")
        if self.canaries < 0:
            _invalid("--canaries", self.canaries, "an integer >= 0")
        if self.threads is not None and self.threads < 1:
            _invalid("--threads", self.threads, "an integer >= 1 (or leave it out for the default)")
        if self.canaries and self.conditional:
            raise CxrsynthError("--canaries is not supported with --conditional (canaries carry no finding labels)",
                                "audit an unconditional run with the same recipe, or leave out --canaries")
        self._validate_privacy()

    def _validate_privacy(self) -> None:
        dp_only = {"epsilon": None, "delta": None, "noise_multiplicity": 4, "privacy_unit": None,
                   "accountant": "prv", "logical_batch_size": None, "physical_batch_size": None}
        if not self.dp:
            changed = [_option(name) for name, default in dp_only.items() if getattr(self, name) != default]
            if changed:
                raise CxrsynthError(f"{', '.join(changed)} only apply to differentially private training",
                                    "add --dp --epsilon E, or leave these options out")
            return
        if self.epsilon is None:
            raise CxrsynthError("--dp needs a target --epsilon",
                                "e.g. --dp --epsilon 10 (smaller is more private; training stops at it)")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            _invalid("--epsilon", self.epsilon, "a number > 0")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            _invalid("--delta", self.delta, "a number in (0, 1), far below 1/number of patients")
        if self.noise_multiplicity < 1:
            _invalid("--noise-multiplicity", self.noise_multiplicity, "an integer >= 1")
        if self.privacy_unit is not None and self.privacy_unit not in PRIVACY_UNITS:
            _invalid("--privacy-unit", self.privacy_unit, " | ".join(PRIVACY_UNITS))
        if self.accountant not in ACCOUNTANTS:
            _invalid("--accountant", self.accountant, " | ".join(ACCOUNTANTS))
        for name in ("logical_batch_size", "physical_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                _invalid(_option(name), getattr(self, name), "an integer >= 1")
        if self.mixed_precision == "fp16":
            raise CxrsynthError("--dp does not support --mixed-precision fp16 (loss scaling would scale the "
                                "clipped per-record gradients)", "use --mixed-precision bf16 or no")


@dataclass
class RunFacts:
    """What a run's settings resolved to; recorded in ``config.yaml`` and checked on resume.

    Attributes:
        image_size: side of the training images (the UNet's ``sample_size``).
        channels: image channels (1: grayscale radiographs).
        member_images: images in the ``member`` split.
        member_patients: patients in the ``member`` split.
        member_fingerprint: SHA-256 over the member image ids and labels; changes when the data does.
        label_sets: label sets of a conditional model's vocabulary (0 for unconditional).
        num_processes: training processes (``accelerate launch --num_processes``).
        global_batch_size: images per optimizer step (batch × grad_accum × processes); for a DP run,
            the expected records per step (the logical batch size).
        total_steps: optimizer steps of the whole run.
        unet_parameters: trainable parameters of the UNet.
        versions: versions of cxrsynth, torch, diffusers and accelerate used.
        privacy_unit: DP runs: ``patient`` or ``image``, the unit the guarantee protects ("" otherwise).
        privacy_units: DP runs: number of privacy units (records) in the member split (0 otherwise).
        hardware: the training device of the last (re)start, e.g. ``cpu (2 cores)`` or
            ``cuda: NVIDIA H200`` ("" in runs written before it was recorded).
    """

    image_size: int
    channels: int
    member_images: int
    member_patients: int
    member_fingerprint: str
    label_sets: int
    num_processes: int
    global_batch_size: int
    total_steps: int
    unet_parameters: int
    versions: dict[str, str] = field(default_factory=dict)
    privacy_unit: str = ""
    privacy_units: int = 0
    hardware: str = ""


RESUME_MUTABLE_SETTINGS: frozenset[str] = frozenset(
    {"data", "max_steps", "epochs", "checkpoint_every", "keep_checkpoints", "progress_every", "log_every",
     "log_with", "mixed_precision", "progress_sampler", "progress_steps", "progress_images", "threads"}
)
"""Settings ``--resume`` may change: they do not alter the trajectory of the weights (or, for
``mixed_precision``, let a CPU run continue on a GPU; ``threads`` only round sums differently).
``data`` may move if its content does not."""


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _invalid(option: str, value: Any, expected: str) -> typing.NoReturn:
    raise CxrsynthError(f"invalid {option} {value!r}", f"expected {expected}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON-safe data (tuples become lists)."""
    return dataclasses.asdict(config)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint, converting YAML spellings (``1e-4``, ints for floats)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(option for option in options if option is not type(None))
        origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise CxrsynthError(f"{where} must be a mapping, found {value!r}", "fix or delete the config file")
        return {str(key): str(item) for key, item in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise CxrsynthError(f"{where} must be {hint.__name__}, found {value!r}", "fix or delete the config file")


def config_from_dict(cls: type, data: Mapping[str, Any], source: str) -> Any:
    """Build the dataclass ``cls`` from a mapping read from ``source`` (missing keys take defaults).

    Raises:
        CxrsynthError: for an unknown key, a missing required key, or a value of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise CxrsynthError(f"{source} must be a mapping, found {type(data).__name__}", "fix or delete it")
    hints = typing.get_type_hints(cls)
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CxrsynthError(f"{source}: unknown setting(s) {', '.join(unknown)}", "remove them (or update cxrsynth)")
    values = {name: _coerce(value, hints[name], f"{source}: {name}") for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise CxrsynthError(f"{source}: {exc}", "add the missing setting") from None


def save_run_config(run_dir: str | Path, config: TrainConfig, facts: RunFacts) -> Path:
    """Write ``RUN/config.yaml`` atomically; returns its path."""
    document = {"format": CONFIG_FORMAT, "train": config_to_dict(config), "facts": config_to_dict(facts)}
    text = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    return atomic_write_text(Path(run_dir) / CONFIG_FILE, text)


def load_run_config(run_dir: str | Path) -> tuple[TrainConfig, RunFacts]:
    """Read ``RUN/config.yaml``.

    Returns:
        The run's :class:`TrainConfig` and :class:`RunFacts`.

    Raises:
        CxrsynthError: when the file is missing, not YAML, or not a cxrsynth training config.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CxrsynthError(f"{path} does not exist: {run_dir} is not a training run folder",
                            "point --run to a folder written by `cxrsynth train`")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CxrsynthError(f"{path} is not valid UTF-8 YAML ({exc})",
                            "restore it (cxrsynth train writes it as UTF-8 YAML); the run cannot be resumed without it") from None
    if not isinstance(document, dict) or "train" not in document or "facts" not in document:
        raise CxrsynthError(f"{path} lacks the 'train' and 'facts' sections", "it was not written by cxrsynth train")
    if document.get("format") != CONFIG_FORMAT:
        raise CxrsynthError(f"{path} has config format {document.get('format')!r}, expected {CONFIG_FORMAT}",
                            "use the cxrsynth version that wrote it")
    return (config_from_dict(TrainConfig, document["train"], f"{path} [train]"),
            config_from_dict(RunFacts, document["facts"], f"{path} [facts]"))


def trajectory_differences(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """Settings (other than :data:`RESUME_MUTABLE_SETTINGS`) whose values differ, as ``--opt saved → new``."""
    differences = []
    for item in dataclasses.fields(TrainConfig):
        if item.name in RESUME_MUTABLE_SETTINGS:
            continue
        old, new = getattr(saved, item.name), getattr(requested, item.name)
        if old != new:
            differences.append(f"{_option(item.name)} {old!r} → {new!r}")
    return differences


def resolve_train_config(run_dir: str | Path, options: Mapping[str, Any], resume: bool) -> TrainConfig:
    """The configuration of ``cxrsynth train``: given options over the defaults, or over the saved run.

    Args:
        run_dir: the run folder.
        options: settings the user gave explicitly (names of :class:`TrainConfig` fields).
        resume: continue the run in ``run_dir``: settings not given come from its ``config.yaml``.

    Returns:
        The configuration (not yet validated against the data; :func:`cxrsynth.train.train` does).

    Raises:
        CxrsynthError: for an unknown option name, or when a new run lacks ``data``.
    """
    unknown = sorted(set(options) - {item.name for item in dataclasses.fields(TrainConfig)})
    if unknown:
        raise CxrsynthError(f"unknown training setting(s) {', '.join(unknown)}", "see cxrsynth train --help")
    if resume and (Path(run_dir) / CONFIG_FILE).is_file():
        saved, _ = load_run_config(run_dir)
        merged = dataclasses.replace(saved, **options)
        # --max-steps and --epochs are alternatives: giving one replaces the saved other.
        if "max_steps" in options and "epochs" not in options:
            merged.epochs = None
        if "epochs" in options and "max_steps" not in options:
            merged.max_steps = None
        return merged
    if options.get("data") is None:
        raise CxrsynthError("--data is required", "pass --data DATA, a folder written by `cxrsynth data prepare`")
    return TrainConfig(**options)
