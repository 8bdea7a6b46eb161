"""Fidelity statistics: the domain Fréchet distance of a perfect generator, intervals, matched N.

The features are drawn directly (a stand-in classifier returns its "images" as features), so the
truth is known: synthetic features drawn from the real distribution are a perfect generator.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate import runner
from cxrsynth.evaluate.bootstrap import half_sample_frechet, matched_frechet, patient_bootstrap_rows, patient_groups
from cxrsynth.evaluate.table import table_rows
from cxrsynth.report.verdict import realism_answer

DIMENSIONS = 16


class FeaturesAreImages:
    """A stand-in domain classifier whose features are its inputs."""

    def features(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(images, dtype=np.float64)


def _features(rng: np.random.Generator, count: int, scale: float = 1.0) -> np.ndarray:
    mixing = np.random.default_rng(123).normal(size=(DIMENSIONS, DIMENSIONS)) / np.sqrt(DIMENSIONS)
    return rng.normal(size=(count, DIMENSIONS)) @ mixing * scale


def _domain_report(reference: np.ndarray, synthetic: np.ndarray, baseline: np.ndarray, seed: int,
                   resamples: int = 100) -> dict:
    """``fidelity.json`` with only the domain group filled, through the runner's own code."""
    sets = runner.ImageSets(reference=reference, reference_labels=np.zeros((len(reference), 0)), synthetic=synthetic,
                            synthetic_labels=None, baseline=baseline, baseline_split="holdout")
    report = runner.empty_report(("domain",), "test", seed)
    report.update(n_real=len(reference), n_synthetic=len(synthetic), n_real_baseline=len(baseline),
                  baseline_split="holdout", image_size=64)
    options = runner.EvaluateOptions(metrics=("domain",), seed=seed, bootstrap_resamples=resamples)
    runner.domain_group(sets, FeaturesAreImages(), options, report)
    return report


def test_a_perfect_generator_is_rated_good_and_its_intervals_contain_their_estimates() -> None:
    rng = np.random.default_rng(0)
    report = _domain_report(_features(rng, 200), _features(rng, 200), _features(rng, 200), seed=0)
    low, high = report["fd_domain_ci"]
    assert low <= report["fd_domain"] <= high
    base_low, base_high = report["fd_domain_real_baseline_ci"]
    assert base_low <= report["fd_domain_real_baseline"] <= base_high
    assert realism_answer(report, "c").level == "good"
    assert report["matched_n"] == 200
    assert report["fd_domain_sampling"] == {"method": "half-samples without replacement", "matched_n": 200, "n": 100,
                                            "n_reference": 100, "resamples": 100}


def test_perfect_generators_are_rated_good_in_nearly_every_simulated_evaluation() -> None:
    # With a bootstrap with replacement none of these was rated good: every resample's distance was
    # inflated by the duplicates, so the interval lay above the estimate and the baseline.
    seeds = 40
    good = contained = 0
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        report = _domain_report(_features(rng, 120), _features(rng, 120), _features(rng, 120), seed=seed, resamples=60)
        good += realism_answer(report, "c").level == "good"
        contained += report["fd_domain_ci"][0] <= report["fd_domain"] <= report["fd_domain_ci"][1]
    print(f"perfect generator rated good in {good}/{seeds} simulated evaluations")
    assert contained == seeds
    assert good >= 0.9 * seeds


def test_synthetic_and_real_baseline_are_compared_at_the_same_n() -> None:
    # A generator whose features are 25% too spread out, evaluated with 600 samples against a holdout
    # of 60: at unequal N the baseline's larger small-N bias put the synthetic images *closer* to the
    # reference than unseen real images (1.20 vs 1.22).
    rng = np.random.default_rng(0)
    reference, synthetic, baseline = _features(rng, 300), _features(rng, 600, scale=1.25), _features(rng, 60)
    report = _domain_report(reference, synthetic, baseline, seed=0)
    assert report["fd_domain"] > 1.3 * report["fd_domain_real_baseline"]
    assert report["fd_domain_ci"][0] > report["fd_domain_real_baseline"]
    assert realism_answer(report, "c").level in {"caution", "bad"}
    assert report["matched_n"] == 60 and report["fd_domain_sampling"]["n"] == 30
    assert report["fd_domain_sampling"]["n_reference"] == 150
    rows = {row[0]: row for row in table_rows(report)}
    assert "matched N=60" in rows["FD (domain)"][3] and "N=60" in rows["FD (domain)"][2]


def test_half_samples_are_seeded_paired_and_need_four_rows() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(200, 3)), rng.normal(0.5, 1.0, size=(200, 3))
    first = half_sample_frechet(a, b, resamples=50, seed=7)
    assert first.interval == half_sample_frechet(a, b, resamples=50, seed=7).interval
    assert first.interval[0] <= first.estimate <= first.interval[1] and first.estimate == pytest.approx(first.values.mean())
    # Same seed and sizes: the baseline uses the same reference halves, so identical sets give identical draws.
    matched = matched_frechet(a, b, b.copy(), resamples=20, seed=3)
    np.testing.assert_array_equal(matched.synthetic.values, matched.baseline.values)
    with pytest.raises(CxrsynthError, match="at least 4"):
        half_sample_frechet(a, b[:3], resamples=5)


def test_patient_groups_keep_every_image_of_a_drawn_patient() -> None:
    groups = patient_groups(np.array(["b", "a", "b", "c", "a", "b"]), 6)
    assert [list(group) for group in groups] == [[1, 4], [0, 2, 5], [3]]
    for seed in range(5):
        rows = list(patient_bootstrap_rows(groups, np.random.default_rng(seed)))
        # A drawn patient brings all their images, as often as the patient was drawn.
        assert all(len({rows.count(row) for row in group}) == 1 for group in groups)
    assert [list(group) for group in patient_groups(None, 3)] == [[0], [1], [2]]
    with pytest.raises(CxrsynthError, match="patient ids"):
        patient_groups(np.array(["a"]), 2)
