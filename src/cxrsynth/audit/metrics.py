"""Membership-inference metrics: ROC/AUC, exact TPR at low FPR, calibrated thresholds, ε lower bounds.

Conventions
-----------
* ``labels``: 1 for a member (trained on), 0 for a non-member (``holdout``).
* ``membership``: a score where **higher means "member"**. An attack whose published score is
  "lower ⇒ member" (a loss) is turned into one by negation (:func:`membership_scores`); that is
  the *published direction*. The *chosen direction* is picked on the calibration half
  (:func:`choose_direction`) and may be the reverse, as an attacker with calibration data would do.

TPR at a target FPR is **exact and conservative**: the largest TPR of any threshold on the
empirical ROC whose FPR does not exceed the target. Tied scores move together (a threshold can
not split a tie), and there is no interpolation between ROC points, so the value is attained by a
real deterministic threshold. When the number of non-members ``n`` is below ``1/target`` the
smallest non-zero FPR measurable is ``1/n > target``; the TPR is then reported as None with a note.

Thresholds are always fixed on the calibration half and measured once on the evaluation half:
TPR at 1%, 0.1% and 0% FPR each at the calibration threshold for that FPR (:func:`low_fpr_threshold`;
the evaluation-half optimum is kept only as ``optimistic_tpr``), the ε bound at the calibration
threshold that maximises the bound itself (:func:`epsilon_threshold`), and the balanced accuracy
at the balanced-accuracy threshold (:func:`best_threshold`), which is used for nothing else: it
sits mid-distribution and misses leaks that show only at low FPR.

The ε lower bound follows Jagielski et al. (NeurIPS 2020) and Nasr et al. (2021): a DP mechanism
with (ε, δ) forces ``TPR ≤ e^ε·FPR + δ`` and ``TNR ≤ e^ε·FNR + δ`` for every test, so for the
threshold fixed on the calibration half, with one-sided 95% Clopper–Pearson bounds on the
evaluation half, ``ε ≥ ln((TPR_low − δ)/FPR_high)`` and ``ε ≥ ln((TNR_low − δ)/FNR_high)``. The
larger is reported, 0 when neither is positive. Each of the two rate bounds is one-sided at 95%,
so the pair, and with it the ε bound, holds with at least 90% joint confidence (Bonferroni).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxrsynth.errors import CxrsynthError

LOWER, HIGHER = "lower", "higher"
"""Directions: which score values an attack calls "member"."""

DEFAULT_DELTA = 1e-5
"""δ of the ε lower bound when the run has no DP settings (``privacy.json``)."""

CONFIDENCE = 0.95
"""One-sided confidence of each Clopper–Pearson bound."""

BOOTSTRAP_RESAMPLES = 1000


def _check_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise CxrsynthError(f"labels {y.shape} and scores {s.shape} must be 1-D arrays of the same length")
    if not np.all(np.isfinite(s)):
        raise CxrsynthError("membership scores contain NaN or infinite values")
    if y.all() or not y.any():
        raise CxrsynthError("membership metrics need at least one member and one non-member")
    return y, s


def membership_scores(scores: np.ndarray, member_if: str) -> np.ndarray:
    """Scores oriented so that higher means member: ``-scores`` for ``lower``, ``scores`` for ``higher``.

    Raises:
        CxrsynthError: for another direction name.
    """
    if member_if not in (LOWER, HIGHER):
        raise CxrsynthError(f"unknown score direction {member_if!r}", f"use {LOWER!r} or {HIGHER!r}")
    values = np.asarray(scores, dtype=np.float64)
    return -values if member_if == LOWER else values


def roc_auc(labels: np.ndarray, membership: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn; ties count one half).

    Args:
        labels: 1/True for members.
        membership: scores, higher ⇒ member.

    Raises:
        CxrsynthError: without both classes, or for non-finite scores.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _check_binary(labels, membership)
    return float(roc_auc_score(y, s))


def roc_points(labels: np.ndarray, membership: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every point of the empirical ROC: ``(fpr, tpr, thresholds)``, one per distinct score.

    Point ``i`` is the test "member if score ≥ thresholds[i]"; the first point (threshold +inf)
    is (0, 0). Tied scores form one point.
    """
    from sklearn.metrics import roc_curve

    y, s = _check_binary(labels, membership)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thresholds


