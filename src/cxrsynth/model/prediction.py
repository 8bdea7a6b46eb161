"""What the UNet predicts and how its loss is weighted: ε or v prediction, min-SNR-γ weights.

The prediction type lives in the training scheduler's config (``prediction_type``), so a plain
``diffusers.DDPMPipeline`` samples an exported v-prediction model correctly, and every reader
of the model (training, DP training, white-box attacks) takes it from the same place:

* ``epsilon``: the UNet predicts the noise ε (Ho et al. 2020);
* ``v_prediction``: it predicts v = √ᾱ_t ε − √(1 − ᾱ_t) x₀ (Salimans & Ho 2022), diffusers'
  ``DDPMScheduler.get_velocity``.

Min-SNR-γ (Hang et al. 2023) weights each example's MSE by min(SNR_t, γ)/SNR_t for ε-prediction
and min(SNR_t, γ)/(SNR_t + 1) for v-prediction, SNR_t = ᾱ_t/(1 − ᾱ_t), as in diffusers'
training examples (``diffusers.training_utils.compute_snr``).
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")


def prediction_type(scheduler: DDPMScheduler) -> str:
    """The scheduler's ``prediction_type`` (``epsilon`` or ``v_prediction``).

    Raises:
        ValueError: for another prediction type (e.g. ``sample``), which cxrsynth does not train.
    """
    kind = str(scheduler.config.get("prediction_type", "epsilon"))
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {kind!r} is not supported; expected one of {PREDICTION_TYPES}")
    return kind


def training_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """The regression target of the UNet: ``noise`` (ε) or the velocity v, shaped like ``clean``."""
    if prediction_type(scheduler) == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    return noise


def epsilon_from_output(scheduler: DDPMScheduler, output: torch.Tensor, noisy: torch.Tensor,
                        timesteps: torch.Tensor) -> torch.Tensor:
    """ε̂ from the UNet's output at ``noisy`` = x_t: the output itself, or √ᾱ_t v̂ + √(1 − ᾱ_t) x_t.

    Args:
        scheduler: the training scheduler.
        output: the UNet's prediction, B×C×S×S.
        noisy: the input x_t, same shape.
        timesteps: int64 (B,) timesteps.
    """
    if prediction_type(scheduler) != "v_prediction":
        return output
    alpha_bar = scheduler.alphas_cumprod.to(output.device, torch.float64)[timesteps.to(output.device)]
    shape = (-1,) + (1,) * (output.dim() - 1)
    root, complement = alpha_bar.sqrt().view(shape), (1.0 - alpha_bar).sqrt().view(shape)
    return (root * output.double() + complement * noisy.double()).to(output.dtype)


def loss_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, snr_gamma: float | None) -> torch.Tensor | None:
    """Per-example min-SNR-γ weights (float32, like ``timesteps``), or None without ``snr_gamma`` (None or 0)."""
    if not snr_gamma:
        return None
    snr = compute_snr(scheduler, timesteps).float()
    clipped = torch.clamp(snr, max=float(snr_gamma))
    denominator = snr + 1.0 if prediction_type(scheduler) == "v_prediction" else snr
    return clipped / denominator
