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

Speed: on a GPU the eager ``vmap`` is bound by per-operator dispatch on the CPU. With
``compile=True`` the same ``vmap(grad(loss))`` is traced once by ``torch.compile`` (one graph,
``fullgraph``) and replayed; ``pad_to`` pads the records to a fixed count (padding rows have loss
weight 0, so their gradients are exactly 0 and are dropped), so a Poisson-varying batch size does
not recompile, and on CUDA the ``reduce-overhead`` mode replays the graph as a CUDA graph.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch.func import functional_call, grad, vmap

from cxrsynth.model.prediction import loss_weights, training_target


class VmappableAttnProcessor(AttnProcessor):
    """diffusers' plain ``AttnProcessor`` whose output is contiguous (same values).

    The plain processor returns a channels-last view; a later nearest-neighbour upsampling then
    clones it channels-last, which ``torch.compile`` cannot trace under ``vmap``. The signature is
    spelled out because diffusers drops (with a warning) keyword arguments it does not see in it.
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs
                 ) -> torch.Tensor:
        """The attention block's output (see ``AttnProcessor``), made contiguous."""
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args,
                                **kwargs).contiguous()


def use_vmappable_attention(unet: torch.nn.Module) -> int:
    """Give every attention block of ``unet`` a :class:`VmappableAttnProcessor`; returns how many.

    The default processor calls ``scaled_dot_product_attention``, which has no ``vmap`` batching
    rule on CPU (torch falls back to a slow per-example loop); ``AttnProcessor`` computes the same
    attention with batched matrix products. Weights and outputs are unchanged.
    """
    count = 0
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(VmappableAttnProcessor())
            count += 1
    return count


COMPILE_BACKEND = "inductor"
"""``torch.compile`` backend of ``compile=True`` (tests use ``aot_eager``: the same traced graph, no code generation)."""

_GRADIENT_FUNCTIONS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[bool, bool], Callable]] = \
    weakref.WeakKeyDictionary()


def _gradient_function(unet: torch.nn.Module, conditional: bool, compile: bool) -> Callable:
    """``vmap(grad(record loss))`` of ``unet``, built once per (UNet, conditional, compile) and reused.

    Its arguments: trainable, frozen and buffer dicts (shared), then per record the noisy inputs,
    targets, timesteps, loss weights and (``conditional``) class labels; it returns the gradients
    and the per-record losses. Compiled, it is traced on its first call (slow) and replayed after.
    """
    cache = _GRADIENT_FUNCTIONS.setdefault(unet, {})
    key = (conditional, compile)
    if key in cache:
        return cache[key]

    def record_loss(trainable: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor],
                    buffers: dict[str, torch.Tensor], record_noisy: torch.Tensor, record_target: torch.Tensor,
                    record_timesteps: torch.Tensor, record_weights: torch.Tensor,
                    record_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = functional_call(unet, ({**trainable, **frozen}, buffers), (record_noisy, record_timesteps),
                                     {"class_labels": record_labels, "return_dict": False})[0]
        # At least float32 (bf16 autocast), never lower than the model's own precision (float64 tests).
        dtype = torch.promote_types(prediction.dtype, torch.float32)
        per_draw = (prediction.to(dtype) - record_target.to(dtype)).pow(2).flatten(1).mean(dim=1)
        loss = (per_draw * record_weights.to(dtype)).mean()
        return loss, loss.detach()

    in_dims = (None, None, None, 0, 0, 0, 0) + ((0,) if conditional else ())
    function = vmap(grad(record_loss, has_aux=True), in_dims=in_dims, randomness="different")
    if compile:
        # reduce-overhead replays CUDA graphs on a GPU; on a CPU the default mode is the one that exists.
        mode = "reduce-overhead" if next(unet.parameters()).is_cuda else "default"
        function = torch.compile(function, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND,
                                 mode=mode if COMPILE_BACKEND == "inductor" else None)
    cache[key] = function
    return function


def _pad_records(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with its first record repeated until it has ``rows`` records (dim 0)."""
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor[:1].expand(missing, *tensor.shape[1:])])


def per_record_gradients(
    unet: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    snr_gamma: float | None = None,
    compile: bool = False,
    pad_to: int | None = None,
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
        compile: run the gradient function compiled by ``torch.compile`` (see the module docstring);
            the first call per UNet and shape compiles, which takes minutes on a small CPU.
        pad_to: compute on at least this many records (padding with zero-weight copies), so every
            call has one shape; the padding rows are dropped from the result.

    Returns:
        ``(gradients, losses)``: parameter name → R×(parameter shape) tensor for every parameter
        that requires a gradient, and the R per-record losses (mean over draws and pixels).

    Raises:
        ValueError: when the inputs' leading R×K shapes disagree, or ``pad_to`` is below R.
    """
    records, draws = clean.shape[:2]
    if noise.shape != clean.shape or timesteps.shape != (records, draws):
        raise ValueError(f"inputs disagree: clean {tuple(clean.shape)}, noise {tuple(noise.shape)}, "
                         f"timesteps {tuple(timesteps.shape)}")
    if class_labels is not None and class_labels.shape != (records, draws):
        raise ValueError(f"class_labels {tuple(class_labels.shape)} do not match {records}×{draws} draws")
    if pad_to is not None and pad_to < records:
        raise ValueError(f"pad_to {pad_to} is below the {records} records of the batch")
    flat_t = timesteps.flatten()
    noisy = noise_scheduler.add_noise(clean.flatten(0, 1), noise.flatten(0, 1), flat_t).view_as(clean)
    target = training_target(noise_scheduler, clean.flatten(0, 1), noise.flatten(0, 1), flat_t).view_as(clean)
    weights = loss_weights(noise_scheduler, flat_t, snr_gamma)
    weights = torch.ones(timesteps.shape, device=clean.device) if weights is None else weights.view(timesteps.shape)
    params = {name: p.detach() for name, p in unet.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in unet.named_parameters() if not p.requires_grad}
    buffers = dict(unet.named_buffers())
    per_record_inputs = [noisy, target, timesteps, weights] + ([] if class_labels is None else [class_labels])
    if pad_to is not None:
        # Zero weight: a padding row's loss is 0·(its loss), so its gradient is exactly 0.
        per_record_inputs = [_pad_records(tensor, pad_to) for tensor in per_record_inputs]
        per_record_inputs[3] = per_record_inputs[3].clone()
        per_record_inputs[3][records:] = 0
    function = _gradient_function(unet, class_labels is not None, compile)
    if compile and clean.is_cuda:
        # CUDA-graph replays reuse their output memory: the caller has consumed the previous call's gradients.
        torch.compiler.cudagraph_mark_step_begin()
    gradients, losses = function(params, frozen, buffers, *per_record_inputs)
    if pad_to is not None and pad_to > records:
        gradients = {name: value[:records] for name, value in gradients.items()}
        losses = losses[:records]
    return gradients, losses
