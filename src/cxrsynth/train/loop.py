"""``train(config, run_dir)``: the DDPM training run, end to end, under Accelerate.

Steps: validate the settings against the data → prepare the run folder (or check it on resume)
→ build the parts (:mod:`cxrsynth.train.components`) → restore the newest checkpoint → loop over
optimizer steps (:func:`optimisation_step`), logging, checkpointing and drawing progress grids on
schedule → export ``pipeline/`` from the EMA weights.

Only the main process writes files and shows the progress bar; every process runs the same loop.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from cxrsynth.config import (
    CONFIG_FILE,
    PRIVACY_FILE,
    RunFacts,
    TrainConfig,
    load_run_config,
    save_run_config,
    trajectory_differences,
)
from cxrsynth.data.dataset import to_model_range
from cxrsynth.data.prepared import PreparedData, load_prepared
from cxrsynth.errors import CxrsynthError
from cxrsynth.model.conditioning import LabelVocabulary, run_vocabulary
from cxrsynth.model.presets import build_unet, check_preset_resolution, get_preset
from cxrsynth.runfolder import run_lock
from cxrsynth.train.canaries import prepare_canaries, save_canaries, with_canaries
from cxrsynth.train.checkpoint import (
    CHECKPOINTS_DIR,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from cxrsynth.train.components import (
    TrainingParts,
    build_ema,
    build_lr_scheduler,
    build_noise_scheduler,
    build_optimizer,
    draw_secret_seed,
    ema_unet,
    make_accelerator,
    make_noise_generator,
)
from cxrsynth.train.data_stream import MemberImageStream
from cxrsynth.train.export import PIPELINE_DIR, export_pipeline, write_progress_grid
from cxrsynth.train.objective import draw_diffusion_noise, drop_labels, per_example_denoising_loss
from cxrsynth.train.privacy import PrivacyPlan, privacy_plugin
from cxrsynth.train.run_log import TrainLog

TRAIN_SPLIT = "member"


def _package_versions() -> dict[str, str]:
    found = {}
    for name in ("cxrsynth", "torch", "diffusers", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found


def member_fingerprint(data: PreparedData) -> str:
    """SHA-256 over the member images' ids and labels (in row order): identifies the training set."""
    members = data.index.loc[data.index["split"] == TRAIN_SPLIT, ["image_id", "labels"]]
    digest = hashlib.sha256()
    for image_id, labels in members.itertuples(index=False):
        digest.update(f"{image_id}\t{labels}\n".encode())
    return digest.hexdigest()


