"""The whole leak flag, simulated: ≤ 5% false alarms when nothing leaks, and it fires on a realistic leak.

Each simulated audit has what a real one has: several correlated attacks scoring one image per
patient, split into calibration and evaluation halves; synthetic images that crowd onto a few real
images (DCR); re-identification links to gallery patients with 1–60 images each; and the copy
test. The flag is computed by the same :func:`cxrsynth.audit.summary.summarise` as ``cxrsynth audit``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from cxrsynth.audit import metrics
from cxrsynth.audit.hypothesis import linked_patients_p
from cxrsynth.audit.memorization import dcr_comparison
from cxrsynth.audit.summary import power_report, summarise

PATIENTS_PER_GROUP = 200
ATTACKS = ("loss", "pia", "secmi", "nn")
RESAMPLES = 999


def _attack_scores(rng: np.random.Generator, is_member: np.ndarray, leaked: np.ndarray) -> dict[str, np.ndarray]:
    """Correlated scores (higher ⇒ member); ``leaked`` units are memorised: extreme in every attack."""
    shared = rng.normal(size=len(is_member))
    scores = {name: 0.8 * shared + 0.6 * rng.normal(size=len(is_member)) for name in ATTACKS}
    for values in scores.values():
        values[leaked] = 6.0 + rng.random(int(leaked.sum()))
    return scores


def _sample_tests(rng: np.random.Generator, seed: int) -> tuple[dict, dict, float, float]:
    """Memorization and re-identification parts of a leak-free audit, and the old binomial p-values."""
    gallery = rng.normal(size=(2 * 60, 6))
    gallery_members = rng.permutation(np.repeat([True, False], 60))
    centres = gallery[rng.choice(len(gallery), size=4, replace=False)]  # samples crowd onto a few images
    synthetic = centres[rng.integers(0, 4, size=150)] + rng.normal(0, 0.1, size=(150, 6))
    dcr = dcr_comparison(synthetic, gallery[gallery_members], gallery[~gallery_members], seed=seed)
    pool = np.array([f"p{i}" for i in range(60)])
    images = np.minimum(60, 1 + rng.pareto(1.2, 60).astype(int))
    pool_members = rng.permutation(np.repeat([True, False], 30))
    linked = rng.choice(pool, size=150, p=images / images.sum())
    reid = {"p_value": linked_patients_p(linked, pool, pool_members, resamples=RESAMPLES, seed=seed)}
    count = int(np.isin(linked, pool[pool_members]).sum())
    old_reid = binomtest(count, 150, 0.5, alternative="greater").pvalue
    closer = int(round(dcr["fraction_closer_to_member"] * 150))
    old_dcr = binomtest(closer, 150, 0.5, alternative="greater").pvalue
    memorization = {"copy_test": {"p_value": 1.0}, "dcr_pixel": dcr, "dcr_domain": None, "n_flagged": 0}
    return memorization, reid, old_reid, old_dcr


def simulate_audit(seed: int, leaked_fraction: float = 0.0, n: int = PATIENTS_PER_GROUP) -> tuple[dict, bool]:
    """One simulated audit of ``n`` vs ``n`` patients, and what today's (uncorrected) flag would have said."""
    rng = np.random.default_rng(seed)
    is_member = np.repeat([True, False], n)
    is_calibration = np.concatenate([rng.permutation(np.repeat([True, False], n // 2)) for _ in range(2)])
    leaked = np.zeros(2 * n, bool)
    leaked[rng.choice(n, size=int(round(leaked_fraction * n)), replace=False)] = True
    attacks = {}
    for name, scores in _attack_scores(rng, is_member, leaked).items():
        attacks[name] = {"access": "white-box", **metrics.attack_metrics(scores, is_member, is_calibration, "higher", seed=seed)}
    memorization, reid, old_reid, old_dcr = _sample_tests(rng, seed)
    report = {"attacks": attacks, "memorization": memorization, "reidentification": reid}
    report["summary"] = summarise(report)
    old_flag = (any(result["auc_ci"][0] > 0.5 or result["auc_ci"][1] < 0.5 for result in attacks.values())
                or old_reid < 0.05 or old_dcr < 0.05)
    return report, old_flag


@pytest.mark.slow
def test_leak_flag_false_alarm_rate_is_at_most_five_percent() -> None:
    runs = 200
    flags, old_flags = zip(*((report["summary"]["leak_detected"], old) for report, old in map(simulate_audit, range(runs))))
    assert np.mean(flags) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / runs)
    assert np.mean(old_flags) > 0.2  # the uncorrected OR of binomial and interval tests: far above 5%


def test_leak_flag_fires_when_a_few_members_are_memorised() -> None:
    # 5% of 500 members memorised: the AUC barely moves, the low-FPR tail test finds them. (With 200
    # patients per group 5% is 5 per evaluation half, which no valid test can tell from chance at 5%
    # family-wise: the power statement says so.)
    reports = [simulate_audit(1000 + seed, leaked_fraction=0.05, n=500)[0] for seed in range(20)]
    assert np.mean([report["summary"]["leak_detected"] for report in reports]) >= 0.9
    assert np.median([report["attacks"]["loss"]["auc"] for report in reports]) < 0.56
    rejected = {test["name"] for report in reports for test in report["summary"]["tests"] if test["rejected"]}
    assert any(name.endswith(":tail") for name in rejected)


def test_power_statement_matches_the_family() -> None:
    report, _ = simulate_audit(7)
    power = power_report(PATIENTS_PER_GROUP // 2, PATIENTS_PER_GROUP // 2, len(report["summary"]["tests"]))
    assert power["n_tests"] == 2 * len(ATTACKS) + 3 and power["alpha_per_test"] == 0.05 / power["n_tests"]
    assert 0.6 < power["min_detectable_auc"] < 0.75
    assert 0.0 < power["min_detectable_tpr"] < 0.2
    assert "100 vs 100" in power["text"] and f"{power['min_detectable_auc']:.2f}" in power["text"]
