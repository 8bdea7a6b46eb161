"""Per-record gradients of the denoising loss, with noise multiplicity, computed by ``torch.func``.

DP-SGD clips each record's gradient, so it needs one gradient per record (a patient or an image).
With noise multiplicity K (Dockhorn et al., DPDM), a record's loss is the mean over K
(timestep, noise) draws of that record, so its gradient is the mean of the K per-draw gradients
*before* clipping: the record still contributes at most C, at no extra privacy cost, with less
variance.

The gradients are ``vmap(grad(loss))`` over records of the whole UNet (``functional_call``), each
record a K-row mini-batch. That is exact by construction — autograd of the same graph — unlike
Opacus' per-layer hooks, whose unfolded convolutions after a diffusers attention block (which
returns a channels-last tensor) were measured wrong here; and it needs no per-layer support.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch.func import functional_call, grad, vmap

from cxrsynth.model.prediction import loss_weights, training_target


def use_vmappable_attention(unet: torch.nn.Module) -> int:
    """Give every attention block of ``unet`` diffusers' plain ``AttnProcessor``; returns how many.

    The default processor calls ``scaled_dot_product_attention``, which has no ``vmap`` batching
    rule on CPU (torch falls back to a slow per-example loop); ``AttnProcessor`` computes the same
    attention with batched matrix products. Weights and outputs are unchanged.
    """
    count = 0
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
            count += 1
    return count


def per_record_gradients(
    unet: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    snr_gamma: float | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradient of each record's denoising loss, averaged over its K draws, w.r.t. ``unet``'s parameters.

    Args:
        unet: the ε-prediction UNet (not wrapped); its parameters are read, not changed. In
            training mode dropout draws a different mask per record.
        noise_scheduler: the training DDPM scheduler (defines ᾱ_t).
        clean: R×K×C×S×S clean images in [-1, 1]: record r's image repeated over its K draws.
        noise: R×K×C×S×S Gaussian noise, one per draw.
        timesteps: R×K int64 timesteps, one per draw.
        class_labels: R×K class ids (after label dropout) for a conditional UNet, else None.
        snr_gamma: min-SNR-γ weighting of each draw's loss (as in non-DP training); None for plain MSE.

    Returns:
        ``(gradients, losses)``: parameter name → R×(parameter shape) tensor for every parameter
        that requires a gradient, and the R per-record losses (mean over draws and pixels).

    Raises:
        ValueError: when the inputs' leading R×K shapes disagree.
    """
    records, draws = clean.shape[:2]
    if noise.shape != clean.shape or timesteps.shape != (records, draws):
        raise ValueError(f"inputs disagree: clean {tuple(clean.shape)}, noise {tuple(noise.shape)}, "
                         f"timesteps {tuple(timesteps.shape)}")
    if class_labels is not None and class_labels.shape != (records, draws):
        raise ValueError(f"class_labels {tuple(class_labels.shape)} do not match {records}×{draws} draws")
    flat_t = timesteps.flatten()
    noisy = noise_scheduler.add_noise(clean.flatten(0, 1), noise.flatten(0, 1), flat_t).view_as(clean)
    target = training_target(noise_scheduler, clean.flatten(0, 1), noise.flatten(0, 1), flat_t).view_as(clean)
    weights = loss_weights(noise_scheduler, flat_t, snr_gamma)
    weights = torch.ones(timesteps.shape, device=clean.device) if weights is None else weights.view(timesteps.shape)
    params = {name: p.detach() for name, p in unet.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in unet.named_parameters() if not p.requires_grad}
    buffers = dict(unet.named_buffers())

    def record_loss(trainable: dict[str, torch.Tensor], record_noisy: torch.Tensor, record_target: torch.Tensor,
                    record_timesteps: torch.Tensor, record_weights: torch.Tensor, record_labels: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = functional_call(unet, ({**trainable, **frozen}, buffers), (record_noisy, record_timesteps),
                                     {"class_labels": record_labels, "return_dict": False})[0]
        # At least float32 (bf16 autocast), never lower than the model's own precision (float64 tests).
        dtype = torch.promote_types(prediction.dtype, torch.float32)
        per_draw = (prediction.to(dtype) - record_target.to(dtype)).pow(2).flatten(1).mean(dim=1)
        loss = (per_draw * record_weights.to(dtype)).mean()
        return loss, loss.detach()

    label_dim = None if class_labels is None else 0
    per_record = vmap(grad(record_loss, has_aux=True), in_dims=(None, 0, 0, 0, 0, label_dim), randomness="different")
    gradients, losses = per_record(params, noisy, target, timesteps, weights, class_labels)
    return gradients, losses
