"""Generate synthetic radiographs from a trained run: PNG or DICOM files plus ``manifest.csv``.

Guarantees:

- **Image i is a function of (seed, i)** (and the model and settings): its noise, its stochastic
  steps and, with ``--label-mix from-data``, its label set come from streams seeded by the pair.
  Any image can be regenerated alone, in any batch, on any number of processes.
- **Resumable**: files are written atomically and an image whose file exists is not generated
  again. ``sampling.json`` in the output folder records the settings that made it; a
  rerun with different settings into the same folder is refused instead of mixing images.
- **Sharded**: under ``accelerate launch`` process ``r`` of ``w`` generates the ids ``i`` with
  ``i % w == r``; the main process writes the manifest once every process is done.
- **Nothing about real patients** reaches the output: files are named by index, the manifest has
  only ``file, index, seed, sampler, steps, label, guidance``, DICOM files carry a synthetic
  placeholder identity (:mod:`cxrsynth.dicom_export`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from cxrsynth.data.dataset import to_uint8
from cxrsynth.dicom_export import SyntheticSeries, new_synthetic_series, write_synthetic_dicom
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_parent
from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.model.samplers import DEFAULT_STEPS, SAMPLERS, check_steps, sample_batch

FORMATS: tuple[str, ...] = ("png", "dicom")
FILE_SUFFIX: dict[str, str] = {"png": ".png", "dicom": ".dcm"}
MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("file", "index", "seed", "sampler", "steps", "label", "guidance")
SETTINGS_FILE = "sampling.json"
CANARY_NOTE = ("audit run: the model was trained with canary patients (cxrsynth train --canaries); "
               "its samples are for measuring the run, not for release")
LABEL_MIX_FROM_DATA = "from-data"
LABEL_MIX_UNIFORM = "uniform"
LABEL_MIXES: tuple[str, ...] = (LABEL_MIX_FROM_DATA, LABEL_MIX_UNIFORM)
DEFAULT_GUIDANCE = 2.0
"""Classifier-free guidance weight used for conditional runs when none is given."""

_LABEL_STREAM = 1
"""Extra seed word for label draws, so they are independent of the image's noise stream."""


# ---------------------------------------------------------------------------------------------
# Loading the model
# ---------------------------------------------------------------------------------------------


@dataclass
class SamplingModel:
    """A trained model ready to sample from.

    Attributes:
        unet: the denoiser (eval mode).
        scheduler: the training noise scheduler.
        vocabulary: label-set vocabulary of a class-conditional model; None when unconditional.
        fingerprint: sha256 over the UNet weights and scheduler config (identifies the model).
    """

    unet: UNet2DModel
    scheduler: DDPMScheduler
    vocabulary: LabelVocabulary | None
    fingerprint: str


def resolve_pipeline_dir(run: str | Path) -> Path:
    """The diffusers pipeline folder of ``run`` (``RUN/pipeline``, or ``run`` itself if it is one).

    Raises:
        CxrsynthError: when neither holds a ``model_index.json``.
    """
    run = Path(run)
    for candidate in (run / "pipeline", run):
        if (candidate / "model_index.json").is_file():
            return candidate
    raise CxrsynthError(
        f"no trained model in {run}: expected {run / 'pipeline' / 'model_index.json'}",
        "pass the run folder of a finished `cxrsynth train` (it writes RUN/pipeline at the end)",
    )


def _safetensors_files(unet_dir: Path) -> list[Path]:
    weights = sorted(unet_dir.glob("*.safetensors"))
    if weights:
        return weights
    pickled = sorted(p.name for p in unet_dir.glob("*.bin")) + sorted(p.name for p in unet_dir.glob("*.pt*"))
    if pickled:
        raise CxrsynthError(
            f"{unet_dir} holds only pickled weights ({', '.join(pickled)}); cxrsynth loads safetensors only,"
            " because unpickling a file can run arbitrary code",
            "convert the weights to safetensors in a trusted environment "
            "(UNet2DModel.from_pretrained(...).save_pretrained(folder, safe_serialization=True))",
        )
    raise CxrsynthError(f"no UNet weights in {unet_dir}", "re-run `cxrsynth train` to write RUN/pipeline")


def _model_fingerprint(weights: Sequence[Path], scheduler_config: Path) -> str:
    digest = hashlib.sha256()
    for path in [*weights, scheduler_config]:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _check_vocabulary(unet: UNet2DModel, vocabulary: LabelVocabulary | None, pipeline_dir: Path) -> None:
    embeds = unet.config.num_class_embeds
    if vocabulary is None and embeds is not None:
        raise CxrsynthError(
            f"{pipeline_dir} holds a class-conditional UNet ({embeds} classes) but no label_vocabulary.json",
            "copy label_vocabulary.json from the training run into the pipeline folder",
        )
    if vocabulary is not None and embeds != vocabulary.num_class_embeds:
        raise CxrsynthError(
            f"label_vocabulary.json in {pipeline_dir} has {vocabulary.num_class_embeds} classes (with null) "
            f"but the UNet has num_class_embeds={embeds}",
            "use the label_vocabulary.json written by the same training run",
        )