def tpr_at_fpr(labels: np.ndarray, membership: np.ndarray, target_fpr: float) -> float:
    """Largest TPR of a threshold whose empirical FPR is ≤ ``target_fpr`` (exact, no interpolation).

    Raises:
        CxrsynthError: for a target outside [0, 1], or invalid labels/scores.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise CxrsynthError(f"target FPR {target_fpr} must be within [0, 1]")
    fpr, tpr, _ = roc_points(labels, membership)
    # Exact comparison on counts avoids float round-off at e.g. 1/100 == 0.01.
    n_negative = int((~np.asarray(labels).astype(bool)).sum())
    false_positives = np.rint(fpr * n_negative)
    allowed = false_positives <= math.floor(target_fpr * n_negative + 1e-9)
    return float(tpr[allowed].max())


def _cp_lower(successes, trials, confidence: float) -> np.ndarray:
    from scipy.stats import beta

    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(k > 0, beta.ppf(1.0 - confidence, k, trials - k + 1), 0.0)


def _cp_upper(successes, trials, confidence: float) -> np.ndarray:
    from scipy.stats import beta

    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(k < trials, beta.ppf(confidence, k + 1, trials - k), 1.0)


def clopper_pearson_lower(successes: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """One-sided lower Clopper–Pearson bound of a binomial proportion (0 when there are no successes)."""
    _check_counts(successes, trials)
    return float(_cp_lower(successes, trials, confidence))


def clopper_pearson_upper(successes: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """One-sided upper Clopper–Pearson bound of a binomial proportion (1 when all trials succeed)."""
    _check_counts(successes, trials)
    return float(_cp_upper(successes, trials, confidence))


def _check_counts(successes: int, trials: int) -> None:
    if trials < 1 or not 0 <= successes <= trials:
        raise CxrsynthError(f"invalid binomial counts: {successes} successes in {trials} trials")


def _log_ratio(numerator: float, denominator: float) -> float:
    if numerator <= 0.0:
        return 0.0
    return max(0.0, math.log(numerator / denominator))


@dataclass(frozen=True)
class EpsilonBound:
    """Empirical ε lower bound of one fixed threshold, with the bounds it came from.

    Attributes:
        epsilon: max of the two forms, 0 when neither is positive.
        tpr_low, fpr_high: one-sided Clopper–Pearson bounds of TPR (lower) and FPR (upper).
        tnr_low, fnr_high: the same for TNR and FNR (the symmetric form).
        delta: the δ used.
    """

    epsilon: float
    tpr_low: float
    fpr_high: float
    tnr_low: float
    fnr_high: float
    delta: float


def epsilon_lower_bound(
    true_positives: int, n_members: int, false_positives: int, n_nonmembers: int,
    delta: float = DEFAULT_DELTA, confidence: float = CONFIDENCE,
) -> EpsilonBound:
    """ε ≥ max(ln((TPR_low − δ)/FPR_high), ln((TNR_low − δ)/FNR_high)), clipped at 0.

    Args:
        true_positives: members called members; n_members: members tested.
        false_positives: non-members called members; n_nonmembers: non-members tested.
        delta: δ of the (ε, δ) guarantee being tested.
        confidence: one-sided confidence of each Clopper–Pearson bound.

    Raises:
        CxrsynthError: for invalid counts or δ outside [0, 1).
    """
    if not 0.0 <= delta < 1.0:
        raise CxrsynthError(f"δ must be within [0, 1), got {delta}")
    _check_counts(true_positives, n_members)
    _check_counts(false_positives, n_nonmembers)
    tpr_low, fpr_high, tnr_low, fnr_high = (float(bound) for bound in _rate_bounds(
        true_positives, n_members, false_positives, n_nonmembers, confidence))
    epsilon = max(_log_ratio(tpr_low - delta, fpr_high), _log_ratio(tnr_low - delta, fnr_high))
    return EpsilonBound(epsilon, tpr_low, fpr_high, tnr_low, fnr_high, delta)


def _rate_bounds(true_positives, n_members: int, false_positives, n_nonmembers: int,
                 confidence: float) -> tuple:
    """One-sided Clopper–Pearson ``(TPR_low, FPR_high, TNR_low, FNR_high)``; counts may be arrays."""
    tp = np.asarray(true_positives, dtype=np.float64)
    fp = np.asarray(false_positives, dtype=np.float64)
    return (_cp_lower(tp, n_members, confidence), _cp_upper(fp, n_nonmembers, confidence),
            _cp_lower(n_nonmembers - fp, n_nonmembers, confidence), _cp_upper(n_members - tp, n_members, confidence))


def _bound_ratio(true_positives, n_members: int, false_positives, n_nonmembers: int,
                 delta: float, confidence: float) -> np.ndarray:
    """max((TPR_low − δ)/FPR_high, (TNR_low − δ)/FNR_high): e^ε of the bound before clipping at 0 (vectorised)."""
    tpr_low, fpr_high, tnr_low, fnr_high = _rate_bounds(true_positives, n_members, false_positives, n_nonmembers,
                                                        confidence)
    return np.maximum((tpr_low - delta) / fpr_high, (tnr_low - delta) / fnr_high)


def calibration_tail_count(labels: np.ndarray, membership: np.ndarray) -> int:
    """Members scored strictly above every non-member (higher ⇒ member): what a low-FPR test can find."""
    labels = np.asarray(labels, dtype=bool)
    membership = np.asarray(membership, dtype=np.float64)
    return int(np.sum(membership[labels] > membership[~labels].max()))


def choose_tail_direction(labels: np.ndarray, scores: np.ndarray, auc_direction: str) -> str:
    """The direction of the low-FPR tail, chosen on these (calibration) scores.

    A leak confined to a few members barely moves the AUC, so the AUC's direction falls on the
    wrong side in a share of audits and a tail test then looks at the wrong end. The tail's
    direction is the one that puts more calibration members above every calibration non-member;
    ties keep ``auc_direction``.
    """
    other = LOWER if auc_direction == HIGHER else HIGHER
    counts = {direction: calibration_tail_count(labels, membership_scores(scores, direction))
              for direction in (auc_direction, other)}
    return other if counts[other] > counts[auc_direction] else auc_direction


def choose_direction(labels: np.ndarray, scores: np.ndarray, published: str) -> str:
    """The direction (``lower``/``higher`` ⇒ member) with AUC ≥ 0.5 on these (calibration) scores.

    Ties (AUC exactly 0.5) keep the published direction.
    """
    auc = roc_auc(labels, membership_scores(scores, published))
    if auc >= 0.5:
        return published
    return HIGHER if published == LOWER else LOWER


def _threshold_at(membership: np.ndarray, thresholds: np.ndarray, index: int) -> float:
    """The threshold of ROC point ``index``, placed halfway to the next lower score.

    Halfway, not on the score itself, so that unseen scores a hair below a calibration score fall on
    the same side; point 0 ("nobody is a member") is just above the largest score.
    """
    if math.isinf(thresholds[index]):
        return float(np.nextafter(np.max(membership), np.inf))
    if index + 1 < len(thresholds):
        return float((thresholds[index] + thresholds[index + 1]) / 2.0)
    return float(thresholds[index])


def best_threshold(labels: np.ndarray, membership: np.ndarray) -> float:
    """The threshold ("member if score ≥ t") with the highest balanced accuracy on these scores.

    Among equally good thresholds the highest (most conservative) is taken (see :func:`_threshold_at`).
    """
    fpr, tpr, thresholds = roc_points(labels, membership)
    balanced = (tpr + 1.0 - fpr) / 2.0
    best = int(np.flatnonzero(balanced >= balanced.max() - 1e-12)[0])
    return _threshold_at(membership, thresholds, best)


def epsilon_threshold(labels: np.ndarray, membership: np.ndarray, delta: float = DEFAULT_DELTA,
                      confidence: float = CONFIDENCE) -> float:
    """The threshold that maximises the ε lower bound itself on these (calibration) scores.

    Every ROC point is scored by the quantity inside the bound's logarithm,
    max((TPR_low − δ)/FPR_high, (TNR_low − δ)/FNR_high) with one-sided Clopper–Pearson bounds, as
    Jagielski et al. (2020) and Nasr et al. (2021) choose it. Unlike the balanced-accuracy threshold,
    which sits mid-distribution, it moves to the tail when a few members are identified perfectly;
    the ratio (not its clipped logarithm) is maximised, so a threshold is chosen even when no bound is
    positive on the calibration half. Ties go to the highest threshold.

    Raises:
        CxrsynthError: without both classes, or for non-finite scores.
    """
    y = np.asarray(labels).astype(bool)
    fpr, tpr, thresholds = roc_points(y, membership)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    true_positives, false_positives = np.rint(tpr * n_pos).astype(int), np.rint(fpr * n_neg).astype(int)
    ratios = _bound_ratio(true_positives, n_pos, false_positives, n_neg, delta, confidence)
    best = int(np.flatnonzero(ratios >= ratios.max() - 1e-12)[0])
    return _threshold_at(membership, thresholds, best)


def low_fpr_threshold(labels: np.ndarray, membership: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold whose FPR on these (calibration) scores is ≤ ``target_fpr`` (the most TPR).

    With fewer than 1/target non-members this is the threshold just above every non-member.

    Raises:
        CxrsynthError: for a target outside [0, 1], or invalid labels/scores.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise CxrsynthError(f"target FPR {target_fpr} must be within [0, 1]")
    y = np.asarray(labels).astype(bool)
    fpr, _, thresholds = roc_points(y, membership)
    false_positives = np.rint(fpr * int((~y).sum()))
    allowed = np.flatnonzero(false_positives <= math.floor(target_fpr * int((~y).sum()) + 1e-9))
    return _threshold_at(membership, thresholds, int(allowed[-1]))


def confusion_at(labels: np.ndarray, membership: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """``(true_positives, n_members, false_positives, n_nonmembers)`` of "member if score ≥ threshold"."""
    y = np.asarray(labels).astype(bool)
    called = np.asarray(membership, dtype=np.float64) >= threshold
    return int((called & y).sum()), int(y.sum()), int((called & ~y).sum()), int((~y).sum())


def rank_auc(labels: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """AUC along the last axis by the Mann–Whitney rank formula (ties count one half).

    Equal to :func:`roc_auc` for one row; vectorised over leading axes (one bootstrap resample per
    row), where scikit-learn's per-call validation would dominate. Rows with a single class give NaN.
    """
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    ranks = rankdata(np.asarray(membership, dtype=np.float64), axis=-1)
    positives = y.sum(axis=-1)
    negatives = y.shape[-1] - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * y).sum(axis=-1) - positives * (positives + 1) / 2.0) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def bootstrap_auc_interval(
    labels: np.ndarray, membership: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> list[float] | None:
    """95% percentile bootstrap interval of the AUC (images resampled with replacement).

    Resamples with a single class are ignored. The interval is the percentile interval of
    :mod:`cxrsynth.evaluate.bootstrap`.
    """
    from cxrsynth.evaluate.bootstrap import percentile_interval

    y, s = _check_binary(labels, membership)
    indices = np.random.default_rng(seed).integers(0, len(y), size=(resamples, len(y)))
    interval = percentile_interval(rank_auc(y[indices], s[indices]))
    # Round-off of the rank formula must not put an interval endpoint a hair below a perfect AUC.
    return None if interval is None else [float(np.clip(round(value, 12), 0.0, 1.0)) for value in interval]


TPR_TARGETS: dict[str, float] = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001, "tpr_at_zero_fpr": 0.0}
"""audit.json key → target FPR of the TPRs measured at thresholds fixed on the calibration half."""


def low_fpr_metrics(y_cal: np.ndarray, chosen_cal: np.ndarray, y_eval: np.ndarray, chosen_eval: np.ndarray,
                    target_fpr: float) -> dict:
    """TPR at a target FPR: threshold fixed on the calibration half, measured once on the evaluation half.

    Returns:
        ``threshold`` (oriented score), ``target_fpr``, ``tpr`` and ``fpr`` (evaluation half at that
        threshold: the FPR may exceed the target by chance), ``optimistic_tpr`` (the best TPR at
        FPR ≤ target chosen on the evaluation half itself: optimistic, the threshold sees the data
        it is scored on), ``measurable`` (False when the evaluation half has fewer than 1/target
        non-members: the smallest non-zero FPR it can measure is larger than the target).
    """
    threshold = low_fpr_threshold(y_cal, chosen_cal, target_fpr)
    tp, n_pos, fp, n_neg = confusion_at(y_eval, chosen_eval, threshold)
    return {
        "threshold": threshold, "target_fpr": target_fpr, "tpr": tp / n_pos, "fpr": fp / n_neg,
        "true_positives": tp, "false_positives": fp,
        "optimistic_tpr": tpr_at_fpr(y_eval, chosen_eval, target_fpr),
        "measurable": target_fpr == 0.0 or n_neg * target_fpr >= 1.0 - 1e-9,
    }


def attack_metrics(
    scores: np.ndarray,
    is_member: np.ndarray,
    is_calibration: np.ndarray,
    member_if: str,
    delta: float = DEFAULT_DELTA,
    seed: int = 0,
    fixed_direction: bool = False,
) -> dict:
    """Every number audit.json reports for one attack (see :mod:`cxrsynth.audit.runner`).

    The direction and every threshold are chosen on the calibration rows; every reported number is
    computed on the evaluation rows only: the AUC with its bootstrap interval, TPRs at 1%, 0.1% and
    0% FPR (thresholds fixed on calibration), the ε lower bound at the threshold that maximises the
    bound on calibration, the balanced accuracy at the calibration balanced-accuracy threshold, and
    the two tests that may raise the leak flag (:mod:`cxrsynth.audit.hypothesis`): ``p_value_auc``
    (one-sided Mann–Whitney) and ``p_value_tail`` (hypergeometric at the calibration zero-FPR
    threshold: a few members identified perfectly barely move the AUC, but not this test).

    Args:
        scores: the attack's raw scores, one per audited unit (published orientation).
        is_member: True for members.
        is_calibration: True for calibration rows, False for evaluation rows.
        member_if: the attack's published direction (``lower`` or ``higher`` ⇒ member).
        delta: δ for the ε lower bound.
        seed: seed of the bootstrap.
        fixed_direction: use ``member_if`` as it is instead of choosing the direction on calibration.

    Returns:
        A JSON-ready dict: ``auc``, ``auc_ci``, ``p_value_auc``, ``p_value_tail``, ``tpr_at_1pct_fpr``,
        ``tpr_at_0.1pct_fpr``, ``tpr_at_zero_fpr``, ``low_fpr``, ``published_direction``, ``direction``,
        ``threshold``, ``balanced_accuracy``, ``eps_threshold``, ``eps_lower_bound``, ``eps_bound``,
        ``n_eval_members``, ``n_eval_nonmembers``, ``notes``.

    Raises:
        CxrsynthError: when either half lacks members or non-members, or scores are not finite.
    """
    from cxrsynth.audit.hypothesis import mann_whitney_p, tail_p

    scores = np.asarray(scores, dtype=np.float64)
    members = np.asarray(is_member).astype(bool)
    calibration = np.asarray(is_calibration).astype(bool)
    evaluation = ~calibration
    y_cal, y_eval = members[calibration], members[evaluation]

    direction = member_if if fixed_direction else choose_direction(y_cal, scores[calibration], member_if)
    chosen = membership_scores(scores, direction)
    chosen_cal, chosen_eval = chosen[calibration], chosen[evaluation]
    _check_binary(y_eval, chosen_eval)

    balanced_threshold = best_threshold(y_cal, chosen_cal)
    tp_b, n_pos, fp_b, n_neg = confusion_at(y_eval, chosen_eval, balanced_threshold)
    eps_threshold = epsilon_threshold(y_cal, chosen_cal, delta)
    tp, _, fp, _ = confusion_at(y_eval, chosen_eval, eps_threshold)
    bound = epsilon_lower_bound(tp, n_pos, fp, n_neg, delta)
    sign = 1.0 if direction == HIGHER else -1.0
    tail_direction = direction if fixed_direction else choose_tail_direction(y_cal, scores[calibration], direction)
    tail = membership_scores(scores, tail_direction)
    low_fpr = {key: low_fpr_metrics(y_cal, tail[calibration], y_eval, tail[evaluation], target)
               for key, target in TPR_TARGETS.items()}
    zero = low_fpr["tpr_at_zero_fpr"]
    tail_sign = 1.0 if tail_direction == HIGHER else -1.0

    published = membership_scores(scores, member_if)[evaluation]
    result: dict = {
        "auc": roc_auc(y_eval, published),
        "auc_ci": bootstrap_auc_interval(y_eval, published, seed=seed),
        "p_value_auc": mann_whitney_p(y_eval, chosen_eval),
        "p_value_tail": tail_p(zero["true_positives"], n_pos, zero["false_positives"], n_neg),
        "published_direction": member_if,
        "direction": direction,
        "tail_direction": tail_direction,
        "threshold": sign * balanced_threshold,
        "balanced_accuracy": (tp_b / n_pos + (n_neg - fp_b) / n_neg) / 2.0,
        "eps_threshold": sign * eps_threshold,
        "eps_lower_bound": bound.epsilon,
        "eps_bound": {
            "tpr_low": bound.tpr_low, "fpr_high": bound.fpr_high, "tnr_low": bound.tnr_low,
            "fnr_high": bound.fnr_high, "true_positives": tp, "false_positives": fp,
        },
        "n_eval_members": n_pos,
        "n_eval_nonmembers": n_neg,
        "low_fpr": {},
        "notes": [],
    }
    for key, target in TPR_TARGETS.items():
        measured = low_fpr[key]
        measured["threshold"] *= tail_sign
        result["low_fpr"][key] = measured
        result[key] = measured["tpr"] if measured["measurable"] else None
        if not measured["measurable"]:
            result["notes"].append(
                f"TPR at {target:.1%} FPR needs at least {math.ceil(1 / target)} evaluation non-members "
                f"(found {n_neg}; the smallest measurable non-zero FPR is 1/{n_neg})"
            )
    if tail_direction != direction:
        result["notes"].append(
            f"on the calibration half more members stood above every non-member in the {tail_direction} direction, "
            f"so the TPRs at low FPR and the tail test use it (the AUC-based numbers use {direction})"
        )
    if direction != member_if:
        result["notes"].append(
            f"the published score calls {member_if} values members; on the calibration half members scored "
            f"{direction}, so thresholds, TPRs, balanced accuracy, ε and the tests use the {direction} direction"
        )
    return result
