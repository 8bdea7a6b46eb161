"""The objects a training run is made of, and how each is built from a :class:`TrainConfig`.

One builder per object keeps the recipe readable and lets other trainers (a DP-SGD variant, the
benchmark) assemble the same model, optimizer and schedules.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from cxrsynth.config import BETA_SCHEDULES, TrainConfig
from cxrsynth.errors import CxrsynthError
from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.train.data_stream import BatchSource

EMA_INV_GAMMA = 1.0


@dataclass
class TrainingParts:
    """Everything a training step reads or changes; everything a checkpoint saves.

    Attributes:
        config: the run's settings.
        accelerator: the Accelerate handle (device, processes, mixed precision, accumulation).
        unet: the trained UNet as prepared by Accelerate (possibly wrapped in DDP).
        optimizer: the prepared AdamW optimizer.
        lr_scheduler: warm-up learning-rate schedule, stepped once per optimizer step.
        ema: EMA of the weights (main process only; None elsewhere).
        noise_scheduler: the 1000-step DDPM training scheduler.
        stream: the source of micro-batches (in a private run, the plan's record stream).
        noise_generator: generator of noise, timesteps and label dropout on this process.
        draw_seed: seed of the noise generator and the data order: ``config.seed``, or in a DP
            run a secret drawn from OS entropy, kept only in the (private) checkpoints.
        vocabulary: label-set vocabulary of a conditional run, else None.
        step: optimizer steps completed.
        extra_state: JSON-safe entries other trainers keep in checkpoints (e.g. a privacy accountant).
        privacy: the privacy ledger of a private run (:class:`cxrsynth.train.privacy.PrivacyLedger`), else None.
    """

    config: TrainConfig
    accelerator: Accelerator
    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMAModel | None
    noise_scheduler: DDPMScheduler
    stream: BatchSource
    noise_generator: torch.Generator
    vocabulary: LabelVocabulary | None
    draw_seed: int = 0
    step: int = 0
    extra_state: dict[str, Any] = field(default_factory=dict)
    privacy: Any = None

    @property
    def base_unet(self) -> UNet2DModel:
        """The UNet without Accelerate/DDP wrappers (for saving and EMA)."""
        return self.accelerator.unwrap_model(self.unet)


def make_accelerator(config: TrainConfig, run_dir: str) -> Accelerator:
    """An ``Accelerator`` for the run: mixed precision, gradient accumulation, tracker, project folder.

    Raises:
        CxrsynthError: for ``fp16`` without a GPU, or ``--log-with tensorboard`` without tensorboard.
    """
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise CxrsynthError(
            "--mixed-precision fp16 needs a CUDA GPU, and none is available",
            "use --mixed-precision bf16 (CPU and recent GPUs) or no",
        )
    if config.log_with == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise CxrsynthError(
            "--log-with tensorboard needs the tensorboard package, which is not installed",
            "pip install tensorboard, or leave out --log-with (train_log.jsonl is always written)",
        )
    # Without cpu=True, accelerate treats each process of a multi-process launch on a machine with
    # no GPU as a lone process (each would train and write alone); with it, they join a gloo group.
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with=config.log_with,
        project_config=ProjectConfiguration(project_dir=run_dir, logging_dir=f"{run_dir}/logs"),
    )


def build_noise_scheduler(config: TrainConfig) -> DDPMScheduler:
    """The training ``DDPMScheduler`` (``num_train_timesteps``, chosen β schedule and prediction type)."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=BETA_SCHEDULES[config.beta_schedule],
        prediction_type=config.prediction_type,
    )


def build_optimizer(config: TrainConfig, unet: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the UNet's parameters, using the fused kernel (CPU and CUDA) where torch has it."""
    return torch.optim.AdamW(
        unet.parameters(),
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
        fused=True,
    )


def build_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then the constant peak ``lr`` (as in DDPM)."""
    return get_scheduler("constant_with_warmup", optimizer=optimizer, num_warmup_steps=config.warmup_steps)


def build_ema(config: TrainConfig, unet: UNet2DModel) -> EMAModel:
    """EMA of ``unet``'s weights with warm-up ``1 − (1 + step)^−power``, capped at ``ema_decay``."""
    return EMAModel(
        unet.parameters(),
        decay=config.ema_decay,
        use_ema_warmup=True,
        inv_gamma=EMA_INV_GAMMA,
        power=config.ema_power,
        foreach=True,
        model_cls=UNet2DModel,
        model_config=unet.config,
    )


def derived_seed(seed: int, *path: int) -> int:
    """A 63-bit seed for the stream named by ``path`` under ``seed`` (e.g. noise of process r)."""
    return int(np.random.SeedSequence([int(seed), *map(int, path)]).generate_state(1, dtype=np.uint64)[0] >> 1)


NOISE_STREAM = 1


def draw_secret_seed(accelerator: Accelerator) -> int:
    """A 63-bit seed from ``os.urandom`` on the main process, shared with every process.

    A DP run seeds its Gaussian noise, its Poisson sampling and its per-record (timestep, noise,
    label-dropout) draws from this, never from ``config.seed``: whoever knows the seed of the
    noise and the other records could subtract the noise and decide membership whatever σ was.
    Canaries are drawn from one too. The seed is kept only in the run's checkpoints (private), so
    ``--resume`` continues exactly.
    """
    seed = [int.from_bytes(os.urandom(8), "little") >> 1]
    if accelerator.num_processes > 1:
        broadcast_object_list(seed, from_process=0)
    return int(seed[0])


def make_noise_generator(seed: int, process_index: int, device: torch.device) -> torch.Generator:
    """This process's generator of noise, timesteps and label dropout (on the training device)."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, NOISE_STREAM, process_index))


def ema_unet(parts: TrainingParts) -> UNet2DModel:
    """A separate float32 UNet carrying the EMA weights, in eval mode on the training device.

    Raises:
        RuntimeError: on a process without the EMA (only the main process has it).
    """
    if parts.ema is None:
        raise RuntimeError("the EMA weights live on the main process only")
    model = UNet2DModel.from_config(parts.base_unet.config)
    parts.ema.copy_to(model.parameters())
    return model.to(parts.accelerator.device).eval()
