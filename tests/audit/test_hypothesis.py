"""The tests behind the leak flag: level under the null, power where it is claimed, Holm's control."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from cxrsynth.audit import hypothesis
from cxrsynth.errors import CxrsynthError

ALPHA = 0.05


def _ceiling(runs: int, level: float = ALPHA) -> float:
    """Nominal level plus two binomial standard errors of a rate estimated from ``runs`` simulations."""
    return level + 2 * np.sqrt(level * (1 - level) / runs)


@pytest.mark.parametrize("n,ties", [(8, False), (16, True), (60, False)])
def test_mann_whitney_holds_its_level(n: int, ties: bool) -> None:
    rng = np.random.default_rng(n)
    labels = np.repeat([True, False], n)
    rejections = 0
    for _ in range(600):
        scores = rng.normal(size=2 * n)
        if ties:
            scores = np.round(scores)
        rejections += hypothesis.mann_whitney_p(labels, scores) <= ALPHA
    assert rejections / 600 <= _ceiling(600)


@pytest.mark.parametrize("tied_high", [3, 4, 9])
def test_mann_whitney_holds_its_level_exactly_with_two_valued_scores(tied_high: int) -> None:
    # 250 vs 250, `tied_high` units score 1 and the rest 0: the members among them are hypergeometric,
    # so the test's exact size is a sum over that law. The normal approximation with tie correction
    # had size 0.124 (K=3, 5%), 0.062 (K=4, 2.5%) and 0.088 (K=9, 5%) here (privacy review).
    from scipy.stats import hypergeom

    n = 250
    labels = np.repeat([True, False], n)
    law = hypergeom(2 * n, n, tied_high)
    for level in (0.05, 0.025):
        size = 0.0
        for members_high in range(tied_high + 1):
            scores = np.zeros(2 * n)
            scores[:members_high] = 1.0
            scores[n: n + tied_high - members_high] = 1.0
            if hypothesis.mann_whitney_p(labels, scores) <= level:
                size += law.pmf(members_high)
        assert size <= level, (tied_high, level, size)


def test_mann_whitney_with_ties_still_detects_a_shift() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([True, False], 100)
    scores = np.round(rng.normal(size=200) + 0.8 * labels)
    assert hypothesis.mann_whitney_p(labels, scores) < 1e-3


def test_mann_whitney_detects_a_shift() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([True, False], 100)
    scores = rng.normal(size=200) + 0.6 * labels
    assert hypothesis.mann_whitney_p(labels, scores) < 1e-3


def test_tail_test_holds_its_level_at_a_threshold_fixed_elsewhere() -> None:
    rng = np.random.default_rng(1)
    rejections = 0
    for _ in range(1000):
        scores = rng.normal(size=100)
        called = scores >= 1.5  # fixed before seeing the labels
        members = rng.permutation(np.repeat([True, False], 50))
        rejections += hypothesis.tail_p(int((called & members).sum()), 50, int((called & ~members).sum()), 50) <= ALPHA
    assert rejections / 1000 <= _ceiling(1000)


def test_tail_test_of_members_above_every_nonmember() -> None:
    # Choosing 3 of 32 units at random, all 3 members: C(16,3)/C(32,3).
    assert hypothesis.tail_p(3, 16, 0, 16) == pytest.approx(560 / 4960)
    assert hypothesis.tail_p(0, 16, 0, 16) == 1.0
    with pytest.raises(CxrsynthError):
        hypothesis.tail_p(17, 16, 0, 16)


def _unequal_patients(rng: np.random.Generator, n_pool: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pool with 1–60 images per patient, half of them members at random."""
    pool = np.array([f"p{i}" for i in range(n_pool)])
    images = np.minimum(60, 1 + rng.pareto(1.2, n_pool).astype(int))
    is_member = rng.permutation(np.repeat([True, False], n_pool // 2))
    return pool, images, is_member


def _reid_null(seed: int) -> tuple[float, float]:
    """Synthetic images linked to gallery patients in proportion to their images, nothing leaked: (binomial p, ours)."""
    rng = np.random.default_rng(seed)
    pool, images, is_member = _unequal_patients(rng, 40)
    linked = rng.choice(pool, size=300, p=images / images.sum())
    count = int(np.isin(linked, pool[is_member]).sum())
    binomial = binomtest(count, len(linked), 0.5, alternative="greater").pvalue
    return binomial, hypothesis.linked_patients_p(linked, pool, is_member, resamples=999, seed=seed)


def test_relabelling_test_holds_its_level_where_the_binomial_test_does_not() -> None:
    results = np.array([_reid_null(seed) for seed in range(300)])
    binomial_rate, relabelling_rate = (results <= ALPHA).mean(axis=0)
    assert binomial_rate > 0.2  # images per patient differ: the binomial test over images is invalid
    assert relabelling_rate <= _ceiling(300)


def test_relabelling_test_fires_when_member_patients_are_linked() -> None:
    rng = np.random.default_rng(5)
    pool, images, is_member = _unequal_patients(rng, 100)
    fair = rng.choice(pool, size=200, p=images / images.sum())
    leaked = np.concatenate([fair, rng.choice(pool[is_member], size=60)])  # 60 samples reproduce members
    assert hypothesis.linked_patients_p(leaked, pool, is_member) < 0.01
    assert hypothesis.linked_patients_p([], pool, is_member) == 1.0
    with pytest.raises(CxrsynthError, match="not in the member/holdout pool"):
        hypothesis.linked_patients_p(["stranger"], pool, is_member)


def test_holm_controls_the_family_wise_error_of_correlated_tests() -> None:
    from scipy.stats import norm

    rng = np.random.default_rng(2)
    runs, false_alarms = 2000, 0
    for _ in range(runs):
        shared = rng.normal()
        z = 0.7 * shared + np.sqrt(1 - 0.49) * rng.normal(size=12)  # 12 correlated null statistics
        p_values = {f"t{i}": float(norm.sf(value)) for i, value in enumerate(z)}
        false_alarms += any(result.rejected for result in hypothesis.holm(p_values))
    assert false_alarms / runs <= _ceiling(runs)


def test_holm_adjusted_p_values() -> None:
    results = {result.name: result for result in hypothesis.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})}
    # sorted 0.01, 0.03, 0.04, 0.5 → 4·0.01, 3·0.03, max(0.09, 2·0.04), max(0.09, 0.5)
    assert [results[name].adjusted_p_value for name in "acbd"] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert [results[name].rejected for name in "abcd"] == [True, False, False, False]
    with pytest.raises(CxrsynthError):
        hypothesis.holm({"a": float("nan")})


