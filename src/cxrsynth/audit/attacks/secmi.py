"""``secmi``: SecMI's t-error (Duan et al., "Are Diffusion Models Vulnerable to Membership Inference
Attacks?", ICML 2023), the statistical variant SecMI_stat.

1. Deterministic DDIM inversion of x₀ to x_{t_sec} in steps of k (t = 0, k, …, t_sec − k; t_sec/k NFE).
2. One deterministic DDIM denoising step x_{t_sec} → x_{t_sec−k} (1 NFE).
3. One DDIM inversion step back x_{t_sec−k} → x̂_{t_sec} (1 NFE).

Score: ``‖x_{t_sec} − x̂_{t_sec}‖²`` (mean over pixels). The model is more self-consistent around its
training images: lower ⇒ member. With t_sec = 100 and k = 10: 12 NFE per image.
"""

from __future__ import annotations

import numpy as np

from cxrsynth.audit.registry import NEEDS_MODEL, AttackContext, AttackSettings, register_attack
from cxrsynth.audit.whitebox import per_image_mean


def secmi_nfe(settings: AttackSettings) -> float:
    """t_sec/k inversion steps plus one step down and one back up."""
    return settings.secmi_timestep // settings.secmi_interval + 2


@register_attack(
    "secmi", access="white-box", member_if="lower",
    description="t-error after DDIM inversion to t_sec and one step down and up (Duan et al. 2023)",
    nfe_per_image=secmi_nfe, needs=(NEEDS_MODEL,),
)
def secmi_scores(context: AttackContext) -> np.ndarray:
    """SecMI t-error per audited image."""
    model, settings = context.model, context.settings
    t_sec, k = settings.secmi_timestep, settings.secmi_interval
    scores = np.zeros(len(context.images))
    for rows, clean in model.batches(context.images, settings.batch_size):
        sample = clean
        for timestep in range(0, t_sec, k):
            sample = model.ddim_step(sample, timestep, timestep + k, rows)
        below = model.ddim_step(sample, t_sec, t_sec - k, rows)
        recovered = model.ddim_step(below, t_sec - k, t_sec, rows)
        scores[rows] = per_image_mean((sample - recovered) ** 2)
    return scores
