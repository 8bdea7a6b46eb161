"""``sima``: single-query score-norm attack (Rao, Qu & Moyer, "Score-based Membership Inference on
Diffusion Models", arXiv 2509.25003, 2025: "SimA").

Score: ``‖ε_θ(x₀, t)‖₂`` (root mean square over pixels, a fixed rescaling of the L2 norm): the
model's noise prediction on the *clean* image, no noise added, at a small t. The paper's argument:
the optimal denoiser's output at x points from x toward a kernel-weighted mean of nearby training
images, so its norm measures the distance from x to the training set, which is ≈ 0 at a training
image for small t. Hence **lower ⇒ member** (the attack's published direction; the runner still
chooses the direction on the calibration half).

t is ``--timestep`` when given; otherwise it is chosen on the calibration half among the small
candidates :data:`SIMA_CANDIDATES` = (1, 2, 5, 10, 20, 50) (:mod:`cxrsynth.audit.timestep_selection`).
SimA is deterministic (no noise draw), so ``--noise-draws`` does not apply. NFE per image: 1 with
a fixed t; (C + 1)/2 = 3.5 with the C = 6 candidates (calibration images are scored at each,
evaluation images at the chosen t only).
"""

from __future__ import annotations

import numpy as np

from cxrsynth.audit.registry import NEEDS_MODEL, AttackContext, AttackSettings, register_attack
from cxrsynth.audit.timestep_selection import scores_at_selected_timestep, selection_nfe
from cxrsynth.audit.whitebox import per_image_mean

SIMA_CANDIDATES: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
"""Small timesteps SimA chooses among on the calibration half."""


def score_norms(context: AttackContext, timestep: int, rows: np.ndarray) -> np.ndarray:
    """RMS of ε_θ(x₀, t) over pixels for ``rows`` of the audited images (one per row, in that order)."""
    model = context.model
    scores = np.zeros(len(rows))
    done = 0
    for batch, clean in model.batches(context.images, context.settings.batch_size, rows):
        prediction = model.predict_noise(clean, timestep, batch)
        scores[done:done + len(batch)] = np.sqrt(per_image_mean(prediction**2))
        done += len(batch)
    return scores


def _sima_nfe(settings: AttackSettings) -> float:
    return 1.0 if settings.timestep is not None else selection_nfe(1, SIMA_CANDIDATES)


@register_attack(
    "sima", access="white-box", member_if="lower",
    description="‖ε_θ(x₀, t)‖ on the clean image at a small t chosen on calibration (Rao et al. 2025, SimA)",
    nfe_per_image=_sima_nfe, needs=(NEEDS_MODEL,),
)
def sima_scores(context: AttackContext) -> np.ndarray:
    """SimA score per audited image (see the module docstring)."""
    return scores_at_selected_timestep(context, "sima", "lower", lambda t, rows: score_norms(context, t, rows),
                                       SIMA_CANDIDATES)
