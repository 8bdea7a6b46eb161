"""``pia`` and ``pian``: Proximal Initialization Attack (Kong et al., ICLR 2024).

PIA uses the model's own output at t = 0 as the noise: ε₀ = ε_θ(x₀, 0),
x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε₀, and scores ``‖ε₀ − ε_θ(x_t, t)‖₄⁴`` (mean over pixels: the official
code's sum divided by the pixel count, the same ranking). Published direction: lower ⇒ member.
``tests/audit/test_pia_official.py`` pins both scores to an independent transcription of the
official implementation (github kong13661/PIA, ``components.PIA`` / ``components.PIAN``).

t is ``--timestep`` when given. Otherwise it is chosen on the calibration half among
:data:`~cxrsynth.audit.registry.TIMESTEP_CANDIDATES` (t = 10…300, the span of the official sweep
t = 10, 20, …, 300, whose code reports the best t measured on the evaluated images themselves;
:mod:`cxrsynth.audit.timestep_selection`). ε₀ is computed once per image and reused by every
candidate. NFE per image: 2 with a fixed t; (C + 3)/2 = 5 with the C = 7 candidates (calibration
images: 1 + C, evaluation images: 2).

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

from cxrsynth.audit.registry import NEEDS_MODEL, TIMESTEP_CANDIDATES, AttackContext, AttackSettings, register_attack
from cxrsynth.audit.timestep_selection import scores_at_selected_timestep
from cxrsynth.audit.whitebox import per_image_mean

HALF_NORMAL_MEAN = math.sqrt(2.0 / math.pi)
"""E|z| for z ~ N(0, 1)."""


class ProximalScorer:
    """PIA/PIAN scores of chosen rows at a timestep, computing each image's ε₀ only once.

    Args:
        context: the attack's context.
        normalise: True for PIAN (ε₀ rescaled to mean |ε₀| = √(2/π)).
    """

    def __init__(self, context: AttackContext, normalise: bool) -> None:
        self.context = context
        self.normalise = normalise
        self._initial: dict[int, torch.Tensor] = {}

    def _initial_noise(self, rows: np.ndarray, clean: torch.Tensor) -> torch.Tensor:
        model = self.context.model
        missing = [index for index, row in enumerate(rows) if int(row) not in self._initial]
        if missing:
            initial = model.predict_noise(clean[missing], 0, rows[missing])
            if self.normalise:
                scale = initial.abs().flatten(1).mean(dim=1).clamp_min(torch.finfo(initial.dtype).tiny)
                initial = initial / scale.view(-1, 1, 1, 1) * HALF_NORMAL_MEAN
            for index, value in zip(missing, initial):
                self._initial[int(rows[index])] = value
        return torch.stack([self._initial[int(row)] for row in rows])

    def __call__(self, timestep: int, rows: np.ndarray) -> np.ndarray:
        """Raw scores of ``rows`` at ``timestep`` (one per row, in that order)."""
        model, settings = self.context.model, self.context.settings
        scores = np.zeros(len(rows))
        done = 0
        for batch, clean in model.batches(self.context.images, settings.batch_size, rows):
            initial = self._initial_noise(batch, clean)
            prediction = model.predict_noise(model.add_noise(clean, initial, timestep), timestep, batch)
            scores[done:done + len(batch)] = per_image_mean((initial - prediction).abs() ** 4)
            done += len(batch)
        return scores


def _proximal_scores(context: AttackContext, name: str, normalise: bool) -> np.ndarray:
    return scores_at_selected_timestep(context, name, "lower", ProximalScorer(context, normalise),
                                       TIMESTEP_CANDIDATES)


def _proximal_nfe(settings: AttackSettings) -> float:
    if settings.timestep is not None:
        return 2.0
    return (len(TIMESTEP_CANDIDATES) + 3) / 2.0


@register_attack(
    "pia", access="white-box", member_if="lower",
    description="‖ε₀ − ε_θ(x_t, t)‖₄⁴ with x_t built from ε₀ = ε_θ(x₀, 0) (Kong et al. 2024); t chosen on calibration",
    nfe_per_image=_proximal_nfe, needs=(NEEDS_MODEL,),
)
def pia_scores(context: AttackContext) -> np.ndarray:
    """PIA score per audited image."""
    return _proximal_scores(context, "pia", normalise=False)


@register_attack(
    "pian", access="white-box", member_if="lower",
    description="PIA with ε₀ rescaled to mean |ε₀| = √(2/π) (Kong et al. 2024); t chosen on calibration",
    nfe_per_image=_proximal_nfe, needs=(NEEDS_MODEL,),
)
def pian_scores(context: AttackContext) -> np.ndarray:
    """PIAN score per audited image."""
    return _proximal_scores(context, "pian", normalise=True)
