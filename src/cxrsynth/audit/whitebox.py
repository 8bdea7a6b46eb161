"""The trained denoiser as white-box attacks see it: ε-predictions that count their cost.

:class:`WhiteBoxModel` wraps a run's UNet and training scheduler. Every call of
:meth:`WhiteBoxModel.predict_noise` is one UNet forward pass over a batch; it adds the batch size
to :attr:`WhiteBoxModel.image_forwards`, so the audit reports the number of function
evaluations (NFE) per image an attack really made rather than the one it claims.

Noise is drawn per image from a CPU generator seeded by ``(seed, stream, row, draw)``: an image's
score does not depend on the batch it was scored in, nor on the device.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from cxrsynth.data.dataset import to_model_range
from cxrsynth.model.prediction import epsilon_from_output


class WhiteBoxModel:
    """A run's ε-prediction UNet with its noise schedule, conditioning and a forward counter.

    Args:
        unet: the denoiser (eval mode, on its device).
        scheduler: the training ``DDPMScheduler`` (defines ᾱ_t and x̂₀ clipping).
        class_labels: class id per audited row for a conditional UNet, else None.
        seed: seed of the noise draws.
    """

    def __init__(self, unet: torch.nn.Module, scheduler, class_labels: torch.Tensor | None = None, seed: int = 0) -> None:
        self.unet = unet
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64).cpu()
        self.class_labels = class_labels
        self.seed = int(seed)
        self.image_forwards = 0
        parameter = next(unet.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    @property
    def num_train_timesteps(self) -> int:
        """Timesteps of the training schedule."""
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def clip_range(self) -> float | None:
        """Range x̂₀ is clipped to by the scheduler (``clip_sample_range``), or None when it is not clipped."""
        config = self.scheduler.config
        return float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", False) else None

    def alpha_bar(self, timestep: int) -> float:
        """ᾱ_t of the training schedule."""
        return float(self.alphas_cumprod[int(timestep)])

    def batches(self, images: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(rows, x₀)`` batches: row indices into ``images`` and float B×1×S×S in [-1, 1] on the model's device."""
        for start in range(0, len(images), batch_size):
            rows = np.arange(start, min(start + batch_size, len(images)))
            yield rows, to_model_range(np.ascontiguousarray(images[rows]))[:, None].to(self.device)

    def noise(self, rows: np.ndarray, shape: tuple[int, ...], stream: int, draw: int = 0) -> torch.Tensor:
        """Standard normal noise for each row (shape per image), fixed by (seed, stream, row, draw)."""
        from cxrsynth.train.components import derived_seed

        samples = []
        for row in rows:
            generator = torch.Generator(device="cpu").manual_seed(derived_seed(self.seed, stream, int(row), draw))
            samples.append(torch.randn(shape, generator=generator))
        return torch.stack(samples).to(self.device)

    @torch.no_grad()
    def predict_noise(self, noisy: torch.Tensor, timestep: int, rows: np.ndarray) -> torch.Tensor:
        """ε_θ(x_t, t) for a batch (float32), conditioned on the rows' labels for a conditional UNet
        (converted from v̂ for a v-prediction model)."""
        labels = None
        if self.class_labels is not None:
            labels = self.class_labels[torch.as_tensor(rows, dtype=torch.long)].to(self.device)
        timesteps = torch.full((noisy.shape[0],), int(timestep), dtype=torch.long, device=self.device)
        output = self.unet(noisy.to(self.device, self.dtype), timesteps, class_labels=labels, return_dict=False)[0]
        self.image_forwards += int(noisy.shape[0])
        return epsilon_from_output(self.scheduler, output.float(), noisy.to(self.device).float(), timesteps)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε."""
        alpha_bar = self.alpha_bar(timestep)
        return math.sqrt(alpha_bar) * clean + math.sqrt(1.0 - alpha_bar) * noise

    def predict_clean(self, noisy: torch.Tensor, noise_prediction: torch.Tensor, timestep: int) -> torch.Tensor:
        """x̂₀ = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t (not clipped)."""
        alpha_bar = self.alpha_bar(timestep)
        return (noisy - math.sqrt(1.0 - alpha_bar) * noise_prediction) / math.sqrt(alpha_bar)

    def ddim_step(self, sample: torch.Tensor, timestep: int, target_timestep: int, rows: np.ndarray) -> torch.Tensor:
        """Deterministic DDIM (η = 0) move from ``timestep`` to ``target_timestep`` (either direction; 1 NFE).

        With ε̂ = ε_θ(x_t, t): x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s) ε̂. Moving to a larger timestep is DDIM inversion.
        """
        prediction = self.predict_noise(sample, timestep, rows)
        clean = self.predict_clean(sample, prediction, timestep)
        alpha_bar = self.alpha_bar(target_timestep)
        return math.sqrt(alpha_bar) * clean + math.sqrt(1.0 - alpha_bar) * prediction


def per_image_mean(values: torch.Tensor) -> np.ndarray:
    """Mean over every axis but the first, as float64 numpy (one number per image)."""
    return values.flatten(1).mean(dim=1).double().cpu().numpy()
