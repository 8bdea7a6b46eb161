"""``lira`` and ``lira_offline``: the likelihood-ratio attack (Carlini et al., 2022) with reference models.

Statistic: s = log of the ``loss`` attack's ε-prediction error (t = ``--timestep`` or 200, averaged
over ``--noise-draws`` draws with the ``loss`` attack's noise stream), on the audited model and on each of
the K reference models (:mod:`cxrsynth.audit.reference`). The noise draws of an image are the same on
every model (common random numbers), so model-to-model differences are not drowned by noise-draw
variance. The log: losses are positive and right-skewed, their log is close to Gaussian (Carlini et
al. logit-scale their confidences for the same reason).

* ``lira`` (online): per image, a Gaussian N(μ_in, σ_in²) fitted to s on the reference models that
  trained on the image's patient, and N(μ_out, σ_out²) on those that did not; score =
  log N(s_target; μ_in, σ_in) − log N(s_target; μ_out, σ_out). Higher ⇒ member.
* ``lira_offline``: only the models that did not train on the patient; score = −(s_target − μ_out) / σ_out
  = Φ⁻¹(Λ) of the published one-sided Λ = Pr[s_out ≥ s_target], so it ranks images exactly as Λ does,
  without Λ's floating-point saturation at 0 and 1 (Λ itself would tie every strong member at 1.0
  and every strong non-member at 0.0). Higher ⇒ member.

Means are the Gaussian maximum-likelihood means (Carlini et al.'s code uses the median; with few
models the mean is the fit of the model the test assumes). Variances are per image once every image
has :data:`PER_IMAGE_VARIANCE_MODELS` models on a side, else one pooled within-image variance per
side — Carlini et al.'s "global variance", better below 64 reference models.

NFE: the target's forwards are counted by the runner (``--noise-draws`` per image); the reference
forwards (K × ``--noise-draws`` per image, computed once per audit and shared with ``rmia``) are
recorded as ``selected.reference_nfe_per_image``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from cxrsynth.audit.registry import NEEDS_MODEL, NEEDS_REFERENCE, AttackContext, register_attack
from cxrsynth.errors import CxrsynthError

PER_IMAGE_VARIANCE_MODELS = 32
"""Models per side from which each image gets its own variance (Carlini et al.: global below 64 models)."""
MIN_STD = 1e-12
"""Floor of a fitted standard deviation (identical statistics on every model would give 0)."""


def log_statistic(losses: np.ndarray) -> np.ndarray:
    """log of ε-MSE losses (floored at 1e-300 so a zero loss stays finite)."""
    return np.log(np.maximum(np.asarray(losses, dtype=np.float64), 1e-300))


def gaussian_fits(statistics: np.ndarray, mask: np.ndarray, per_image: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per image of the statistics of the models selected by ``mask``.

    Args:
        statistics: K × N statistics (model × image).
        mask: K × N bool, the models to fit on for each image.
        per_image: one variance per image (unbiased, n − 1), else one pooled within-image variance:
            Σ (s − μ_image)² / Σ (n_image − 1).

    Returns:
        ``(mean, std)``, each of length N.

    Raises:
        CxrsynthError: when an image has fewer than 2 selected models.
    """
    counts = mask.sum(axis=0)
    if np.any(counts < 2):
        raise CxrsynthError(
            f"{int(np.sum(counts < 2))} audited image(s) have fewer than 2 reference models on one side "
            "(trained on their patient, or not)",
            "train more reference models (--reference-models 4 or more; even K keeps every patient in half of them)",
        )
    mean = np.where(mask, statistics, 0.0).sum(axis=0) / counts
    squares = np.where(mask, (statistics - mean) ** 2, 0.0).sum(axis=0)
    variance = squares / (counts - 1) if per_image else np.full(len(counts), squares.sum() / (counts - 1).sum())
    return mean, np.maximum(np.sqrt(variance), MIN_STD)


def use_per_image_variance(in_mask: np.ndarray, sides: tuple[bool, ...] = (True, False)) -> bool:
    """Whether every image has :data:`PER_IMAGE_VARIANCE_MODELS` models on each side in ``sides``."""
    return all(int((in_mask == side).sum(axis=0).min()) >= PER_IMAGE_VARIANCE_MODELS for side in sides)


