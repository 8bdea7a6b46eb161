"""Hypothesis tests behind the audit's leak flag, their family-wise control, and the audit's power.

Every test here has the same null hypothesis, "nothing leaks": what the model and its synthetic
images reveal does not depend on which patients of the pool were trained on. Because ``member``
and ``holdout`` patients are a random split of one pool, the null makes the member/holdout labels
*exchangeable* given everything else, and each test below is exact (or conservative) under that
exchangeability alone — no independence between images, no equal images per patient assumed.

* :func:`mann_whitney_p` — members score higher (AUC > 1/2) on the evaluation half, one image per
  patient, direction fixed on the calibration half.
* :func:`tail_p` — more members than chance above a threshold fixed on the calibration half
  (hypergeometric, i.e. one-sided Fisher exact test): the test for leaks that show only at low
  false-positive rates (a few memorised members), where the AUC barely moves.
* :func:`linked_patients_p` — links of synthetic images to member patients against random
  relabellings of the patients: re-identification, distance to closest record and near-copies.

:func:`holm` controls the family-wise error of the flag (Holm–Bonferroni, valid under any
dependence between the tests). :func:`minimum_detectable_auc` / :func:`minimum_detectable_tpr`
state the audit's power: what it would have missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxrsynth.errors import CxrsynthError

FAMILY_ALPHA = 0.05
"""Family-wise error rate of ``leak_detected``: at most 5% of audits of a leak-free model flag a leak."""

POWER = 0.8
"""Power at which the minimum detectable effects are stated."""

PERMUTATIONS = 9999
"""Random relabellings of a permutation test (p resolution 1e-4)."""

EXACT_MANN_WHITNEY_MAX = 50
"""Largest group for which the Mann–Whitney null distribution is computed exactly (no ties)."""


TIED_PERMUTATIONS = 9999
"""Random relabellings of the Mann–Whitney test when scores are tied (smallest p: 1/10,000)."""


def _tied_rank_sum_p(members: np.ndarray, others: np.ndarray, permutations: int = TIED_PERMUTATIONS) -> float:
    """Monte Carlo permutation p of the members' mid-rank sum, (1 + b)/(1 + B): valid with any ties."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([members, others]))
    observed = ranks[: len(members)].sum()
    rng = np.random.default_rng(0)  # a fixed stream: the same scores always give the same p
    at_least, chunk = 0, 500
    for start in range(0, permutations, chunk):
        rows = min(chunk, permutations - start)
        shuffled = rng.permuted(np.broadcast_to(ranks, (rows, len(ranks))), axis=1)
        at_least += int(np.sum(shuffled[:, : len(members)].sum(axis=1) >= observed - 1e-9))
    return (1 + at_least) / (1 + permutations)


def mann_whitney_p(labels: np.ndarray, membership: np.ndarray) -> float:
    """One-sided p of "members score higher" (Mann–Whitney U).

    Args:
        labels: 1/True for members.
        membership: scores, higher ⇒ member (the direction fixed on other data).

    Returns:
        The p-value, valid under exchangeable labels: exact for tie-free groups of at most 50, the
        normal approximation for larger tie-free groups, and a permutation test of the mid-rank sum
        (:data:`TIED_PERMUTATIONS` relabellings) whenever scores are tied — the normal approximation
        with tie correction rejected up to 2.5× too often with two-valued scores (e.g. 12.4% at
        5% for 250 vs 250).

    Raises:
        CxrsynthError: without both classes.
    """
    from scipy.stats import mannwhitneyu

    y = np.asarray(labels).astype(bool)
    s = np.asarray(membership, dtype=np.float64)
    if y.all() or not y.any():
        raise CxrsynthError("the Mann–Whitney test needs at least one member and one non-member")
    members, others = s[y], s[~y]
    if len(np.unique(s)) < len(s):
        return _tied_rank_sum_p(members, others)
    exact = max(len(members), len(others)) <= EXACT_MANN_WHITNEY_MAX
    result = mannwhitneyu(members, others, alternative="greater", method="exact" if exact else "asymptotic")
    return float(result.pvalue)


def tail_p(true_positives: int, n_members: int, false_positives: int, n_nonmembers: int) -> float:
    """One-sided p of "more members than chance among those called members" (hypergeometric).

    With the threshold fixed beforehand, under exchangeable labels the members among the
    ``true_positives + false_positives`` called are hypergeometric; the p-value is
    P(X ≥ true_positives). Nobody called gives 1.

    Raises:
        CxrsynthError: for counts outside their groups.
    """
    from scipy.stats import hypergeom

    if not (0 <= true_positives <= n_members and 0 <= false_positives <= n_nonmembers) or min(n_members, n_nonmembers) < 1:
        raise CxrsynthError(f"invalid counts {true_positives}/{n_members} members, {false_positives}/{n_nonmembers} non-members")
    called = true_positives + false_positives
    if called == 0:
        return 1.0
    return float(hypergeom.sf(true_positives - 1, n_members + n_nonmembers, n_members, called))


