"""Membership metrics against hand-computed cases and independent scipy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from cxrsynth.audit import metrics
from cxrsynth.errors import CxrsynthError


def test_auc_hand_computed_with_a_tie() -> None:
    labels = np.array([1, 1, 0, 0])
    # member/non-member pairs: (0.9>0.5) (0.9>0.1) (0.4<0.5) (0.4>0.1) -> 3/4
    assert metrics.roc_auc(labels, np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    # a tied pair counts one half: (0.5=0.5) (0.5>0.1) (0.4<0.5) (0.4>0.1) -> 2.5/4
    assert metrics.roc_auc(labels, np.array([0.5, 0.4, 0.5, 0.1])) == pytest.approx(0.625)


def test_rank_auc_equals_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=(20, 30))
    scores = rng.integers(0, 5, size=(20, 30)).astype(float)  # many ties
    vectorised = metrics.rank_auc(labels, scores)
    assert np.allclose(vectorised, [metrics.roc_auc(y, s) for y, s in zip(labels, scores)])
    assert np.isnan(metrics.rank_auc(np.ones(4), np.arange(4.0)))


def test_auc_needs_both_classes() -> None:
    with pytest.raises(CxrsynthError):
        metrics.roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))


def _tied_scores() -> tuple[np.ndarray, np.ndarray]:
    """100 non-members (98 at 0, two tied at 5) and 10 members (3 at 10, 4 tied at 5, 3 at 1)."""
    nonmembers = np.array([0.0] * 98 + [5.0, 5.0])
    members = np.array([10.0] * 3 + [5.0] * 4 + [1.0] * 3)
    labels = np.concatenate([np.zeros(100), np.ones(10)])
    return labels, np.concatenate([nonmembers, members])


def test_tpr_at_fpr_does_not_split_ties() -> None:
    labels, scores = _tied_scores()
    # FPR <= 1% allows one false positive, but the tie at 5 brings two: only the threshold 10 is allowed.
    assert metrics.tpr_at_fpr(labels, scores, 0.01) == pytest.approx(0.3)
    assert metrics.tpr_at_fpr(labels, scores, 0.0) == pytest.approx(0.3)
    # FPR <= 2% admits the tie (two false positives); every member is above the 98 zeros.
    assert metrics.tpr_at_fpr(labels, scores, 0.02) == pytest.approx(1.0)
    # Interpolating between the ROC points (0, 0.3) and (0.02, 0.7) would have claimed 0.5 at 1%.


def test_tpr_at_low_fpr_is_null_with_a_note_when_too_few_evaluation_nonmembers() -> None:
    is_member, is_calibration = _halves(100)  # 50 non-members per half
    scores = np.where(is_member, 1.0, 0.0) + np.linspace(0, 0.5, 200)
    result = metrics.attack_metrics(scores, is_member, is_calibration, "higher")
    assert result["tpr_at_1pct_fpr"] is None and result["tpr_at_0.1pct_fpr"] is None
    assert any("100" in note and "50" in note for note in result["notes"])
    assert result["low_fpr"]["tpr_at_1pct_fpr"]["measurable"] is False
    assert result["tpr_at_zero_fpr"] == 1.0  # 0% FPR is always measurable


def _tail_leak(n_per_half: int, leaked: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exchangeable scores except ``leaked`` members per half with extreme scores (memorised outliers)."""
    rng = np.random.default_rng(seed)
    is_member, is_calibration = _halves(n_per_half)
    scores = rng.normal(size=len(is_member))
    for half in (True, False):
        chosen = rng.choice(np.flatnonzero(is_member & (is_calibration == half)), size=leaked, replace=False)
        scores[chosen] = 10.0 + rng.random(leaked)
    return scores, is_member, is_calibration


def test_low_fpr_leak_gives_a_positive_bound_where_the_balanced_threshold_gives_none() -> None:
    # 5% of 500 members per half memorised: AUC barely moves, but they are perfectly identified.
    scores, is_member, is_calibration = _tail_leak(1000, 25, seed=3)
    result = metrics.attack_metrics(scores, is_member, is_calibration, "higher")
    assert result["auc"] < 0.56
    assert result["eps_lower_bound"] > 0.5
    assert result["eps_threshold"] > 5  # the ε threshold moved to the tail ...
    assert result["threshold"] < 5  # ... where the balanced-accuracy one stays mid-distribution
    # Today's bound (balanced-accuracy threshold) sees nothing:
    y_cal, y_eval = is_member[is_calibration], is_member[~is_calibration]
    balanced = metrics.best_threshold(y_cal, scores[is_calibration])
    old = metrics.epsilon_lower_bound(*metrics.confusion_at(y_eval, scores[~is_calibration], balanced))
    assert old.epsilon == 0.0
    assert result["tpr_at_zero_fpr"] >= 0.04 and result["low_fpr"]["tpr_at_zero_fpr"]["fpr"] == 0.0
    assert result["p_value_tail"] < 1e-6


