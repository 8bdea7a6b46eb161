"""``loss``: the denoising loss of the image at a fixed timestep (Matsumoto et al., 2023; Hu & Pang, 2023).

Score: ε-prediction mean squared error ``‖ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t) − ε‖²`` at t = ``--timestep``
(200), averaged over K = ``--noise-draws`` independent ε. A model that memorised an image predicts
its noise better: lower ⇒ member. NFE per image: K.
"""

from __future__ import annotations

import numpy as np

from cxrsynth.audit.registry import NEEDS_MODEL, AttackContext, register_attack
from cxrsynth.audit.whitebox import per_image_mean

NOISE_STREAM = 101
"""Noise stream shared with ``recon``: both attacks see the same x_t of each image."""


@register_attack(
    "loss", access="white-box", member_if="lower",
    description="ε-prediction MSE at t, averaged over K noise draws",
    nfe_per_image=lambda settings: settings.noise_draws, needs=(NEEDS_MODEL,),
)
def loss_scores(context: AttackContext) -> np.ndarray:
    """Mean ε-prediction error per audited image (see the module docstring)."""
    model, settings = context.model, context.settings
    scores = np.zeros(len(context.images))
    for rows, clean in model.batches(context.images, settings.batch_size):
        for draw in range(settings.noise_draws):
            noise = model.noise(rows, tuple(clean.shape[1:]), NOISE_STREAM, draw)
            prediction = model.predict_noise(model.add_noise(clean, noise, settings.fixed_timestep), settings.fixed_timestep, rows)
            scores[rows] += per_image_mean((prediction - noise) ** 2)
    return scores / settings.noise_draws