def _link_counts(linked_patients: np.ndarray, pool_patients: np.ndarray, pool_is_member: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Links per linked patient and whether that patient is a member.

    Raises:
        CxrsynthError: for a linked patient outside the pool.
    """
    lookup = {str(patient): bool(member) for patient, member in zip(np.asarray(pool_patients).tolist(),
                                                                     np.asarray(pool_is_member).tolist())}
    linked, counts = np.unique(np.asarray(linked_patients).astype(str), return_counts=True)
    missing = [patient for patient in linked if patient not in lookup]
    if missing:
        raise CxrsynthError(f"linked patient {missing[0]!r} is not in the member/holdout pool")
    return counts.astype(np.float64), np.array([lookup[patient] for patient in linked], dtype=bool)


def _relabelling_p(counts: np.ndarray, members: np.ndarray, n_pool: int, n_pool_members: int,
                   resamples: int, seed: int) -> float:
    observed = float(counts[members].sum())
    rng = np.random.default_rng([seed, 89])
    # The linked patients' labels under a uniformly random choice of n_pool_members of the n_pool
    # patients, drawn one patient at a time without replacement, vectorised over relabellings.
    remaining_members = np.full(resamples, n_pool_members, dtype=np.int64)
    statistic = np.zeros(resamples)
    for position, weight in enumerate(counts):
        is_member = rng.random(resamples) * (n_pool - position) < remaining_members
        statistic += weight * is_member
        remaining_members -= is_member
    exceed = int((statistic >= observed - 1e-9).sum())
    return (1.0 + exceed) / (1.0 + resamples)


def linked_patients_p(linked_patients: np.ndarray, pool_patients: np.ndarray, pool_is_member: np.ndarray,
                      resamples: int = PERMUTATIONS, seed: int = 0) -> float:
    """p of "more synthetic images linked to member patients than under a random relabelling of the pool".

    The statistic is the number of links (a synthetic image linked to, nearest to, or copying a
    patient) that point at member patients. Under the null every assignment of the member labels to
    the pool's patients, with the same number of members, is equally likely; labels travel with whole
    patients, so patients with many images, and samples that crowd onto one patient, are handled
    exactly (a binomial test over images is not valid for either).

    Args:
        linked_patients: the pool patient each (linked) synthetic image points at; may be empty.
        pool_patients: every patient that could have been linked, once each.
        pool_is_member: whether each pool patient is a member.
        resamples: random relabellings.
        seed: seed of the relabellings.

    Returns:
        (1 + #{relabellings with a statistic ≥ the observed one}) / (1 + resamples): a valid p-value;
        1 when nothing is linked.

    Raises:
        CxrsynthError: for a linked patient outside the pool, or a pool without both groups.
    """
    pool_is_member = np.asarray(pool_is_member).astype(bool)
    if pool_is_member.all() or not pool_is_member.any():
        raise CxrsynthError("a relabelling test needs member and holdout patients in its pool")
    if len(linked_patients) == 0:
        return 1.0
    if len(set(np.asarray(pool_patients).astype(str).tolist())) != len(pool_is_member):
        raise CxrsynthError("the relabelling pool must list each patient once")
    counts, members = _link_counts(linked_patients, pool_patients, pool_is_member)
    return _relabelling_p(counts, members, len(pool_is_member), int(pool_is_member.sum()), resamples, seed)


@dataclass(frozen=True)
class HolmResult:
    """One test of the family after Holm–Bonferroni.

    Attributes:
        name: which test (e.g. ``loss:auc``).
        p_value: its own p-value.
        adjusted_p_value: Holm-adjusted p (reject when ≤ α).
        rejected: whether it is rejected at the family-wise level.
    """

    name: str
    p_value: float
    adjusted_p_value: float
    rejected: bool


def holm(p_values: dict[str, float], alpha: float = FAMILY_ALPHA) -> list[HolmResult]:
    """Holm–Bonferroni over ``p_values`` (name → p): family-wise error ≤ ``alpha`` under any dependence.

    Returns:
        One :class:`HolmResult` per test, in the order given.

    Raises:
        CxrsynthError: for a p-value outside [0, 1] or NaN, or ``alpha`` outside (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise CxrsynthError(f"family-wise α must be within (0, 1), got {alpha}")
    names = list(p_values)
    values = np.array([p_values[name] for name in names], dtype=np.float64)
    if np.any(~np.isfinite(values)) or np.any(values < 0) or np.any(values > 1):
        raise CxrsynthError(f"p-values must lie in [0, 1]: {p_values}")
    m = len(values)
    order = np.argsort(values, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return [HolmResult(name, float(values[i]), float(adjusted[i]), bool(adjusted[i] <= alpha)) for i, name in enumerate(names)]


def _auc_null_sd(n_members: int, n_nonmembers: int) -> float:
    return math.sqrt((n_members + n_nonmembers + 1) / (12.0 * n_members * n_nonmembers))


def _auc_sd(auc: float, n_members: int, n_nonmembers: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC estimate."""
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    variance = (auc * (1 - auc) + (n_members - 1) * (q1 - auc * auc) + (n_nonmembers - 1) * (q2 - auc * auc))
    return math.sqrt(max(variance, 0.0) / (n_members * n_nonmembers))


def minimum_detectable_auc(n_members: int, n_nonmembers: int, alpha: float, power: float = POWER) -> float | None:
    """Smallest AUC that the one-sided Mann–Whitney test at level ``alpha`` detects with ``power``.

    Normal approximation: the AUC where ``z_{1−α}·SE₀ + z_{power}·SE(AUC) = AUC − 1/2`` (SE₀ the null
    standard error, SE(AUC) Hanley–McNeil). None when even AUC 1 would not be detected.

    Raises:
        CxrsynthError: for empty groups or α, power outside (0, 1).
    """
    from scipy.stats import norm

    _check_design(n_members, n_nonmembers, alpha, power)
    z_alpha, z_power = norm.ppf(1 - alpha), norm.ppf(power)
    null_sd = _auc_null_sd(n_members, n_nonmembers)

    def shortfall(auc: float) -> float:
        return (auc - 0.5) - z_alpha * null_sd - z_power * _auc_sd(auc, n_members, n_nonmembers)

    if shortfall(1.0 - 1e-12) < 0:
        return None
    low, high = 0.5, 1.0 - 1e-12
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if shortfall(middle) < 0 else (low, middle)
    return float(high)


POWER_SIMULATIONS = 4000
"""Simulated audits behind :func:`minimum_detectable_tpr` (fixed seed: the answer is deterministic)."""


def minimum_detectable_tpr(n_members: int, n_nonmembers: int, alpha: float, power: float = POWER,
                           n_calibration_nonmembers: int | None = None) -> float | None:
    """Smallest TPR at the calibration zero-FPR threshold that :func:`tail_p` detects with ``power``.

    Simulates the audit's own procedure rather than an ideal one: the threshold is the largest of
    ``n_calibration_nonmembers`` (default ``n_nonmembers``) calibration non-member scores; a
    fraction τ of members leak (score above every non-member); the other members and the
    evaluation non-members are exchangeable with the calibration non-members, so each exceeds the
    threshold with probability 1 − (its quantile) — about one evaluation non-member and one
    unleaked member pass it, as they do in a real audit. A simulated audit detects when
    ``tail_p(members above, non-members above) ≤ alpha``. The answer is the τ detected in a
    ``power`` share of :data:`POWER_SIMULATIONS` audits (common random numbers, fixed seed),
    assuming the attack's direction is right. None when even τ = 1 is not detected.

    Raises:
        CxrsynthError: for empty groups or α, power outside (0, 1).
    """
    from scipy.stats import hypergeom

    _check_design(n_members, n_nonmembers, alpha, power)
    calibration = n_calibration_nonmembers or n_nonmembers
    rng = np.random.default_rng(20260101)
    sims = POWER_SIMULATIONS
    threshold = rng.random(sims) ** (1.0 / calibration)  # the maximum of the calibration non-members
    false_positives = rng.binomial(n_nonmembers, 1.0 - threshold)
    leak_draw = rng.random((sims, n_members))
    passes = rng.random((sims, n_members)) > threshold[:, None]

    def detected_share(tau: float) -> float:
        true_positives = ((leak_draw < tau) | passes).sum(axis=1)
        called = true_positives + false_positives
        p = hypergeom.sf(true_positives - 1, n_members + n_nonmembers, n_members, called)
        return float(np.mean((called > 0) & (p <= alpha)))

    if detected_share(1.0) < power:
        return None
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if detected_share(middle) < power else (low, middle)
    return float(high)


def _check_design(n_members: int, n_nonmembers: int, alpha: float, power: float) -> None:
    if n_members < 1 or n_nonmembers < 1:
        raise CxrsynthError(f"power needs members and non-members (got {n_members} and {n_nonmembers})")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise CxrsynthError(f"α ({alpha}) and power ({power}) must lie within (0, 1)")
