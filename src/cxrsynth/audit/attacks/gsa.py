"""``gsa``: Gradient attack based on Subsampling and Aggregation (Pang et al., "White-box Membership
Inference Attacks against Diffusion Models", PoPETs 2025).

Features. For each audited image, the ε-prediction loss ℓ_t at the timesteps of
:func:`gsa_timesteps` (5, one in the middle of each fifth of the schedule: t = 100, 300, 500, 700,
900 for 1,000 steps), each with its own noise draw, fixed per image (noise stream
:data:`NOISE_STREAM`). Gradients are taken per **parameter tensor** (each weight and bias of the
UNet, L = 182 for the tiny preset), as the authors' code does (``torch.norm(p.grad)`` for
``p in model.parameters()``, ``DDPM/gen_l2_gradients_DDPM.py`` of github py85252876/GSA): it needs no
choice of block boundaries, and the classifier can weigh each tensor on its own.

* GSA₁: the L2 norm per parameter tensor of ∇θ (1/T Σ_t ℓ_t), the gradient of the loss averaged
  over the timesteps (L features; the authors' code gets it from one backward of the T copies).
* GSA₂: the L2 norm per parameter tensor of each ∇θ ℓ_t, concatenated over timesteps (T·L features).

Both come from the same per-(image, timestep) gradients
(:meth:`cxrsynth.audit.whitebox.WhiteBoxModel.loss_gradient_norms`), so one attack computes both
and **chooses the variant on the calibration half**: the one whose out-of-fold calibration AUC is
higher (ties: GSA₁). Registering them as two attacks would pay for the gradients twice.

Attack model. The paper trains XGBoost on shadow-model gradients; here a logistic regression on
standardised log-norms is fitted on the calibration half only (scikit-learn; far fewer
calibration images than the paper's shadow sets, where boosting over hundreds of features
overfits). Calibration rows are scored out-of-fold (5-fold cross-fitting, as ``blind`` does) so
that the runner's calibration-half direction and threshold choices stay honest; evaluation rows
are scored by the model fitted on the whole calibration half. Score: membership probability,
higher ⇒ member.

Cost: T = 5 forward **and** 5 backward passes per image (NFE reported: 5 forwards; each also
costs a backward, about twice a forward), per-sample gradients by ``torch.func`` in chunks of
:func:`chunk_images` images so that memory stays bounded.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from cxrsynth.audit.crossfit import cross_fitted_probabilities
from cxrsynth.audit.registry import NEEDS_MODEL, AttackContext, register_attack
from cxrsynth.errors import CxrsynthError

NOISE_STREAM = 107
"""Noise stream of GSA's draws (draw k for the k-th timestep)."""
TIMESTEPS_COUNT = 5
"""Timesteps per image (the paper's setting)."""
REGULARISATION_C = 0.1
"""Inverse L2 strength of the logistic regression on standardised log-norms."""
GRADIENT_MEMORY_BYTES = 32 * 2**20
"""Budget of one chunk's per-sample gradient copies. Activations of the vmapped forward/backward cost
more than the gradients (tiny preset at 32²: +170 MiB peak for 1 image × 5 timesteps, +600 MiB for 4,
+1.7 GiB for 12), so the budget is small: one image per chunk for the tiny preset and larger models."""
LOG_FLOOR = 1e-30
"""Added before the logarithm: a parameter tensor can get an exactly zero gradient."""


def gsa_timesteps(num_train_timesteps: int, count: int = TIMESTEPS_COUNT) -> tuple[int, ...]:
    """``count`` timesteps evenly spread over the schedule: the middle of each of ``count`` equal bins."""
    return tuple(int((2 * k + 1) * num_train_timesteps // (2 * count)) for k in range(count))


def chunk_images(parameter_count: int, steps: int, budget: int | None = None) -> int:
    """Images per vmapped chunk so that ``images × steps`` float32 gradient copies fit ``budget`` bytes
    (default :data:`GRADIENT_MEMORY_BYTES`); at least 1."""
    budget = GRADIENT_MEMORY_BYTES if budget is None else budget
    return max(1, int(budget // (4 * max(1, parameter_count) * steps)))


def gradient_features(context: AttackContext) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """GSA₁ and GSA₂ features of every audited image (log of per-parameter-tensor gradient norms).

    Returns:
        ``(gsa1 N×L, gsa2 N×(T·L), timesteps)``; GSA₂ columns are timestep-major.
    """
    model, settings = context.model, context.settings
    steps = gsa_timesteps(model.num_train_timesteps)
    parameter_count = sum(p.numel() for p in model.unet.parameters())
    chunk = chunk_images(parameter_count, len(steps))
    first, second = [], []
    with warnings.catch_warnings():
        # torch.func has no batching rule for CPU flash attention yet: correct, only slower
        warnings.filterwarnings("ignore", message="There is a performance drop")
        for rows, clean in model.batches(context.images, settings.batch_size):
            noise = torch.stack([model.noise(rows, tuple(clean.shape[1:]), NOISE_STREAM, k) for k in range(len(steps))],
                                dim=1)
            per_timestep, of_mean = model.loss_gradient_norms(clean, steps, rows, noise, chunk_images=chunk)
            first.append(of_mean.double().numpy())
            second.append(per_timestep.flatten(1).double().numpy())
    gsa1 = np.log(np.concatenate(first) + LOG_FLOOR)
    gsa2 = np.log(np.concatenate(second) + LOG_FLOOR)
    return gsa1, gsa2, steps


def _classifier(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=REGULARISATION_C, max_iter=5000, random_state=seed))


@register_attack(
    "gsa", access="white-box", member_if="higher",
    description="GSA (Pang et al. 2025): per-layer loss-gradient norms at 5 timesteps, logistic regression "
                "fitted on calibration; GSA1/GSA2 chosen on calibration (each forward also costs a backward)",
    nfe_per_image=lambda settings: float(TIMESTEPS_COUNT), needs=(NEEDS_MODEL,),
)
def gsa_scores(context: AttackContext) -> np.ndarray:
    """GSA membership probability per audited image (see the module docstring)."""
    from sklearn.metrics import roc_auc_score

    rows = np.asarray(context.calibration_rows, dtype=np.int64)
    labels = np.asarray(context.calibration_is_member).astype(int)
    if len(np.unique(labels)) < 2:
        raise CxrsynthError("gsa fits its classifier on the calibration half, which needs members and non-members",
                            "audit with cxrsynth audit, or use an attack without a fitted model (e.g. loss)")
    seed = context.settings.seed
    gsa1, gsa2, steps = gradient_features(context)
    results = {name: cross_fitted_probabilities(lambda: _classifier(seed), features, rows, labels, context.patients, seed)
               for name, features in (("gsa1", gsa1), ("gsa2", gsa2))}
    auc = {name: float(roc_auc_score(labels, scores[rows])) for name, (scores, _) in results.items()}
    variant = "gsa2" if auc["gsa2"] > auc["gsa1"] else "gsa1"
    context.choices["gsa"] = {
        "variant": variant, "timesteps": list(steps), "layers": int(gsa1.shape[1]),
        "calibration_auc": auc, "out_of_fold": bool(results[variant][1]),
        "backward_passes_per_image": float(len(steps)),
    }
    return results[variant][0]