def total_steps(config: TrainConfig, records: int, global_batch_size: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``epochs`` passes over the records rounded up.

    A record is a member image, or in a DP run a privacy unit (a patient, or an image).
    """
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * records / global_batch_size))


def describe_device(device: torch.device) -> str:
    """A short description of the training device: ``cuda: <GPU name>`` or ``cpu (<n> cores)``."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type} ({os.cpu_count()} cores)"


def describe_run(config: TrainConfig, data: PreparedData, num_processes: int,
                 vocabulary: LabelVocabulary | None, unet_parameters: int,
                 privacy: PrivacyPlan | None = None, device: torch.device | None = None) -> RunFacts:
    """The :class:`RunFacts` of ``config`` on ``data`` with ``num_processes`` processes (DP: ``privacy``)."""
    members = data.index.loc[data.index["split"] == TRAIN_SPLIT]
    global_batch = config.batch_size * config.grad_accum * num_processes
    records = len(members)
    if privacy is not None:
        global_batch, records = privacy.logical_batch_size, privacy.units
    return RunFacts(
        image_size=data.size,
        channels=1,
        member_images=len(members),
        member_patients=int(members["patient_id"].nunique()),
        member_fingerprint=member_fingerprint(data),
        label_sets=len(vocabulary.label_sets) if vocabulary is not None else 0,
        num_processes=num_processes,
        global_batch_size=global_batch,
        total_steps=total_steps(config, records, global_batch),
        unet_parameters=unet_parameters,
        versions=_package_versions(),
        privacy_unit=privacy.unit if privacy is not None else "",
        privacy_units=records if privacy is not None else 0,
        hardware=describe_device(device) if device is not None else "",
    )


def check_resume_compatible(run_dir: Path, config: TrainConfig, facts: RunFacts) -> None:
    """Refuse to continue a run with other data or other trajectory settings.

    Raises:
        CxrsynthError: naming what differs between ``RUN/config.yaml`` and this invocation.
    """
    saved_config, saved_facts = load_run_config(run_dir)
    path = run_dir / CONFIG_FILE
    if (saved_facts.image_size, saved_facts.channels) != (facts.image_size, facts.channels):
        raise CxrsynthError(
            f"{path}: the run was trained on {saved_facts.image_size}² images with {saved_facts.channels} "
            f"channel(s), but --data {config.data} holds {facts.image_size}² images with {facts.channels}",
            f"resume with the data the run was trained on ({saved_config.data}), or start a new --run",
        )
    if saved_facts.member_fingerprint != facts.member_fingerprint:
        raise CxrsynthError(
            f"{path}: the member split of --data {config.data} differs from the one the run was trained on "
            f"({saved_facts.member_images} images then, {facts.member_images} now, or other ids/labels)",
            f"resume with the data the run was trained on ({saved_config.data}), or start a new --run",
        )
    if saved_facts.num_processes != facts.num_processes:
        raise CxrsynthError(
            f"{path}: the run was trained with {saved_facts.num_processes} process(es), this one has "
            f"{facts.num_processes}",
            f"resume with accelerate launch --num_processes {saved_facts.num_processes}",
        )
    differences = trajectory_differences(saved_config, config)
    if differences:
        raise CxrsynthError(
            f"{path}: --resume cannot change settings that shape the training: {'; '.join(differences)}",
            "leave these options out (they are read from config.yaml) or start a new --run",
        )


def check_run_folder(run_dir: Path, config: TrainConfig, facts: RunFacts, resume: bool) -> None:
    """Check that ``run_dir`` may receive this run (reads only).

    Raises:
        CxrsynthError: when a new run would overwrite an existing one, or a resumed run does not
            match (see :func:`check_resume_compatible`).
    """
    existing = (run_dir / CONFIG_FILE).is_file()
    if existing and not resume:
        raise CxrsynthError(
            f"{run_dir} already holds a training run",
            "pass --resume to continue it, or choose a new --run folder",
        )
    if existing:
        check_resume_compatible(run_dir, config, facts)
    if not existing and (run_dir / CHECKPOINTS_DIR).is_dir():
        raise CxrsynthError(f"{run_dir} has checkpoints but no {CONFIG_FILE}", "choose a new --run folder")


def optimisation_step(parts: TrainingParts) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``grad_accum`` micro-batches.

    Returns:
        ``(loss_sum, images)``: 0-d tensors, the sum of the per-example losses and the number of
        images this process trained on.

    Micro-batch: images from the stream → [-1, 1] on the device, label dropout, noise and timestep
    draws, per-example ε-MSE averaged; Accelerate scales for accumulation, syncs gradients on the
    last micro-batch; then clipping, AdamW, LR schedule and EMA.
    """
    config, accelerator = parts.config, parts.accelerator
    device = accelerator.device
    total = torch.zeros((), device=device)
    images = torch.zeros((), device=device)
    for _ in range(config.grad_accum):
        batch = parts.stream.next_batch()
        with accelerator.accumulate(parts.unet):
            clean = to_model_range(batch.images.to(device, non_blocking=True))
            labels = None
            if batch.class_ids is not None:
                labels = drop_labels(batch.class_ids.to(device), parts.vocabulary.null_class,
                                     config.label_dropout, parts.noise_generator)
            noise, timesteps = draw_diffusion_noise(clean, config.num_train_timesteps, parts.noise_generator)
            losses = per_example_denoising_loss(parts.unet, parts.noise_scheduler, clean, noise, timesteps, labels,
                                                config.snr_gamma)
            loss = losses.mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(parts.unet.parameters(), config.max_grad_norm)
                parts.optimizer.step()
                parts.lr_scheduler.step()
                parts.optimizer.zero_grad(set_to_none=True)
        total += losses.detach().sum()
        images += len(losses)
    if parts.ema is not None:
        parts.ema.step(parts.base_unet.parameters())
    parts.step += 1
    return total, images


def build_parts(config: TrainConfig, data: PreparedData, accelerator: Accelerator, vocabulary: LabelVocabulary | None,
                privacy: PrivacyPlan | None = None) -> TrainingParts:
    """Every object of the run, initialised from ``config.seed`` (before any checkpoint is loaded).

    In a DP run the noise generator and the Poisson sampling are seeded from OS entropy instead
    (:func:`~cxrsynth.train.components.draw_secret_seed`); only the initial weights follow ``config.seed``.

    With ``privacy`` (a DP run's plan, :class:`~cxrsynth.train.privacy.PrivacyPlan`) the plan makes
    the optimizer and the record stream; the ledger is attached after the checkpoint is loaded.
    """
    set_seed(config.seed, device_specific=True)
    preset = get_preset(config.preset)
    unet = build_unet(preset, data.size, vocabulary.num_class_embeds if vocabulary is not None else None)
    optimizer = build_optimizer(config, unet.to(accelerator.device))
    lr_scheduler = build_lr_scheduler(config, optimizer)
    ema = build_ema(config, unet) if accelerator.is_main_process else None
    draw_seed = config.seed
    if privacy is not None:
        draw_seed = draw_secret_seed(accelerator)
    noise_generator = make_noise_generator(draw_seed, accelerator.process_index, accelerator.device)
    if privacy is not None:
        optimizer, stream = privacy.make_private(config, data, accelerator, unet, optimizer, vocabulary,
                                                 noise_generator, draw_seed)
    else:
        # DDP broadcasts rank 0's initial weights, so per-process seeds above do not split the model.
        unet, optimizer = accelerator.prepare(unet, optimizer)
        member_rows = data.rows(TRAIN_SPLIT)
        class_ids = None
        if vocabulary is not None:
            class_ids = vocabulary.encode_training_labels(data.index["labels"].iloc[member_rows].tolist()).numpy()
        stream = MemberImageStream(data.images, member_rows, class_ids, config.seed, config.batch_size,
                                   accelerator.process_index, accelerator.num_processes)
    return TrainingParts(
        config=config,
        accelerator=accelerator,
        unet=unet,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        ema=ema,
        noise_scheduler=build_noise_scheduler(config),
        stream=stream,
        noise_generator=noise_generator,
        vocabulary=vocabulary,
        draw_seed=draw_seed,
    )


def _load_training_data(config: TrainConfig) -> tuple[PreparedData, LabelVocabulary | None]:
    data = load_prepared(config.data)
    member_rows = data.rows(TRAIN_SPLIT)
    if len(member_rows) == 0:
        raise CxrsynthError(f"{config.data} has no '{TRAIN_SPLIT}' images to train on",
                            "prepare the data with a non-zero member fraction")
    check_preset_resolution(get_preset(config.preset), data.size)
    vocabulary = None
    if config.conditional:
        vocabulary = run_vocabulary(config.dp, config.findings, config.max_label_findings, data.meta.get("format"),
                                    data.index["labels"].iloc[member_rows].tolist())
    return data, vocabulary


class _Window:
    """Loss and throughput since the last log record (time spent on side work excluded)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.images = torch.zeros((), device=self.device)
        self.steps = 0
        self.started = time.perf_counter()
        self.excluded = 0.0

    def seconds(self) -> float:
        return max(time.perf_counter() - self.started - self.excluded, 1e-9)


def _log_step(parts: TrainingParts, window: _Window, log: TrainLog | None, progress: tqdm) -> None:
    accelerator = parts.accelerator
    images = accelerator.reduce(window.images, reduction="sum").item()
    loss_sum = accelerator.reduce(window.loss_sum, reduction="sum").item()
    seconds = window.seconds()
    # A DP window may hold no record at all (Poisson sampling): its loss is undefined, not 0.
    loss = loss_sum / images if images else None
    if loss is not None and not math.isfinite(loss):
        raise CxrsynthError(
            f"the training loss became {loss} by step {parts.step}",
            "resume from an earlier checkpoint with a lower --lr, a smaller --max-grad-norm, or "
            "--mixed-precision no",
        )
    record = {
        "step": parts.step,
        "loss": loss,
        "lr": parts.lr_scheduler.get_last_lr()[0],
        "img_per_s": images / seconds,
        "epoch": parts.stream.epoch,
    }
    if parts.privacy is not None and accelerator.is_main_process:
        record["epsilon"] = parts.privacy.epsilon()  # the accountant costs ~0.5 s: only the process that logs
    if accelerator.is_main_process:
        log.append(record)
        postfix = {"loss": "-" if loss is None else f"{loss:.4f}", "img_s": f"{record['img_per_s']:.1f}"}
        if "epsilon" in record:
            postfix["eps"] = f"{record['epsilon']:.3f}"
        progress.set_postfix(postfix)
    if parts.config.log_with:
        accelerator.log({key: value for key, value in record.items() if key != "step" and value is not None},
                        step=parts.step)
    window.reset()


def _side_work(parts: TrainingParts, run_dir: Path, total: int) -> None:
    """Checkpoint and progress grid when due (every process calls it; files come from the main one)."""
    config, accelerator, step = parts.config, parts.accelerator, parts.step
    if step % config.checkpoint_every == 0 or step == total:
        save_checkpoint(run_dir, parts)
        if accelerator.is_main_process:
            prune_checkpoints(run_dir, config.keep_checkpoints)
    if config.progress_every and step % config.progress_every == 0:
        if accelerator.is_main_process:
            write_progress_grid(run_dir, step, ema_unet(parts), parts.noise_scheduler, config.progress_sampler,
                                config.progress_steps, config.progress_images, config.seed, parts.vocabulary)
        accelerator.wait_for_everyone()


def _steps_within_budget(parts: TrainingParts, requested: int) -> int:
    """The steps a DP run may take of ``requested``; says so when the budget cuts the run short."""
    ledger = parts.privacy
    allowed = ledger.allowed_steps(requested)
    if allowed < requested:
        parts.accelerator.print(
            f"DP: {requested} steps would spend more than the target ε = {ledger.target_epsilon} "
            f"(σ = {ledger.noise_multiplier:.4f} was calibrated for {ledger.planned_steps} steps): training stops "
            f"at step {allowed}. Start a new run with a larger --epsilon to train longer.")
    return allowed


def _tracker_config(config: TrainConfig, facts: RunFacts) -> dict:
    flat = {**vars(config), **{f"facts_{k}": v for k, v in vars(facts).items() if k != "versions"}}
    return {key: value for key, value in flat.items() if isinstance(value, (int, float, str, bool))}


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False) -> Path:
    """Train a DDPM on the ``member`` split of ``config.data`` into the run folder ``run_dir``.

    Works unchanged on CPU, one GPU, or several processes started by ``accelerate launch``.

    Args:
        config: the run's settings (see :class:`~cxrsynth.config.TrainConfig`).
        run_dir: the run folder (``config.yaml``, ``train_log.jsonl``, ``checkpoints/``,
            ``progress/``, ``pipeline/``).
        resume: continue the run in ``run_dir`` from its newest checkpoint (a fresh start when it
            has none yet). The result is bit-identical to an uninterrupted run on CPU.

    Returns:
        The ``pipeline/`` folder (a diffusers ``DDPMPipeline`` with the EMA weights).

    Raises:
        CxrsynthError: for invalid settings, unusable data, a preset that does not fit the data,
            an existing run without ``resume``, a resumed run whose data or settings differ,
            a corrupt or unsafe checkpoint (config.yaml is then left as it was), a diverging loss,
            or a run folder another live process is training (``RUN/.cxrsynth.lock``).
    """
    config.validate()
    run_dir = Path(run_dir)
    with run_lock(run_dir, "cxrsynth train"):
        data, vocabulary = _load_training_data(config)
        accelerator = make_accelerator(config, str(run_dir))
        try:
            return _run(config, run_dir, resume, data, vocabulary, accelerator)
        finally:
            _release_accelerate_state(accelerator)


def _release_accelerate_state(accelerator: Accelerator) -> None:
    """Forget Accelerate's process-wide state after a single-process run.

    Accelerate keeps its settings (mixed precision, accumulation) in singletons; without this a
    second ``train()`` in the same Python process with other settings would be refused.
    """
    accelerator.end_training()
    if accelerator.num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _run(config: TrainConfig, run_dir: Path, resume: bool, data: PreparedData,
         vocabulary: LabelVocabulary | None, accelerator: Accelerator) -> Path:
    """The body of :func:`train` once the data is loaded and Accelerate is set up."""
    # Included canaries are trained (and, under DP, counted) like patients; `data` stays the real data,
    # whose fingerprint and counts config.yaml records.
    canaries = prepare_canaries(config, run_dir, resume, data.size, accelerator)
    training_data = with_canaries(data, canaries)
    privacy = None
    if config.dp:
        privacy = privacy_plugin()(config, training_data, TRAIN_SPLIT, accelerator.num_processes)
    parts = build_parts(config, training_data, accelerator, vocabulary, privacy)
    facts = describe_run(config, data, accelerator.num_processes, vocabulary,
                         sum(p.numel() for p in parts.base_unet.parameters()), privacy, accelerator.device)
    check_run_folder(run_dir, config, facts, resume)  # every process: all fail alike, none waits forever
    # Validate, then write: a checkpoint that cannot be loaded (truncated, a pickle, another
    # model) must fail before config.yaml records settings the run never trained with.
    checkpoint = latest_checkpoint(run_dir) if resume else None
    warnings = load_checkpoint(checkpoint, parts) if checkpoint is not None else []
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if canaries is not None:  # before config.yaml: a resumed canary run must find its canaries
            save_canaries(run_dir, canaries)
        save_run_config(run_dir, config, facts)
        if vocabulary is not None:
            vocabulary.save(run_dir)
    accelerator.wait_for_everyone()
    if checkpoint is not None:
        for warning in warnings:
            accelerator.print(f"warning: {warning}")
        accelerator.print(f"resuming {run_dir} from {checkpoint.name}")
    elif resume:
        accelerator.print(f"{run_dir} has no checkpoint yet: starting from step 0")
    total = facts.total_steps
    step_function = optimisation_step
    if privacy is not None:
        privacy.attach_ledger(parts, config, total, accelerator.print)
        step_function = privacy.optimisation_step
        total = _steps_within_budget(parts, total)
    log = TrainLog(run_dir) if accelerator.is_main_process else None
    if log is not None:
        log.truncate_after(parts.step)
    if config.log_with:
        accelerator.init_trackers("cxrsynth", config=_tracker_config(config, facts))

    progress = tqdm(total=total, initial=min(parts.step, total), desc="train", unit="step", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)
    parts.unet.train()
    window = _Window(accelerator.device)
    while parts.step < total:
        loss_sum, images = step_function(parts)
        window.loss_sum += loss_sum
        window.images += images
        window.steps += 1
        progress.update(1)
        if parts.step % config.log_every == 0 or parts.step == total:
            _log_step(parts, window, log, progress)
        side_started = time.perf_counter()
        _side_work(parts, run_dir, total)
        window.excluded += time.perf_counter() - side_started
    progress.close()

    pipeline_dir = run_dir / PIPELINE_DIR
    if accelerator.is_main_process:
        export_pipeline(run_dir, ema_unet(parts), parts.noise_scheduler, vocabulary)
        if privacy is not None:
            report = privacy.write_report(run_dir, parts.privacy, stopped_early=total < facts.total_steps)
            accelerator.print(f"DP guarantee: ({report['epsilon']:.3f}, {report['delta']:.3g})-DP per "
                              f"{report['unit']} after {report['steps']} steps ({run_dir / PRIVACY_FILE})")
    accelerator.wait_for_everyone()
    return pipeline_dir
