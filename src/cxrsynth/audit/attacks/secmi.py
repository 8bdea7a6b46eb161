"""``secmi``: SecMI's t-error (Duan et al., "Are Diffusion Models Vulnerable to Membership Inference
Attacks?", ICML 2023), the statistical variant SecMI_stat, in the order of the authors' code
(``mia_evals/secmia.py``, ``ddim_loss``):

1. Deterministic DDIM inversion of x₀ to x_{t_sec−k} in steps of k (t = 0 → k → … → t_sec − k;
   t_sec/k − 1 NFE).
2. One deterministic DDIM step **up** x_{t_sec−k} → x_{t_sec} (1 NFE).
3. One deterministic DDIM step back **down** x_{t_sec} → x̂_{t_sec−k} (1 NFE).

Score: ``‖x_{t_sec−k} − x̂_{t_sec−k}‖²`` (mean over pixels). The model is more self-consistent around
its training images: lower ⇒ member. With t_sec = ``--secmi-timestep`` (100) and k =
``--secmi-interval`` (10): 11 NFE per image.
"""

from __future__ import annotations

import numpy as np

from cxrsynth.audit.registry import NEEDS_MODEL, AttackContext, AttackSettings, register_attack
from cxrsynth.audit.whitebox import per_image_mean


def secmi_nfe(settings: AttackSettings) -> float:
    """t_sec/k − 1 inversion steps, then one step up and one back down."""
    return settings.secmi_timestep // settings.secmi_interval + 1


def secmi_t_error(model, clean, rows: np.ndarray, t_sec: int, interval: int):
    """The t-error tensor ``(x_{t_sec−k} − x̂_{t_sec−k})²`` of one batch (see the module docstring)."""
    sample, timestep = clean, 0
    for target in range(interval, t_sec, interval):
        sample = model.ddim_step(sample, timestep, target, rows)
        timestep = target
    above = model.ddim_step(sample, timestep, t_sec, rows)
    recovered = model.ddim_step(above, t_sec, timestep, rows)
    return (sample - recovered) ** 2


@register_attack(
    "secmi", access="white-box", member_if="lower",
    description="t-error at t_sec−k after DDIM inversion, one step up to t_sec and back (Duan et al. 2023)",
    nfe_per_image=secmi_nfe, needs=(NEEDS_MODEL,),
)
def secmi_scores(context: AttackContext) -> np.ndarray:
    """SecMI t-error per audited image."""
    model, settings = context.model, context.settings
    scores = np.zeros(len(context.images))
    for rows, clean in model.batches(context.images, settings.batch_size):
        scores[rows] = per_image_mean(secmi_t_error(model, clean, rows, settings.secmi_timestep, settings.secmi_interval))
    return scores
