"""``rmia`` and ``rmia_offline``: the relative membership-inference attack (Zarifzadeh et al., 2024).

RMIA compares the likelihood ratio of an image x with those of population images z that no model
trained on: LR(x, z) = [Pr(x|θ) / Pr(x)] / [Pr(z|θ) / Pr(z)], with Pr(·) the average of Pr(·|θ')
over the reference models; score = fraction of the z with LR(x, z) ≥ γ. Higher ⇒ member.

Likelihood proxy: Pr(x|θ) = exp(−L_θ(x) / T), with L the ``loss`` attack's ε-prediction error (same t,
noise draws and noise stream as ``loss`` and ``lira``). Why: the DDPM evidence bound is, at one
timestep, an affine decreasing function of that error, so exp(−L/T) is a tempered likelihood at t;
and since L ≥ 0 the proxy lies in (0, 1] like the class probability RMIA was defined on, which is
what the offline correction below assumes. The temperature T is chosen on the calibration half among
:data:`TEMPERATURE_FACTORS` × the median reference loss (by calibration AUC, first best).

* ``rmia`` (online): Pr(x) = mean over all K reference models (half of them trained on x's patient).
* ``rmia_offline``: only the models that did not train on x's patient, with the paper's linear
  correction Pr(x) = ½ [(1 + a) · mean_out Pr(x|θ') + (1 − a)]; a is chosen on the calibration half
  among :data:`OFFLINE_A` (the paper fits it on a reference model used as target; the calibration
  half is the membership this audit may fit on).

The population z are ``test`` images (in no model; at most 500, seeded), so Pr(z) averages over all K
models in both variants (with the same correction offline). γ = 1 (:data:`GAMMA`). Ranking by the score
is ranking by Pr(x|θ)/Pr(x) coarsened to 1/|Z| steps: at low FPR ties among the strongest members limit
the TPR that can be read off — ``selected.n_population`` says |Z|.

NFE: target forwards counted by the runner (``--noise-draws`` per audited image plus the population's
share); reference forwards in ``selected.reference_nfe_per_image`` (shared with ``lira``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from cxrsynth.audit.attacks.lira import reference_inputs
from cxrsynth.audit.registry import NEEDS_MODEL, NEEDS_POPULATION, NEEDS_REFERENCE, AttackContext, register_attack
from cxrsynth.errors import CxrsynthError

GAMMA = 1.0
TEMPERATURE_FACTORS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
OFFLINE_A: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def log_reference_probability(log_probabilities: np.ndarray, mask: np.ndarray | None, a: float | None) -> np.ndarray:
    """log Pr(x) per image from K × N log Pr(x|θ_k).

    Args:
        log_probabilities: K × N.
        mask: K × N models to average over (None: all).
        a: None: the plain mean; else the offline correction ½ [(1 + a) · mean + (1 − a)].
    """
    if mask is None:
        mask = np.ones(log_probabilities.shape, dtype=bool)
    counts = mask.sum(axis=0)
    if np.any(counts == 0):
        raise CxrsynthError("RMIA: an image has no reference model to average over",
                            "train more reference models (--reference-models 4 or more)")
    log_mean = logsumexp(np.where(mask, log_probabilities, -np.inf), axis=0) - np.log(counts)
    if a is None:
        return log_mean
    return np.log(0.5) + np.logaddexp(np.log1p(a) + log_mean, np.log(1.0 - a) if a < 1 else -np.inf)


def rmia_scores(target_x: np.ndarray, reference_x: np.ndarray, target_z: np.ndarray, reference_z: np.ndarray,
                temperature: float, gamma: float = GAMMA, out_mask_x: np.ndarray | None = None,
                a: float | None = None) -> np.ndarray:
    """RMIA score per image x: the fraction of population z with LR(x, z) ≥ γ (higher ⇒ member).

    Args:
        target_x: N losses of the audited model on x; reference_x: K × N on the reference models.
        target_z: Z losses of the audited model on z; reference_z: K × Z (z is in no model).
        temperature: T of Pr(·|θ) = exp(−L/T).
        gamma: γ.
        out_mask_x: offline: K × N, True where model k did not train on x (None: online, all models).
        a: offline correction (with ``out_mask_x``).

    Raises:
        CxrsynthError: without population images, or for T ≤ 0.
    """
    if len(target_z) == 0:
        raise CxrsynthError("RMIA needs population images that no model trained on (the test split), and the data "
                            "has none", "prepare the data with a test split (--test-fraction), or leave rmia out "
                            "with --attacks")
    if not temperature > 0:
        raise CxrsynthError(f"RMIA temperature must be > 0, got {temperature}")
    offline = out_mask_x is not None
    ratio_x = -np.asarray(target_x) / temperature - log_reference_probability(
        -np.asarray(reference_x) / temperature, out_mask_x, a if offline else None)
    ratio_z = -np.asarray(target_z) / temperature - log_reference_probability(
        -np.asarray(reference_z) / temperature, None, a if offline else None)
    ordered = np.sort(ratio_z)
    return np.searchsorted(ordered, ratio_x - np.log(gamma), side="right") / len(ordered)


def choose_on_calibration(candidates: list[dict], score, context: AttackContext) -> tuple[dict, np.ndarray]:
    """The candidate settings with the best calibration AUC (first best), and its scores on every image."""
    rows, members = context.calibration_rows, context.calibration_is_member
    best, best_scores, best_auc = None, None, -np.inf
    for candidate in candidates:
        scores = score(**candidate)
        auc = roc_auc_score(members, scores[rows]) if 0 < members.sum() < len(members) else 0.5
        if auc > best_auc:
            best, best_scores, best_auc = {**candidate, "calibration_auc": float(auc)}, scores, auc
    return best, best_scores


def _inputs(context: AttackContext):
    target, reference, in_mask, choices = reference_inputs(context)
    statistics = context.reference.statistics(context)
    target_z = context.reference.target_population_losses(context)
    scale = max(float(np.median(reference)), 1e-12)
    choices.update(n_population=len(target_z), gamma=GAMMA, likelihood="exp(-loss/T)",
                   median_reference_loss=scale)
    return target, reference, in_mask, target_z, statistics.population, scale, choices


@register_attack(
    "rmia", access="white-box", member_if="higher",
    description="RMIA online: fraction of test images z with LR(x, z) ≥ 1, Pr(x|θ) = exp(−loss/T)",
    nfe_per_image=lambda settings: settings.noise_draws, needs=(NEEDS_MODEL, NEEDS_REFERENCE, NEEDS_POPULATION),
)
def rmia_online_scores(context: AttackContext) -> np.ndarray:
    """Online RMIA score per audited image (see the module docstring)."""
    target, reference, _, target_z, reference_z, scale, choices = _inputs(context)
    candidates = [{"temperature": factor * scale} for factor in TEMPERATURE_FACTORS]
    best, scores = choose_on_calibration(
        candidates, lambda temperature: rmia_scores(target, reference, target_z, reference_z, temperature), context)
    context.choices["rmia"] = {**choices, **best}
    return scores


@register_attack(
    "rmia_offline", access="white-box", member_if="higher",
    description="RMIA offline: out reference models only, Pr(x) with the paper's a correction",
    nfe_per_image=lambda settings: settings.noise_draws, needs=(NEEDS_MODEL, NEEDS_REFERENCE, NEEDS_POPULATION),
)
def rmia_offline_scores(context: AttackContext) -> np.ndarray:
    """Offline RMIA score per audited image (see the module docstring)."""
    target, reference, in_mask, target_z, reference_z, scale, choices = _inputs(context)
    candidates = [{"temperature": factor * scale, "a": a} for factor in TEMPERATURE_FACTORS for a in OFFLINE_A]
    best, scores = choose_on_calibration(
        candidates,
        lambda temperature, a: rmia_scores(target, reference, target_z, reference_z, temperature,
                                           out_mask_x=~in_mask, a=a),
        context)
    context.choices["rmia_offline"] = {**choices, **best}
    return scores
