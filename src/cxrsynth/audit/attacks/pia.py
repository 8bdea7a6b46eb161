"""``pia`` and ``pian``: Proximal Initialization Attack (Kong et al., ICLR 2024).

PIA uses the model's own output at t = 0 as the noise: ε₀ = ε_θ(x₀, 0),
x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε₀, and scores ``‖ε₀ − ε_θ(x_t, t)‖₄⁴`` (mean over pixels) at
t = ``--timestep``. Published direction: lower ⇒ member. NFE per image: 2.

PIAN rescales ε₀ per image so that its mean absolute value is √(2/π), the value of a standard
normal, before noising. On a model that memorised an image ε_θ(x₀, 0) can be nearly zero, so PIA's
x_t carries almost no noise and is off-distribution at t; PIAN's rescaling addresses that. On an
overfit model PIA's published direction can be inverted (members score higher): the audit reports
the AUC in the published direction and lets the attack choose its direction on calibration data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cxrsynth.audit.registry import NEEDS_MODEL, AttackContext, register_attack
from cxrsynth.audit.whitebox import per_image_mean

HALF_NORMAL_MEAN = math.sqrt(2.0 / math.pi)
"""E|z| for z ~ N(0, 1)."""


def _proximal_scores(context: AttackContext, normalise: bool) -> np.ndarray:
    model, settings = context.model, context.settings
    scores = np.zeros(len(context.images))
    for rows, clean in model.batches(context.images, settings.batch_size):
        initial = model.predict_noise(clean, 0, rows)
        if normalise:
            scale = initial.abs().flatten(1).mean(dim=1).clamp_min(torch.finfo(initial.dtype).tiny)
            initial = initial / scale.view(-1, 1, 1, 1) * HALF_NORMAL_MEAN
        prediction = model.predict_noise(model.add_noise(clean, initial, settings.fixed_timestep), settings.fixed_timestep, rows)
        scores[rows] = per_image_mean((initial - prediction).abs() ** 4)
    return scores


@register_attack(
    "pia", access="white-box", member_if="lower",
    description="‖ε₀ − ε_θ(x_t, t)‖₄⁴ with x_t built from ε₀ = ε_θ(x₀, 0) (Kong et al. 2024)",
    nfe_per_image=lambda settings: 2, needs=(NEEDS_MODEL,),
)
def pia_scores(context: AttackContext) -> np.ndarray:
    """PIA score per audited image."""
    return _proximal_scores(context, normalise=False)


@register_attack(
    "pian", access="white-box", member_if="lower",
    description="PIA with ε₀ rescaled to mean |ε₀| = √(2/π) (Kong et al. 2024)",
    nfe_per_image=lambda settings: 2, needs=(NEEDS_MODEL,),
)
def pian_scores(context: AttackContext) -> np.ndarray:
    """PIAN score per audited image."""
    return _proximal_scores(context, normalise=True)
