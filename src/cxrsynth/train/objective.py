"""The DDPM training objective, per example: MSE of the ε (or v) prediction at a random timestep,
optionally min-SNR-γ weighted (:mod:`cxrsynth.model.prediction`).

Kept apart from the optimisation step so that a differentially private trainer can reuse it:
DP-SGD needs one loss per record (to clip per-record gradients), and noise multiplicity needs
several (timestep, noise) draws of the same record averaged before clipping. Both are built from
:func:`draw_diffusion_noise` and :func:`per_example_denoising_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from cxrsynth.model.prediction import loss_weights, training_target


def draw_diffusion_noise(
    clean: torch.Tensor, num_train_timesteps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise like ``clean`` and one uniform timestep per example, from ``generator``.

    Args:
        clean: the clean images B×C×S×S (on the generator's device).
        num_train_timesteps: timesteps are drawn from ``[0, num_train_timesteps)``.
        generator: the run's noise generator (its state is checkpointed).

    Returns:
        ``(noise, timesteps)``: float tensor shaped like ``clean``, int64 tensor (B,).
    """
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    timesteps = torch.randint(
        0, num_train_timesteps, (clean.shape[0],), generator=generator, device=clean.device, dtype=torch.long
    )
    return noise, timesteps


def drop_labels(
    class_ids: torch.Tensor, null_class: int, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """Replace each class id by ``null_class`` with ``probability`` (classifier-free guidance training)."""
    drop = torch.rand(class_ids.shape, generator=generator, device=class_ids.device) < probability
    return torch.where(drop, torch.full_like(class_ids, null_class), class_ids)


def per_example_denoising_loss(
    unet: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Mean squared error of the UNet's prediction (ε or v), one value per example.

    Args:
        unet: the UNet (possibly wrapped by Accelerate / DDP).
        noise_scheduler: the training DDPM scheduler (defines ᾱ_t and the prediction type).
        clean: clean images B×C×S×S in [-1, 1].
        noise: the noise added (same shape).
        timesteps: int64 timesteps (B,).
        class_labels: class ids (B,) for a conditional UNet, else None.
        snr_gamma: min-SNR-γ weighting of each example's loss; None for the plain MSE.

    Returns:
        Float32 tensor (B,): per-example (weighted) loss, averaged over pixels.
    """
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    prediction = unet(noisy, timesteps, class_labels=class_labels, return_dict=False)[0]
    target = training_target(noise_scheduler, clean, noise, timesteps)
    losses = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    weights = loss_weights(noise_scheduler, timesteps, snr_gamma)
    return losses if weights is None else losses * weights