def test_low_fpr_thresholds_are_fixed_on_calibration_not_on_evaluation() -> None:
    # Calibration: non-members reach 5, members 6..; evaluation: one non-member at 7 (above the
    # calibration threshold) so the honest TPR at 0% FPR comes with a false positive.
    scores = np.array([6, 7, 8, 9, 1, 2, 3, 5, 6.5, 7.5, 8, 9, 1, 2, 3, 7], dtype=float)
    is_member = np.array([1, 1, 1, 1, 0, 0, 0, 0] * 2, dtype=bool)
    is_calibration = np.repeat([True, False], 8)
    zero = metrics.attack_metrics(scores, is_member, is_calibration, "higher")["low_fpr"]["tpr_at_zero_fpr"]
    assert 5 < zero["threshold"] < 6
    assert zero["tpr"] == 1.0 and zero["fpr"] == 0.25  # measured at the calibration threshold
    assert zero["optimistic_tpr"] == 0.75  # the evaluation half's own optimum: above 7 only


def test_epsilon_threshold_maximises_the_bound_on_calibration() -> None:
    scores, is_member, is_calibration = _tail_leak(1000, 25, seed=4)
    y, s = is_member[is_calibration], scores[is_calibration]
    chosen = metrics.epsilon_threshold(y, s)
    best = metrics.epsilon_lower_bound(*metrics.confusion_at(y, s, chosen)).epsilon
    for threshold in np.quantile(s, np.linspace(0, 1, 41)):
        assert metrics.epsilon_lower_bound(*metrics.confusion_at(y, s, threshold)).epsilon <= best + 1e-12


@pytest.mark.parametrize("successes,trials", [(0, 10), (3, 10), (10, 10), (17, 40), (499, 500)])
def test_clopper_pearson_matches_scipy_exact_interval(successes: int, trials: int) -> None:
    # A two-sided 90% exact interval is the pair of one-sided 95% bounds.
    interval = binomtest(successes, trials).proportion_ci(confidence_level=0.90, method="exact")
    assert metrics.clopper_pearson_lower(successes, trials) == pytest.approx(interval.low, abs=1e-12)
    assert metrics.clopper_pearson_upper(successes, trials) == pytest.approx(interval.high, abs=1e-12)


def test_clopper_pearson_closed_forms_at_the_edges() -> None:
    # k = n: lower bound alpha^(1/n); k = 0: upper bound 1 - alpha^(1/n)
    assert metrics.clopper_pearson_lower(20, 20) == pytest.approx(0.05 ** (1 / 20))
    assert metrics.clopper_pearson_upper(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20))
    with pytest.raises(CxrsynthError):
        metrics.clopper_pearson_lower(5, 4)


def test_epsilon_bound_of_a_perfect_test() -> None:
    bound = metrics.epsilon_lower_bound(100, 100, 0, 100, delta=1e-5)
    root = 0.05 ** (1 / 100)
    assert bound.epsilon == pytest.approx(math.log((root - 1e-5) / (1 - root)))
    assert bound.epsilon == pytest.approx(3.4929, abs=1e-3)


def test_epsilon_bound_takes_the_symmetric_form_when_larger() -> None:
    # Half the members found, no false positive: the TPR/FPR form wins.
    direct = metrics.epsilon_lower_bound(50, 100, 0, 100, delta=0.0)
    expected = math.log(metrics.clopper_pearson_lower(50, 100) / metrics.clopper_pearson_upper(0, 100))
    assert direct.epsilon == pytest.approx(expected)
    # Every member found, half the non-members too: only the TNR/FNR form is large.
    symmetric = metrics.epsilon_lower_bound(100, 100, 50, 100, delta=0.0)
    expected = math.log(metrics.clopper_pearson_lower(50, 100) / metrics.clopper_pearson_upper(0, 100))
    assert symmetric.epsilon == pytest.approx(expected)
    assert symmetric.tnr_low == pytest.approx(metrics.clopper_pearson_lower(50, 100))


def test_epsilon_bound_is_zero_for_a_useless_test_and_shrinks_with_delta() -> None:
    assert metrics.epsilon_lower_bound(50, 100, 50, 100).epsilon == 0.0
    assert metrics.epsilon_lower_bound(100, 100, 0, 100, delta=0.5).epsilon < metrics.epsilon_lower_bound(100, 100, 0, 100).epsilon