@pytest.mark.parametrize("n,level", [(16, 0.05), (100, 0.05 / 14)])
def test_minimum_detectable_auc_is_detected_with_the_stated_power(n: int, level: float) -> None:
    from scipy.stats import norm

    auc = hypothesis.minimum_detectable_auc(n, n, level)
    shift = np.sqrt(2) * norm.ppf(auc)  # binormal with equal variances: AUC = Φ(d/√2)
    rng = np.random.default_rng(n)
    labels = np.repeat([True, False], n)
    detected = np.mean([hypothesis.mann_whitney_p(labels, rng.normal(size=2 * n) + shift * labels) <= level
                        for _ in range(400)])
    assert 0.8 - 0.08 <= detected <= 0.8 + 0.08
    assert hypothesis.minimum_detectable_auc(4 * n, 4 * n, level) < auc  # more patients, smaller effects


def test_minimum_detectable_tpr_is_detected_with_the_stated_power() -> None:
    """Simulates the audit's tail test as run: threshold at the calibration non-members' maximum, applied
    once to the evaluation half, where unleaked members and non-members also pass it by chance."""
    n, level = 100, 0.05 / 14
    tpr = hypothesis.minimum_detectable_tpr(n, n, level)
    rng = np.random.default_rng(3)
    detected = 0
    for _ in range(400):
        threshold = rng.random(n).max()  # calibration non-members' scores ~ U(0, 1)
        leaked = rng.random(n) < tpr
        members = np.where(leaked, 2.0, rng.random(n))  # leaked members score above every non-member
        nonmembers = rng.random(n)
        detected += hypothesis.tail_p(int((members > threshold).sum()), n,
                                      int((nonmembers > threshold).sum()), n) <= level
    assert 0.8 - 0.06 <= detected / 400 <= 0.8 + 0.06
    assert hypothesis.minimum_detectable_tpr(2, 2, 1e-4) is None  # nothing is detectable with 2 vs 2
