"""Generate a run's images into a samples folder: the job, its files and manifest, sharded generation.

Guarantees (of :func:`generate_samples`):

- **Image i is a function of (seed, i)** (and the model and settings): its noise, its stochastic
  steps and, with ``--label-mix from-data``, its label set come from streams seeded by the pair.
  Any image can be regenerated alone, in any batch, on any number of processes.
- **Resumable**: files are written atomically and an image whose file exists is not generated
  again. ``sampling.json`` in the output folder records the settings that made it; a
  rerun with different settings into the same folder is refused instead of mixing images.
- **Sharded**: under ``accelerate launch`` process ``r`` of ``w`` generates the ids ``i`` with
  ``i % w == r``; the main process writes the manifest once every process is done.
- **One writer**: the run folder (or an ``--out`` outside it) is locked while sampling
  (:func:`cxrsynth.runfolder.run_lock`); a second command on it is refused with the holder's pid.
- **Nothing about real patients** reaches the output: files are named by index, the manifest has
  only ``file, index, seed, sampler, steps, label, guidance``, DICOM files carry a synthetic
  placeholder identity (:mod:`cxrsynth.dicom_export`).
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from accelerate import PartialState
from PIL import Image
from tqdm.auto import tqdm

from cxrsynth.data.dataset import to_uint8
from cxrsynth.dicom_export import SyntheticSeries, new_synthetic_series, write_synthetic_dicom
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_parent
from cxrsynth.model.samplers import DEFAULT_STEPS, SAMPLERS, check_steps, sample_batch
from cxrsynth.runfolder import SAMPLE_MANIFEST, SAMPLE_SETTINGS, SAMPLES_FOLDER, read_sample_settings, run_lock
from cxrsynth.sample.labels import LabelPlan, plan_labels, resolve_guidance
from cxrsynth.sample.model import SamplingModel, load_sampling_model
from cxrsynth.train.canaries import run_canary_count

FORMATS: tuple[str, ...] = ("png", "dicom")
FILE_SUFFIX: dict[str, str] = {"png": ".png", "dicom": ".dcm"}
MANIFEST_COLUMNS: tuple[str, ...] = ("file", "index", "seed", "sampler", "steps", "label", "guidance")
CANARY_NOTE = ("audit run: the model was trained with canary patients (cxrsynth train --canaries); "
               "its samples are for measuring the run, not for release")


# ---------------------------------------------------------------------------------------------
# Output folder: settings, files, manifest
# ---------------------------------------------------------------------------------------------


def sample_file_name(index: int, image_format: str) -> str:
    """File name of image ``index`` (``sample_000042.png`` / ``.dcm``)."""
    return f"sample_{int(index):06d}{FILE_SUFFIX[image_format]}"


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class SamplingJob:
    """Everything that fixes the images of one output folder (all but their number).

    Attributes:
        model: the loaded model.
        out: output folder.
        sampler, steps, seed: sampling settings.
        image_format: ``png`` or ``dicom``.
        labels: each image's class.
        guidance: classifier-free guidance weight (1 for unconditional models).
        canaries: canary patients the run was trained with (:mod:`cxrsynth.train.canaries`); 0 for none.
    """

    model: SamplingModel
    out: Path
    sampler: str
    steps: int
    seed: int
    image_format: str
    labels: LabelPlan
    guidance: float
    canaries: int = 0

    def path(self, index: int) -> Path:
        """Where image ``index`` is written."""
        return self.out / sample_file_name(index, self.image_format)

    def settings(self) -> dict:
        """The settings recorded in ``sampling.json`` and compared on every rerun."""
        record = {
            "model_sha256": self.model.fingerprint,
            "sampler": self.sampler,
            "steps": self.steps,
            "seed": self.seed,
            "format": self.image_format,
            "labels": self.labels.description,
            "guidance": self.guidance,
        }
        if self.canaries:  # an audit run's samples must say so wherever they go
            record["canaries"] = self.canaries
            record["note"] = CANARY_NOTE
        return record

    def check_or_record_settings(self, is_main: bool) -> None:
        """Refuse an output folder made with other settings; the main process records new ones.

        Raises:
            CxrsynthError: when ``sampling.json`` differs, or sample files exist without it.
        """
        path, record = self.out / SAMPLE_SETTINGS, self.settings()
        if path.is_file():
            existing = read_sample_settings(path)
            different = sorted(key for key in record if existing.get(key) != record[key])
            if different:
                details = ", ".join(f"{key}: {existing.get(key)!r} -> {record[key]!r}" for key in different)
                raise CxrsynthError(
                    f"{self.out} holds samples made with other settings ({details})",
                    "use another --out folder, repeat the original settings, or delete the folder",
                )
            return
        if any(self.out.glob("sample_*")):
            raise CxrsynthError(
                f"{self.out} holds sample files but no {SAMPLE_SETTINGS}, so their settings are unknown",
                "use another --out folder or delete the old files",
            )
        if is_main:
            if self.image_format == "dicom":
                record["dicom_series"] = new_synthetic_series().to_json()
            atomic_write_json(path, record)

    def dicom_series(self) -> SyntheticSeries | None:
        """The DICOM series recorded for this folder (None for PNG output)."""
        if self.image_format != "dicom":
            return None
        return SyntheticSeries.from_json(read_sample_settings(self.out / SAMPLE_SETTINGS)["dicom_series"])

    def generate(self, indices: Sequence[int], series: SyntheticSeries | None) -> None:
        """Generate images ``indices`` as one batch and write each file atomically."""
        vocabulary = self.model.vocabulary
        images = sample_batch(
            self.model.unet, self.model.scheduler, self.sampler, self.steps, indices, self.seed,
            class_labels=self.labels.class_ids(indices), guidance_scale=self.guidance,
            null_class=vocabulary.null_class if vocabulary is not None else None,
        )
        for index, pixels in zip(indices, to_uint8(images)[:, 0]):
            if series is None:
                atomic_write_bytes(self.path(index), _png_bytes(pixels))
            else:
                comment = (f"index={index} seed={self.seed} sampler={self.sampler} steps={self.steps} "
                           f"label={self.labels.label_text(index) or '-'}")
                write_synthetic_dicom(self.path(index), pixels, series, instance_number=index + 1, comment=comment)

    def write_manifest(self, num_images: int) -> Path:
        """Write ``manifest.csv`` (one row per image id ``0..num_images-1``) atomically.

        Raises:
            CxrsynthError: when an image file of the range is missing (a process failed).
        """
        missing = [i for i in range(num_images) if not self.path(i).is_file()]
        if missing:
            raise CxrsynthError(
                f"{len(missing)} of {num_images} images are missing in {self.out} (first: {self.path(missing[0]).name})",
                "re-run the same command: it generates only the missing images",
            )
        guidance = "" if self.labels.vocabulary is None else f"{self.guidance:g}"
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for index in range(num_images):
            writer.writerow([self.path(index).name, index, self.seed, self.sampler, self.steps,
                             self.labels.label_text(index), guidance])
        return atomic_write_text(self.out / SAMPLE_MANIFEST, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


@dataclass
class SampleReport:
    """What one process did.

    Attributes:
        out: output folder.
        process_index: this process's rank; num_processes: the world size.
        written: ids this process generated now; skipped: ids of its share already present.
        manifest: path of manifest.csv (main process only; None elsewhere).
    """

    out: Path
    process_index: int
    num_processes: int
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    manifest: Path | None = None


def shard_indices(num_images: int, process_index: int, num_processes: int) -> list[int]:
    """Ids ``i`` in ``0..num_images-1`` with ``i % num_processes == process_index``."""
    return list(range(process_index, num_images, num_processes))


def _resolve_device(device: str, state_device: torch.device) -> torch.device:
    if device == "auto":
        return state_device
    if device == "cuda":
        if not torch.cuda.is_available():
            raise CxrsynthError("--device cuda was requested but CUDA is not available", "use --device cpu or auto")
        # Under `accelerate launch` each process owns its own GPU.
        return state_device if state_device.type == "cuda" else torch.device("cuda")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise CxrsynthError(f"unknown --device {device!r}", "use auto, cpu, cuda or cuda:N") from exc


def _check_request(num_images: int, sampler: str, batch_size: int, seed: int, image_format: str) -> None:
    if num_images < 1:
        raise CxrsynthError(f"--num-images must be >= 1, got {num_images}")
    if batch_size < 1:
        raise CxrsynthError(f"--batch-size must be >= 1, got {batch_size}")
    if seed < 0:
        raise CxrsynthError(f"--seed must be >= 0, got {seed}")
    if sampler not in SAMPLERS:
        raise CxrsynthError(f"unknown sampler {sampler!r}", f"use one of: {', '.join(SAMPLERS)}")
    if image_format not in FORMATS:
        raise CxrsynthError(f"unknown format {image_format!r}", f"use one of: {', '.join(FORMATS)}")


def generate_samples(
    run: str | Path,
    num_images: int,
    *,
    sampler: str = "ddpm",
    steps: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    out: str | Path | None = None,
    image_format: str = "png",
    label: str | None = None,
    label_mix: str | None = None,
    guidance_scale: float | None = None,
    device: str = "auto",
    progress: bool = True,
) -> SampleReport:
    """Generate images ``0..num_images-1`` of a run into ``out`` (resumable, sharded, atomic).

    Under ``accelerate launch`` every process calls this with the same arguments; each generates
    its share and the main process writes ``manifest.csv`` when all are done.

    Args:
        run: run folder (with ``pipeline/``) or a pipeline folder.
        num_images: how many images (ids 0..num_images-1).
        sampler: ``ddpm``, ``ddim`` or ``dpmsolver``.
        steps: denoising steps; default per sampler (:data:`DEFAULT_STEPS`).
        batch_size: images per forward pass (per process).
        seed: run seed; image ``i`` is fixed by ``(seed, i)``.
        out: output folder; default ``RUN/samples``.
        image_format: ``png`` or ``dicom``.
        label: one label set (``"Cardiomegaly|Effusion"``, ``"No Finding"``) for every image
            (conditional models only).
        label_mix: ``"from-data"``: each image's label set drawn with the training frequencies
            (the default for conditional models when ``label`` is not given).
        guidance_scale: classifier-free guidance weight (conditional models; default 2.0).
        device: ``auto`` (the process's accelerator, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        progress: show a progress bar (main process only).

    Returns:
        The :class:`SampleReport` of this process.

    Raises:
        CxrsynthError: for invalid options, a missing/unsafe model, label options that do not fit
            the model, an output folder made with other settings, or a run (or output) folder
            another live process holds (``.cxrsynth.lock``; an evaluate of this process may hold it).
    """
    _check_request(num_images, sampler, batch_size, seed, image_format)
    steps = DEFAULT_STEPS[sampler] if steps is None else int(steps)
    # Without cpu=True, accelerate ignores a multi-process launch on a machine with no GPU
    # (every process would think it is alone and generate every image); with it, gloo is used.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    model = load_sampling_model(run, _resolve_device(device, state.device))
    labels = plan_labels(model.vocabulary, label, label_mix, seed)
    guidance = resolve_guidance(model.vocabulary, guidance_scale)
    check_steps(sampler, steps, int(model.scheduler.config.num_train_timesteps))

    out_dir = Path(out) if out is not None else Path(run) / SAMPLES_FOLDER
    check_output_parent(out_dir)
    with run_lock(_lock_folder(Path(run), out_dir), "cxrsynth sample"):
        out_dir.mkdir(parents=True, exist_ok=True)
        canaries = run_canary_count(run)
        if canaries and state.is_main_process:
            warnings.warn(f"{run}: {CANARY_NOTE} ({canaries} canaries); noted in {SAMPLE_SETTINGS}", stacklevel=2)
        job = SamplingJob(model, out_dir, sampler, steps, seed, image_format, labels, guidance, canaries)
        return _run_job(job, state, num_images, batch_size, progress)


def _lock_folder(run: Path, out_dir: Path) -> Path:
    """The folder whose lock a sampling job holds: the run when the samples go inside it, else the output folder."""
    return run if out_dir.resolve().is_relative_to(run.resolve()) else out_dir


def _run_job(job: SamplingJob, state: PartialState, num_images: int, batch_size: int, progress: bool) -> SampleReport:
    """Generate this process's missing share of ``0..num_images-1``; the main process writes the manifest."""
    job.check_or_record_settings(state.is_main_process)
    state.wait_for_everyone()
    series = job.dicom_series()

    report = SampleReport(job.out, state.process_index, state.num_processes)
    pending = []
    for index in shard_indices(num_images, state.process_index, state.num_processes):
        (report.skipped if job.path(index).is_file() else pending).append(index)

    bar = tqdm(total=len(pending), desc=f"sampling ({job.sampler}, {job.steps} steps)", unit="img",
               disable=not (progress and state.is_main_process))
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        job.generate(batch, series)
        report.written.extend(batch)
        bar.update(len(batch))
    bar.close()

    state.wait_for_everyone()
    if state.is_main_process:
        report.manifest = job.write_manifest(num_images)
    return report
