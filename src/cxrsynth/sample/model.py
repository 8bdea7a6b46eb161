"""Load a trained run's model for sampling: the UNet (safetensors only), its scheduler and label vocabulary."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from diffusers import DDPMScheduler, UNet2DModel

from cxrsynth.errors import CxrsynthError
from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.runfolder import resolve_pipeline_dir


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