def lira_online(target: np.ndarray, reference: np.ndarray, in_mask: np.ndarray,
                per_image: bool | None = None) -> np.ndarray:
    """Online LiRA scores: log N(s; μ_in, σ_in) − log N(s; μ_out, σ_out) per image (higher ⇒ member).

    Args:
        target: N statistics of the audited model.
        reference: K × N statistics of the reference models.
        in_mask: K × N, True where model k trained on image n's patient.
        per_image: per-image variances; None chooses (:func:`use_per_image_variance`).
    """
    per_image = use_per_image_variance(in_mask) if per_image is None else per_image
    mean_in, std_in = gaussian_fits(reference, in_mask, per_image)
    mean_out, std_out = gaussian_fits(reference, ~in_mask, per_image)
    return norm.logpdf(target, mean_in, std_in) - norm.logpdf(target, mean_out, std_out)


def lira_offline(target: np.ndarray, reference: np.ndarray, in_mask: np.ndarray,
                 per_image: bool | None = None) -> np.ndarray:
    """Offline LiRA scores: −(s − μ_out)/σ_out = Φ⁻¹(Pr[s_out ≥ s]) per image, out models only (higher ⇒
    member: the target's statistic is unusually low for a model that did not train on the image)."""
    per_image = use_per_image_variance(in_mask, (False,)) if per_image is None else per_image
    mean_out, std_out = gaussian_fits(reference, ~in_mask, per_image)
    return -(target - mean_out) / std_out


def reference_inputs(context: AttackContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Target and reference losses of the audited images, the in-mask, and the shared choices.

    Returns:
        ``(target losses N, reference losses K × N, in_mask K × N, choices)``.

    Raises:
        CxrsynthError: when the context lacks the patients of the audited images.
    """
    from cxrsynth.audit.attacks.loss import loss_scores

    reference = context.reference
    if context.patients is None or len(context.patients) != len(context.images):
        raise CxrsynthError("reference-model attacks need the patient id of every audited image",
                            "run them through cxrsynth audit (audit_run), which provides them")
    shared = reference.has_statistics(context)
    statistics = reference.statistics(context)
    target = loss_scores(context)
    choices = {
        "timestep": context.settings.fixed_timestep, "noise_draws": context.settings.noise_draws,
        "reference_models": reference.count, "reference_steps": reference.steps,
        "reference_nfe_per_image": statistics.image_forwards / len(context.images),
        "reference_statistics_shared": shared,
    }
    return target, statistics.audited, reference.in_mask(context.patients), choices


@register_attack(
    "lira", access="white-box", member_if="higher",
    description="LiRA online: Gaussian likelihood ratio of the log loss, in vs out reference models",
    nfe_per_image=lambda settings: settings.noise_draws, needs=(NEEDS_MODEL, NEEDS_REFERENCE),
)
def lira_scores(context: AttackContext) -> np.ndarray:
    """Online LiRA score per audited image (see the module docstring)."""
    target, reference, in_mask, choices = reference_inputs(context)
    per_image = use_per_image_variance(in_mask)
    context.choices["lira"] = {**choices, "statistic": "log loss", "variance": "per image" if per_image else "global",
                               "min_in_models": int(in_mask.sum(axis=0).min()),
                               "min_out_models": int((~in_mask).sum(axis=0).min())}
    return lira_online(log_statistic(target), log_statistic(reference), in_mask, per_image)


@register_attack(
    "lira_offline", access="white-box", member_if="higher",
    description="LiRA offline: one-sided Gaussian test of the log loss against out reference models",
    nfe_per_image=lambda settings: settings.noise_draws, needs=(NEEDS_MODEL, NEEDS_REFERENCE),
)
def lira_offline_scores(context: AttackContext) -> np.ndarray:
    """Offline LiRA score per audited image (see the module docstring)."""
    target, reference, in_mask, choices = reference_inputs(context)
    per_image = use_per_image_variance(in_mask, (False,))
    context.choices["lira_offline"] = {**choices, "statistic": "log loss",
                                       "variance": "per image" if per_image else "global",
                                       "min_out_models": int((~in_mask).sum(axis=0).min())}
    return lira_offline(log_statistic(target), log_statistic(reference), in_mask, per_image)