def load_sampling_model(run: str | Path, device: torch.device | str = "cpu") -> SamplingModel:
    """Load the UNet (safetensors only), training scheduler and label vocabulary of a run.

    Args:
        run: run folder (or its ``pipeline`` folder).
        device: where to put the UNet.

    Returns:
        The :class:`SamplingModel`, UNet in eval mode on ``device``.

    Raises:
        CxrsynthError: for a missing or incomplete pipeline, pickled weights, a UNet that is not
            single-channel, or a vocabulary that does not match the UNet.
    """
    pipeline_dir = resolve_pipeline_dir(run)
    weights = _safetensors_files(pipeline_dir / "unet")
    scheduler_config = pipeline_dir / "scheduler" / "scheduler_config.json"
    if not scheduler_config.is_file():
        raise CxrsynthError(f"missing {scheduler_config}", "re-run `cxrsynth train` to write RUN/pipeline")
    try:
        unet = UNet2DModel.from_pretrained(pipeline_dir, subfolder="unet", use_safetensors=True)
        scheduler = DDPMScheduler.from_pretrained(pipeline_dir, subfolder="scheduler")
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise CxrsynthError(
            f"cannot load the model in {pipeline_dir}: {exc}", "re-run `cxrsynth train` to write RUN/pipeline"
        ) from exc
    if unet.config.in_channels != 1 or unet.config.out_channels != 1:
        raise CxrsynthError(
            f"the UNet in {pipeline_dir} has {unet.config.in_channels} input / {unet.config.out_channels} output "
            "channels; cxrsynth generates single-channel radiographs",
            "sample from a model trained by `cxrsynth train`",
        )
    vocabulary = LabelVocabulary.load(pipeline_dir)
    _check_vocabulary(unet, vocabulary, pipeline_dir)
    unet.to(device).eval().requires_grad_(False)
    return SamplingModel(unet, scheduler, vocabulary, _model_fingerprint(weights, scheduler_config))


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelPlan:
    """Which class each image index gets.

    Attributes:
        vocabulary: the model's vocabulary; None for an unconditional model (no labels).
        fixed_class: class id of ``--label`` for every image, or None to draw from ``mix``.
        seed: run seed (the draw for image ``i`` is seeded by ``(seed, i)``).
        mix: ``from-data`` (training frequencies) or ``uniform`` (every label set alike), when
            ``fixed_class`` is None.
    """

    vocabulary: LabelVocabulary | None
    fixed_class: int | None
    seed: int
    mix: str = LABEL_MIX_FROM_DATA

    @property
    def description(self) -> str:
        """How labels are chosen, as recorded in ``sampling.json``."""
        if self.vocabulary is None:
            return "unconditional"
        if self.fixed_class is None:
            return self.mix
        return f"label:{self.vocabulary.label_sets[self.fixed_class]}"

    def class_id(self, index: int) -> int | None:
        """Class id of image ``index`` (None for an unconditional model)."""
        if self.vocabulary is None:
            return None
        if self.fixed_class is not None:
            return self.fixed_class
        rng = np.random.default_rng([self.seed, int(index), _LABEL_STREAM])
        if self.mix == LABEL_MIX_UNIFORM:
            return int(self.vocabulary.sample_uniform(1, rng)[0])
        return int(self.vocabulary.sample_from_data(1, rng)[0])

    def class_ids(self, indices: Sequence[int]) -> torch.Tensor | None:
        """Class ids of ``indices`` as an int64 tensor; None for an unconditional model."""
        if self.vocabulary is None:
            return None
        return torch.tensor([self.class_id(i) for i in indices], dtype=torch.long)

    def label_text(self, index: int) -> str:
        """The label set of image ``index`` as written to the manifest ('' when unconditional)."""
        class_id = self.class_id(index)
        return "" if class_id is None or self.vocabulary is None else self.vocabulary.label_sets[class_id]


