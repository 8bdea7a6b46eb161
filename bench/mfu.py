"""Model FLOP utilisation for the training benchmarks: FLOPs of one training step and a matmul peak.

MFU = (FLOPs per image × images/s) / peak FLOP/s. The FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and backward; the
optimizer's element-wise work is not counted, as is usual for MFU). The peak is not a data-sheet
figure: it is a square matmul timed in the same process, on the same device, in the same dtype and
under the same backend settings (threads) as the training it is compared with. On CUDA in float32,
cuDNN runs the UNet's convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32``) while
matmuls stay strict float32, so the peak is then measured with TF32 matmuls too (else MFU could
exceed 100%); :func:`peak_precision` names what was measured.

    from mfu import matmul_peak_flops, training_flops_per_image, format_mfu   # bench/, beside train.py
"""

from __future__ import annotations

import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cxrsynth.train.objective import draw_diffusion_noise, per_example_denoising_loss

DEFAULT_MATMUL_SIZE = {"cpu": 1024, "cuda": 4096}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counted_flops(function, *args, **kwargs) -> int:
    """FLOPs that ``function(*args, **kwargs)`` runs, as ``FlopCounterMode`` counts them (no table printed)."""
    with FlopCounterMode(display=False) as counter:
        function(*args, **kwargs)
    return counter.get_total_flops()


def training_flops_per_image(parts, batch_size: int) -> float:
    """FLOPs of one training step per image: forward and backward of the real loss on one batch.

    Args:
        parts: the :class:`cxrsynth.train.loop.TrainingParts` being benchmarked; its ``base_unet`` is
            copied, so the count runs eagerly (also when the training UNet is compiled) and the
            training weights, gradients and random streams are left untouched.
        batch_size: images in the counted batch.

    Returns:
        Counted FLOPs divided by ``batch_size``. Unconditional: class embeddings, if any, are not counted.

    Raises:
        ValueError: if ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unet = copy.deepcopy(parts.base_unet).train()
    device = next(unet.parameters()).device
    size, channels = unet.config.sample_size, unet.config.in_channels
    generator = torch.Generator(device=device).manual_seed(0)
    clean = torch.rand((batch_size, channels, size, size), generator=generator, device=device) * 2 - 1
    noise, timesteps = draw_diffusion_noise(clean, parts.config.num_train_timesteps, generator)

    def step() -> None:
        losses = per_example_denoising_loss(unet, parts.noise_scheduler, clean, noise, timesteps, None,
                                            parts.config.snr_gamma)
        losses.mean().backward()

    return counted_flops(step) / batch_size


def peak_precision(device: str | torch.device, dtype: torch.dtype) -> str:
    """What :func:`matmul_peak_flops` measures: "tf32" for float32 on CUDA with cuDNN's TF32 on, else the dtype's name."""
    if torch.device(device).type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return str(dtype).removeprefix("torch.")


def matmul_peak_flops(device: str | torch.device, dtype: torch.dtype, size: int | None = None,
                      repeats: int = 5, min_seconds: float = 0.2) -> float:
    """The device's matmul throughput: best of ``repeats`` timings of ``size``² @ ``size``² in ``dtype``.

    Args:
        device: where to run ("cpu", "cuda", ...), as the training does.
        dtype: the training's matmul dtype (float32, or bfloat16 under bf16 mixed precision); float32 on
            CUDA is timed with TF32 matmuls where cuDNN's convolutions use TF32 (:func:`peak_precision`).
        size: the square side; None picks 1024 on CPU and 4096 on CUDA.
        repeats: timed repetitions (after one warm-up); the fastest counts.
        min_seconds: each repetition runs enough matmuls to last about this long.

    Returns:
        FLOP/s, counting 2·size³ per matmul.

    Raises:
        ValueError: if ``size`` or ``repeats`` < 1.
    """
    device = torch.device(device)
    size = DEFAULT_MATMUL_SIZE.get(device.type, 1024) if size is None else size
    if size < 1 or repeats < 1:
        raise ValueError(f"size and repeats must be >= 1, got size={size}, repeats={repeats}")
    a = torch.randn((size, size), device=device, dtype=dtype)
    b = torch.randn((size, size), device=device, dtype=dtype)
    flops = 2 * size**3
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = peak_precision(device, dtype) == "tf32" or previous_tf32
    try:
        return flops * _best_repeat_count_per_second(a, b, device, repeats, min_seconds)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def _best_repeat_count_per_second(a: torch.Tensor, b: torch.Tensor, device: torch.device, repeats: int,
                                  min_seconds: float) -> float:
    """Matmuls per second of ``a @ b``: one warm-up, then the fastest of ``repeats`` timed batches."""

    def timed(count: int) -> float:
        _synchronise(device)
        started = time.perf_counter()
        for _ in range(count):
            torch.mm(a, b)
        _synchronise(device)
        return time.perf_counter() - started

    first = timed(1)  # warm-up: allocations, kernel choice
    count = max(1, int(min_seconds / max(timed(1), first / 10, 1e-6)))
    return count / min(timed(count) for _ in range(repeats))


def format_mfu(name: str, flops_per_image: float, images_per_second: float, peak: float) -> str:
    """One copyable line: FLOPs per image, achieved training FLOP/s, the measured peak and their ratio."""
    achieved = flops_per_image * images_per_second
    return (f"MFU {name}: {flops_per_image / 1e9:.3f} GFLOP/img × {images_per_second:.1f} img/s = "
            f"{achieved / 1e9:.2f} GFLOP/s of a measured {peak / 1e9:.2f} GFLOP/s matmul peak = {achieved / peak:.1%}")
