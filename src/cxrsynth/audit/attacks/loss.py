"""``loss``: the denoising loss of the image at one timestep (Matsumoto et al., 2023; Hu & Pang, 2023).

Score: ε-prediction mean squared error ``‖ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t) − ε‖²`` averaged over
K = ``--noise-draws`` independent ε. A model that memorised an image predicts its noise better:
lower ⇒ member.

t is ``--timestep`` when given; otherwise it is chosen on the calibration half among
:data:`~cxrsynth.audit.registry.TIMESTEP_CANDIDATES` (:mod:`cxrsynth.audit.timestep_selection`;
the noise draws of an image are the same at every candidate). NFE per image: K with a fixed t;
K·(C + 1)/2 with selection (C = 7 candidates: calibration images are scored at each, evaluation
images at the chosen t only).

:func:`loss_scores` (all images at ``settings.fixed_timestep``) is the statistic the reference-model
attacks (LiRA, RMIA) share; :func:`selected_loss_scores` is the registered attack.
"""

from __future__ import annotations

import numpy as np

from cxrsynth.audit.registry import NEEDS_MODEL, TIMESTEP_CANDIDATES, AttackContext, AttackSettings, register_attack
from cxrsynth.audit.timestep_selection import scores_at_selected_timestep, selection_nfe
from cxrsynth.audit.whitebox import per_image_mean

NOISE_STREAM = 101
"""Noise stream shared with ``recon``: both attacks see the same x_t of each image."""


def loss_at(context: AttackContext, timestep: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Mean ε-prediction error over the K noise draws at ``timestep``, for ``rows`` (default: every image).

    Returns:
        float64 scores, one per row (in the order of ``rows``).
    """
    model, settings = context.model, context.settings
    order = np.arange(len(context.images)) if rows is None else np.asarray(rows, dtype=np.int64)
    position = {int(row): index for index, row in enumerate(order)}
    scores = np.zeros(len(order))
    for batch, clean in model.batches(context.images, settings.batch_size, order):
        where = [position[int(row)] for row in batch]
        for draw in range(settings.noise_draws):
            noise = model.noise(batch, tuple(clean.shape[1:]), NOISE_STREAM, draw)
            prediction = model.predict_noise(model.add_noise(clean, noise, timestep), timestep, batch)
            scores[where] += per_image_mean((prediction - noise) ** 2)
    return scores / settings.noise_draws


def loss_scores(context: AttackContext) -> np.ndarray:
    """Mean ε-prediction error of every audited image at ``settings.fixed_timestep`` (no selection)."""
    return loss_at(context, context.settings.fixed_timestep)


def _loss_nfe(settings: AttackSettings) -> float:
    if settings.timestep is not None:
        return float(settings.noise_draws)
    return selection_nfe(settings.noise_draws, TIMESTEP_CANDIDATES)


@register_attack(
    "loss", access="white-box", member_if="lower",
    description="ε-prediction MSE at t (chosen on the calibration half unless --timestep), averaged over K noise draws",
    nfe_per_image=_loss_nfe, needs=(NEEDS_MODEL,),
)
def selected_loss_scores(context: AttackContext) -> np.ndarray:
    """Mean ε-prediction error per audited image at ``--timestep`` or the calibration-chosen t."""
    return scores_at_selected_timestep(context, "loss", "lower", lambda t, rows: loss_at(context, t, rows),
                                       TIMESTEP_CANDIDATES)