def plan_labels(
    vocabulary: LabelVocabulary | None, label: str | None, label_mix: str | None, seed: int
) -> LabelPlan:
    """Check ``--label`` / ``--label-mix`` against the model and decide each image's class.

    A conditional model given neither draws labels with the training frequencies (from-data), or
    uniformly over its label sets when it stores no frequencies (a DP run's schema vocabulary).

    Raises:
        CxrsynthError: a label option on an unconditional model, both options at once, an unknown
            ``label_mix``, ``from-data`` on a model without training counts, or a label set the
            model does not know.
    """
    if label is not None and label_mix is not None:
        raise CxrsynthError("--label and --label-mix were both given", "use one of them")
    if label_mix is not None and label_mix not in LABEL_MIXES:
        raise CxrsynthError(f"unknown --label-mix {label_mix!r}", f"use --label-mix {' or '.join(LABEL_MIXES)}")
    if vocabulary is None:
        if label is not None or label_mix is not None:
            option = "--label" if label is not None else "--label-mix"
            raise CxrsynthError(
                f"{option} was given but this model is unconditional (it was trained without labels)",
                "drop the option, or sample from a run trained with `cxrsynth train --conditional`",
            )
        return LabelPlan(None, None, seed)
    fixed = int(vocabulary.encode([label])[0]) if label is not None else None
    if label_mix is None:
        label_mix = LABEL_MIX_FROM_DATA if vocabulary.counts is not None else LABEL_MIX_UNIFORM
    if fixed is None and label_mix == LABEL_MIX_FROM_DATA:
        vocabulary.require_counts()
    return LabelPlan(vocabulary, fixed, seed, label_mix)


def resolve_guidance(vocabulary: LabelVocabulary | None, guidance_scale: float | None) -> float:
    """The guidance weight to use: ``DEFAULT_GUIDANCE`` for conditional models unless given, 1 otherwise.

    Raises:
        CxrsynthError: a guidance other than 1 for an unconditional model, or a negative one.
    """
    if vocabulary is None:
        if guidance_scale is not None and guidance_scale != 1.0:
            raise CxrsynthError(
                f"--guidance-scale {guidance_scale:g} needs a class-conditional model; this one is unconditional",
                "drop --guidance-scale",
            )
        return 1.0
    scale = DEFAULT_GUIDANCE if guidance_scale is None else float(guidance_scale)
    if scale < 0 or not np.isfinite(scale):
        raise CxrsynthError(f"--guidance-scale {scale:g} is invalid", "use a value >= 0 (1 = no guidance)")
    return scale


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


def read_settings_file(path: Path) -> dict:
    """The ``sampling.json`` of a samples folder.

    Raises:
        CxrsynthError: when it is unreadable, not UTF-8 JSON, or not an object.
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        record, problem = None, f"{type(exc).__name__}: {exc}"
    else:
        problem = "not a JSON object"
    if not isinstance(record, dict):
        raise CxrsynthError(
            f"{path} is corrupt ({problem}), so the settings of the samples beside it are unknown",
            f"delete {path.parent} (or sample into another --out) and run `cxrsynth sample` again",
        )
    return record


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
        path, record = self.out / SETTINGS_FILE, self.settings()
        if path.is_file():
            existing = read_settings_file(path)
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
                f"{self.out} holds sample files but no {SETTINGS_FILE}, so their settings are unknown",
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
        return SyntheticSeries.from_json(read_settings_file(self.out / SETTINGS_FILE)["dicom_series"])

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
        return atomic_write_text(self.out / MANIFEST_FILE, buffer.getvalue())


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
            the model, or an output folder made with other settings.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    _check_request(num_images, sampler, batch_size, seed, image_format)
    steps = DEFAULT_STEPS[sampler] if steps is None else int(steps)
    # Without cpu=True, accelerate ignores a multi-process launch on a machine with no GPU
    # (every process would think it is alone and generate every image); with it, gloo is used.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    model = load_sampling_model(run, _resolve_device(device, state.device))
    labels = plan_labels(model.vocabulary, label, label_mix, seed)
    guidance = resolve_guidance(model.vocabulary, guidance_scale)
    check_steps(sampler, steps, int(model.scheduler.config.num_train_timesteps))

    out_dir = Path(out) if out is not None else Path(run) / "samples"
    check_output_parent(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from cxrsynth.train.canaries import run_canary_count

    canaries = run_canary_count(run)
    if canaries and state.is_main_process:
        warnings.warn(f"{run}: {CANARY_NOTE} ({canaries} canaries); noted in {SETTINGS_FILE}", stacklevel=2)
    job = SamplingJob(model, out_dir, sampler, steps, seed, image_format, labels, guidance, canaries)
    job.check_or_record_settings(state.is_main_process)
    state.wait_for_everyone()
    series = job.dicom_series()

    report = SampleReport(out_dir, state.process_index, state.num_processes)
    pending = []
    for index in shard_indices(num_images, state.process_index, state.num_processes):
        (report.skipped if job.path(index).is_file() else pending).append(index)

    bar = tqdm(total=len(pending), desc=f"sampling ({sampler}, {steps} steps)", unit="img",
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
