"""``recon``: the seed project's reconstruction attack.

Noise the image to t = ``--timestep``, predict x̂₀ in one step from ε_θ(x_t, t), clip it to the
scheduler's sample range as a sampler would, and score the reconstruction error ``‖x̂₀ − x₀‖²``,
averaged over K = ``--noise-draws`` draws (the same draws as ``loss``). Lower ⇒ member. NFE: K.

Without clipping x̂₀ − x₀ = −√((1−ᾱ_t)/ᾱ_t)(ε̂ − ε), so the score would be the ``loss`` score
times a constant; the clipping is what makes it a (slightly) different test. It is kept because it
is the attack the seed project reported.
"""

from __future__ import annotations

import numpy as np

from cxrsynth.audit.attacks.loss import NOISE_STREAM
from cxrsynth.audit.registry import NEEDS_MODEL, AttackContext, register_attack
from cxrsynth.audit.whitebox import per_image_mean


@register_attack(
    "recon", access="white-box", member_if="lower",
    description="one-step x̂₀ reconstruction error from x_t (the seed's attack)",
    nfe_per_image=lambda settings: settings.noise_draws, needs=(NEEDS_MODEL,),
)
def reconstruction_scores(context: AttackContext) -> np.ndarray:
    """Mean clipped one-step reconstruction error per audited image."""
    model, settings = context.model, context.settings
    clip = model.clip_range
    scores = np.zeros(len(context.images))
    for rows, clean in model.batches(context.images, settings.batch_size):
        for draw in range(settings.noise_draws):
            noise = model.noise(rows, tuple(clean.shape[1:]), NOISE_STREAM, draw)
            noisy = model.add_noise(clean, noise, settings.fixed_timestep)
            estimate = model.predict_clean(noisy, model.predict_noise(noisy, settings.fixed_timestep, rows), settings.fixed_timestep)
            if clip is not None:
                estimate = estimate.clamp(-clip, clip)
            scores[rows] += per_image_mean((estimate - clean) ** 2)
    return scores / settings.noise_draws
