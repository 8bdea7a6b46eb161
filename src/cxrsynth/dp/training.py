"""DP-SGD for the DDPM: the private parts of a run and its optimisation step.

One step: Poisson-sample records (:mod:`cxrsynth.dp.sampling`); for each physical batch, draw
K (timestep, noise) pairs per record and compute per-record gradients of the K-draw mean loss
(:mod:`cxrsynth.dp.per_record`); hand them to Opacus' ``DPOptimizer`` as ``grad_sample``, which
clips each to C, sums over the step's batches, adds N(0, σ²C²) once, divides by the expected
batch size and steps AdamW. With several processes Opacus' ``DistributedDPOptimizer`` adds the
noise on rank 0 only and all-reduces, and ``DifferentiallyPrivateDistributedDataParallel``
broadcasts rank 0's initial weights. The ledger (:mod:`cxrsynth.dp.accounting`) records the step.

The UNet is never wrapped by Opacus or DDP during training, so saving, the EMA (post-processing
of DP iterates: no privacy cost) and the exported pipeline are those of a non-DP run.

The loop reaches this module only through the interface it defines (:mod:`cxrsynth.train.privacy`):
:func:`resolve_privacy` is the plugin, :class:`PrivacySettings` the plan it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

from cxrsynth.config import TrainConfig
from cxrsynth.data.dataset import to_model_range
from cxrsynth.data.prepared import PreparedData
from cxrsynth.dp.accounting import PrivacyLedger, calibrate_noise_multiplier, default_delta, write_privacy_report
from cxrsynth.dp.clipping import FusedClipDistributedDPOptimizer, FusedClipDPOptimizer
from cxrsynth.dp.per_record import per_record_gradients, use_vmappable_attention
from cxrsynth.dp.sampling import PoissonRecordStream, PrivacyRecords
from cxrsynth.errors import CxrsynthError
from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.train.components import TrainingParts
from cxrsynth.train.data_stream import BatchSource
from cxrsynth.train.objective import draw_diffusion_noise, drop_labels

LEDGER_KEY = "privacy"
"""Key of the ledger's state in a checkpoint's ``extra`` entries."""


@dataclass(frozen=True)
class PrivacySettings:
    """A DP run's settings resolved on its data and processes.

    Attributes:
        records: the privacy units of the member split.
        delta: δ (given, or 1/(10·units)).
        delta_is_default: whether δ was derived rather than given.
        logical_batch_size: expected records per step over all processes.
        physical_batch_size: most records per forward pass on one process.
        sample_rate: q = logical batch / units.
        compile_gradients: compute per-record gradients with ``torch.compile`` on batches padded to
            ``physical_batch_size`` (one shape, one compilation; :mod:`cxrsynth.dp.per_record`).
        fused_clip: clip and sum the records' gradients in a few large operations
            (:mod:`cxrsynth.dp.clipping`) rather than Opacus' several per parameter.
    """

    records: PrivacyRecords
    delta: float
    delta_is_default: bool
    logical_batch_size: int
    physical_batch_size: int
    sample_rate: float
    compile_gradients: bool = False
    fused_clip: bool = False

    @property
    def unit(self) -> str:
        """``patient`` or ``image``."""
        return self.records.unit

    @property
    def units(self) -> int:
        """How many privacy units the member split holds."""
        return len(self.records)

    def make_private(self, config: TrainConfig, data: PreparedData, accelerator: Accelerator, unet: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, vocabulary: LabelVocabulary | None,
                     noise_generator: torch.Generator, draw_seed: int) -> tuple[torch.optim.Optimizer, BatchSource]:
        """:func:`make_private` with these settings (the loop's :class:`~cxrsynth.train.privacy.PrivacyPlan` hook)."""
        return make_private(config, self, data, accelerator, unet, optimizer, vocabulary, noise_generator, draw_seed)

    def attach_ledger(self, parts: TrainingParts, config: TrainConfig, planned_steps: int,
                      print_fn: Callable[[str], Any]) -> PrivacyLedger:
        """:func:`attach_ledger` with these settings."""
        return attach_ledger(parts, config, self, planned_steps, print_fn)

    def optimisation_step(self, parts: TrainingParts) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`private_optimisation_step`, compiled and padded when ``compile_gradients``."""
        pad_to = self.physical_batch_size if self.compile_gradients else None
        return private_optimisation_step(parts, compile=self.compile_gradients, pad_to=pad_to)

    def write_report(self, run_dir: Path, ledger: PrivacyLedger, stopped_early: bool) -> dict[str, Any]:
        """:func:`cxrsynth.dp.accounting.write_privacy_report` (``RUN/privacy.json``)."""
        return write_privacy_report(run_dir, ledger, stopped_early)


def resolve_privacy(config: TrainConfig, data: PreparedData, split: str, num_processes: int) -> PrivacySettings:
    """Resolve ``config``'s DP options on ``data``'s ``split`` (unit, δ, batch sizes, sampling rate).

    This is the DP-SGD :class:`~cxrsynth.train.privacy.PrivacyPlugin` (declared in :mod:`cxrsynth.plugins`).

    Raises:
        CxrsynthError: when the patient unit is asked for data without real patient ids, or the
            logical batch exceeds the number of privacy units.
    """
    real_ids = data.meta.get("patient_ids", "real") != "per-image"
    unit = config.privacy_unit or ("patient" if real_ids else "image")
    if unit == "patient" and not real_ids:
        raise CxrsynthError(
            f"--privacy-unit patient needs patient ids, but {config.data} was prepared without them "
            "(every image counts as its own patient)",
            "prepare the data with a CSV that gives patient_id, or pass --privacy-unit image (then a patient "
            "with several images is protected only per image)",
        )
    records = PrivacyRecords.from_prepared(data, split, unit)
    logical = config.logical_batch_size or config.batch_size * config.grad_accum * num_processes
    if logical > len(records):
        raise CxrsynthError(
            f"--logical-batch-size {logical} exceeds the {len(records)} {unit}s of the member split",
            f"use a logical batch size below {len(records)} (a small fraction of it gives the best privacy)",
        )
    delta = config.delta if config.delta is not None else default_delta(len(records))
    return PrivacySettings(records=records, delta=delta, delta_is_default=config.delta is None,
                           logical_batch_size=logical, physical_batch_size=config.physical_batch_size or config.batch_size,
                           sample_rate=logical / len(records))


def make_private(config: TrainConfig, settings: PrivacySettings, data: PreparedData, accelerator: Accelerator,
                 unet: torch.nn.Module, optimizer: torch.optim.Optimizer, vocabulary: LabelVocabulary | None,
                 noise_generator: torch.Generator, draw_seed: int) -> tuple[DPOptimizer, PoissonRecordStream]:
    """Opacus' DP optimizer around ``optimizer`` and the Poisson record stream of the run.

    ``noise_generator`` (Opacus' noise) and ``draw_seed`` (Poisson sampling) must come from
    :func:`cxrsynth.train.components.draw_secret_seed`, not from the published ``config.seed``.
    The optimizer's noise multiplier is 0 until :func:`attach_ledger` sets the calibrated σ.
    ``unet`` gets vmap-friendly attention and, with several processes, rank 0's weights.
    """
    use_vmappable_attention(unet)
    processes = accelerator.num_processes
    if processes > 1:
        DifferentiallyPrivateDistributedDataParallel(unet)  # broadcasts rank 0's initial weights in place
    if settings.fused_clip:
        optimizer_class = FusedClipDistributedDPOptimizer if processes > 1 else FusedClipDPOptimizer
    else:
        optimizer_class = DistributedDPOptimizer if processes > 1 else DPOptimizer
    dp_optimizer = optimizer_class(
        optimizer,
        noise_multiplier=0.0,
        max_grad_norm=config.max_grad_norm,
        expected_batch_size=settings.logical_batch_size / processes,
        loss_reduction="mean",
        generator=noise_generator,
    )
    class_ids_by_row = None
    if vocabulary is not None:
        member_rows = np.concatenate(settings.records.image_rows)
        class_ids_by_row = np.full(len(data.index), -1, dtype=np.int64)
        class_ids_by_row[member_rows] = vocabulary.encode_training_labels(
            data.index["labels"].iloc[member_rows].tolist()).numpy()
    stream = PoissonRecordStream(data.images, settings.records, class_ids_by_row, draw_seed, settings.sample_rate,
                                 settings.physical_batch_size, accelerator.process_index, processes)
    return dp_optimizer, stream


def attach_ledger(parts: TrainingParts, config: TrainConfig, settings: PrivacySettings, planned_steps: int,
                  print_fn: Callable[[str], Any] = print) -> PrivacyLedger:
    """The run's ledger — restored from the checkpoint just loaded, else freshly calibrated — wired to the optimizer.

    Raises:
        CxrsynthError: when the checkpoint's ledger belongs to other privacy settings, or no σ
            reaches the target ε.
    """
    fresh = PrivacyLedger(
        unit=settings.unit, privacy_units=len(settings.records), target_epsilon=float(config.epsilon),
        delta=settings.delta, accountant=config.accountant, noise_multiplier=0.0,
        max_grad_norm=config.max_grad_norm, sample_rate=settings.sample_rate,
        logical_batch_size=settings.logical_batch_size, noise_multiplicity=config.noise_multiplicity,
        planned_steps=planned_steps,
    )
    saved = parts.extra_state.get(LEDGER_KEY)
    if saved is not None:
        ledger = PrivacyLedger.from_state_dict(saved, "the checkpoint")
        differences = ledger.matches(fresh)
        if differences:
            raise CxrsynthError(f"the checkpoint's privacy settings differ from this run's: {'; '.join(differences)}",
                                "resume with the data and options the run was trained with")
        print_fn(f"DP: continuing the budget: {ledger.steps} steps taken, ε = {ledger.epsilon():.3f} spent of "
                 f"{ledger.target_epsilon}")
    elif parts.step > 0:
        raise CxrsynthError("the checkpoint of this DP run holds no privacy accountant state",
                            "resume from another checkpoint, or retrain: the budget spent cannot be recovered")
    else:
        fresh.noise_multiplier = calibrate_noise_multiplier(fresh.target_epsilon, fresh.delta, fresh.sample_rate,
                                                            planned_steps, fresh.accountant)
        ledger = fresh
        how = " = 1/(10·units)" if settings.delta_is_default else ""
        print_fn(f"DP: unit {ledger.unit}, {ledger.privacy_units} units, δ = {ledger.delta:.3g}{how}, "
                 f"q = {ledger.sample_rate:.4g}, C = {ledger.max_grad_norm}, K = {ledger.noise_multiplicity}, "
                 f"σ = {ledger.noise_multiplier:.4f} for ε ≤ {ledger.target_epsilon} over {planned_steps} steps "
                 f"({ledger.accountant} accountant)")
    parts.optimizer.noise_multiplier = ledger.noise_multiplier
    parts.extra_state[LEDGER_KEY] = ledger.state_dict()
    parts.privacy = ledger
    return ledger


def _record_inputs(parts: TrainingParts, images: torch.Tensor, class_ids: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Clean images, noise, timesteps and (dropped-out) labels of R records × K draws."""
    config, device = parts.config, parts.accelerator.device
    draws = config.noise_multiplicity
    clean = to_model_range(images.to(device, non_blocking=True))
    clean = clean[:, None].expand(-1, draws, *clean.shape[1:]).contiguous()
    flat = clean.flatten(0, 1)
    noise, timesteps = draw_diffusion_noise(flat, config.num_train_timesteps, parts.noise_generator)
    labels = None
    if class_ids is not None:
        repeated = class_ids.to(device).repeat_interleave(draws)
        labels = drop_labels(repeated, parts.vocabulary.null_class, config.label_dropout, parts.noise_generator)
        labels = labels.view(-1, draws)
    return clean, noise.view_as(clean), timesteps.view(-1, draws), labels


def private_optimisation_step(parts: TrainingParts, compile: bool = False, pad_to: int | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One DP-SGD step (see the module docstring).

    ``compile`` and ``pad_to`` are passed to :func:`~cxrsynth.dp.per_record.per_record_gradients`
    (``pad_to`` at least the physical batch size: the most records a batch holds).

    Returns:
        ``(loss_sum, records)``: 0-d tensors, the sum of the per-record losses and the number of
        records this process trained on in the step.
    """
    accelerator, ledger = parts.accelerator, parts.privacy
    device = accelerator.device
    trainable = [(name, p) for name, p in parts.unet.named_parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=device)
    records = torch.zeros((), device=device)
    with parts.stream.next_step(parts.optimizer) as batches:
        for batch in batches:
            if len(batch.rows) == 0:
                gradients = {name: p.new_zeros((0, *p.shape)) for name, p in trainable}
            else:
                clean, noise, timesteps, labels = _record_inputs(parts, batch.images, batch.class_ids)
                with accelerator.autocast():
                    gradients, losses = per_record_gradients(parts.unet, parts.noise_scheduler, clean, noise,
                                                             timesteps, labels, parts.config.snr_gamma,
                                                             compile=compile, pad_to=pad_to)
                loss_sum += losses.sum()
                records += len(batch.rows)
            for name, p in trainable:
                p.grad_sample = gradients[name]
            parts.optimizer.step()  # accumulates only, except after the step's last batch
            parts.optimizer.zero_grad(set_to_none=True)
    parts.lr_scheduler.step()
    if parts.ema is not None:
        parts.ema.step(parts.base_unet.parameters())
    parts.step += 1
    ledger.record_step()
    parts.extra_state[LEDGER_KEY] = ledger.state_dict()
    return loss_sum, records
