"""The trained denoiser as white-box attacks see it: ε-predictions that count their cost.

:class:`WhiteBoxModel` wraps a run's UNet and training scheduler. Every call of
:meth:`WhiteBoxModel.predict_noise` is one UNet forward pass over a batch; it adds the batch size
to :attr:`WhiteBoxModel.image_forwards`, so the audit reports the number of function
evaluations (NFE) per image an attack really made rather than the one it claims.

Noise is drawn per image from a CPU generator seeded by ``(seed, stream, row, draw)``: an image's
score does not depend on the batch it was scored in, nor on the device.

:meth:`WhiteBoxModel.loss_gradient_norms` gives per-image gradients of the denoising loss with
respect to the weights (for gradient attacks such as GSA): each (image, timestep) pair is one
forward pass, counted in :attr:`WhiteBoxModel.image_forwards` like any other, plus one backward
pass, counted in :attr:`WhiteBoxModel.image_backwards`.
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
        self.image_backwards = 0
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

    def batches(self, images: np.ndarray, batch_size: int,
                rows: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(rows, x₀)`` batches: row indices into ``images`` and float B×1×S×S in [-1, 1] on the model's device.

        Args:
            images: uint8 N×S×S.
            batch_size: rows per batch.
            rows: the rows to visit, in this order (default: all of them).
        """
        order = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            yield batch, to_model_range(np.ascontiguousarray(images[batch]))[:, None].to(self.device)

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

    def gradient_layer_names(self) -> list[str]:
        """Names of the UNet's parameter tensors: the columns of :meth:`loss_gradient_norms`.

        Every parameter counts, whether or not ``requires_grad`` is set (the audit loads a frozen UNet).
        """
        return [name for name, _ in self.unet.named_parameters()]

    def loss_gradient_norms(self, clean: torch.Tensor, timesteps: tuple[int, ...], rows: np.ndarray,
                            noise: torch.Tensor, chunk_images: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image, per-parameter-tensor L2 norms of the gradient of the ε-prediction loss.

        For image i and timestep t, ℓ_{i,t}(θ) = mean over pixels of (ε_θ(x_t, t) − ε_{i,t})² with
        x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε_{i,t} (ε̂ converted from v̂ for a v-prediction model). The
        gradients of all (image, timestep) pairs of a chunk are computed at once with
        ``torch.func.vmap(torch.func.grad(...))``; memory grows with ``chunk_images × len(timesteps)``
        copies of the weights' gradient, so callers keep chunks small.

        Args:
            clean: x₀, float B×C×S×S in [-1, 1].
            timesteps: the T timesteps.
            rows: the B audited rows (their class labels condition a conditional UNet).
            noise: ε, float B×T×C×S×S.
            chunk_images: images per vmapped chunk.

        Returns:
            ``(per_timestep, of_mean)``: float32 B×T×L norms of ∇ℓ_{i,t}, and B×L norms of
            ∇(1/T Σ_t ℓ_{i,t}), L = ``len(gradient_layer_names())``. Counts B·T forwards and backwards.

        Raises:
            ValueError: when ``noise`` is not shaped B×T×C×S×S.
        """
        from torch.func import functional_call, grad, vmap

        count, steps = int(clean.shape[0]), len(timesteps)
        if tuple(noise.shape) != (count, steps, *clean.shape[1:]):
            raise ValueError(f"noise must be {(count, steps, *clean.shape[1:])}, got {tuple(noise.shape)}")
        names = self.gradient_layer_names()
        parameters = {name: p.detach() for name, p in self.unet.named_parameters()}
        frozen = dict(self.unet.named_buffers())
        alpha_bar = torch.tensor([self.alpha_bar(t) for t in timesteps], dtype=torch.float32, device=self.device)
        step_tensor = torch.tensor([int(t) for t in timesteps], dtype=torch.long, device=self.device)
        labels_all = None
        if self.class_labels is not None:
            labels_all = self.class_labels[torch.as_tensor(rows, dtype=torch.long)].to(self.device)

        def sample_loss(weights, image, epsilon, root, complement, step, label):
            noisy = (root * image + complement * epsilon)[None]
            step = step.reshape(1)
            label = None if label is None else label.reshape(1)
            output = functional_call(self.unet, {**weights, **frozen}, (noisy.to(self.dtype), step),
                                     {"class_labels": label, "return_dict": False})[0]
            prediction = epsilon_from_output(self.scheduler, output.float(), noisy.float(), step)
            return ((prediction - epsilon[None]) ** 2).mean()

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0, 0, 0, 0 if labels_all is not None else None))
        per_timestep = torch.zeros(count, steps, len(names))
        of_mean = torch.zeros(count, len(names))
        for start in range(0, count, max(1, int(chunk_images))):
            chunk = slice(start, min(start + max(1, int(chunk_images)), count))
            size = chunk.stop - chunk.start
            images = clean[chunk].to(self.device).float().repeat_interleave(steps, dim=0)
            epsilon = noise[chunk].to(self.device).float().flatten(0, 1)
            roots = alpha_bar.sqrt().repeat(size).view(-1, 1, 1, 1)
            complements = (1.0 - alpha_bar).sqrt().repeat(size).view(-1, 1, 1, 1)
            steps_flat = step_tensor.repeat(size)
            labels = None if labels_all is None else labels_all[chunk].repeat_interleave(steps)
            gradients = per_sample(parameters, images, epsilon, roots, complements, steps_flat, labels)
            for column, name in enumerate(names):
                values = gradients[name].float().reshape(size, steps, -1)
                per_timestep[chunk, :, column] = values.norm(dim=2).cpu()
                # the gradient of the mean loss is the mean of the per-timestep gradients
                of_mean[chunk, column] = values.mean(dim=1).norm(dim=1).cpu()
            del gradients
        self.image_forwards += count * steps
        self.image_backwards += count * steps
        return per_timestep, of_mean

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