def _halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    is_member = np.tile([True, False], n)
    is_calibration = np.repeat([True, False], n)
    return is_member, is_calibration


def test_attack_metrics_of_a_perfectly_separating_loss() -> None:
    is_member, is_calibration = _halves(200)  # 100 members and 100 non-members per half
    scores = np.where(is_member, 0.1, 0.9) + np.linspace(0, 0.01, 400)  # members have lower loss
    result = metrics.attack_metrics(scores, is_member, is_calibration, "lower", delta=1e-5)
    assert result["auc"] == 1.0 and result["auc_ci"] == [1.0, 1.0]
    assert result["direction"] == "lower"
    assert result["balanced_accuracy"] == 1.0
    assert result["tpr_at_1pct_fpr"] == 1.0 and result["tpr_at_0.1pct_fpr"] is None
    assert result["eps_lower_bound"] == pytest.approx(math.log((0.05 ** 0.01 - 1e-5) / (1 - 0.05 ** 0.01)))
    assert result["n_eval_members"] == result["n_eval_nonmembers"] == 100


def test_attack_metrics_keep_the_published_auc_but_choose_the_direction_on_calibration() -> None:
    is_member, is_calibration = _halves(50)
    rng = np.random.default_rng(0)
    scores = np.where(is_member, 1.0, 0.0) + rng.normal(0, 0.3, 100)  # members *higher*, published "lower"
    result = metrics.attack_metrics(scores, is_member, is_calibration, "lower")
    assert result["auc"] < 0.1  # reported as published, not flipped
    assert result["direction"] == "higher"
    assert result["balanced_accuracy"] > 0.8 and result["eps_lower_bound"] > 0
    assert any("direction" in note for note in result["notes"])


def test_attack_metrics_on_exchangeable_scores_show_no_leak() -> None:
    is_member, is_calibration = _halves(200)
    scores = np.random.default_rng(1).normal(size=400)
    result = metrics.attack_metrics(scores, is_member, is_calibration, "lower")
    assert abs(result["auc"] - 0.5) < 0.1
    assert result["auc_ci"][0] < 0.5 < result["auc_ci"][1]
    assert result["eps_lower_bound"] < 0.5


def test_threshold_from_calibration_is_applied_unchanged_to_evaluation() -> None:
    # Calibration: members at 0..4 (lower), non-members at 10..14 -> threshold between them.
    # Evaluation: one member at 20 is missed, so balanced accuracy is (4/5 + 5/5)/2.
    scores = np.array([0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 0, 1, 2, 3, 20, 10, 11, 12, 13, 14], dtype=float)
    is_member = np.array([1] * 5 + [0] * 5 + [1] * 5 + [0] * 5, dtype=bool)
    is_calibration = np.array([True] * 10 + [False] * 10)
    result = metrics.attack_metrics(scores, is_member, is_calibration, "lower")
    assert 4 <= result["threshold"] < 10
    assert result["balanced_accuracy"] == pytest.approx(0.9)
    assert result["eps_bound"]["true_positives"] == 4 and result["eps_bound"]["false_positives"] == 0


def test_the_tail_direction_follows_a_few_extreme_members_when_the_auc_points_the_other_way() -> None:
    # Most members score a little lower than non-members (the AUC says "lower"), but 5% of members are
    # far above everyone: the low-FPR tail and its test must look at the top, not the bottom.
    rng = np.random.default_rng(4)
    n = 500
    is_member = np.repeat([True, False], n)
    is_calibration = np.concatenate([rng.permutation(np.repeat([True, False], n // 2)) for _ in range(2)])
    scores = rng.normal(size=2 * n) - 0.3 * is_member
    leaky = rng.choice(n, size=25, replace=False)
    scores[leaky] = 8.0 + rng.random(25)
    result = metrics.attack_metrics(scores, is_member, is_calibration, "higher")
    assert result["direction"] == "lower" and result["tail_direction"] == "higher"
    assert result["tpr_at_zero_fpr"] > 0.03 and result["p_value_tail"] < 0.01
    assert any("TPRs at low FPR and the tail test use it" in note for note in result["notes"])
    # without the extreme members both directions agree and no note is added
    plain = metrics.attack_metrics(rng.normal(size=2 * n) + 0.5 * is_member, is_member, is_calibration, "higher")
    assert plain["tail_direction"] == plain["direction"] == "higher"
    assert not any("tail test use it" in note for note in plain["notes"])
