"""Patient-level scoring: which images are scored, how they are aggregated, and the runner's side-by-side results."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cxrsynth.audit.metrics import attack_metrics
from cxrsynth.audit.patients import aggregate, choose_aggregation, patient_images, patient_metrics, ScoredImages
from cxrsynth.audit.runner import AuditOptions, audit_run, select_audited_set
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError
from tests.audit.test_runner import write_untrained_run
from tests.factories import make_prepared_folder


def test_aggregate_mean_min_max_per_patient() -> None:
    scores = np.array([1.0, 5.0, 2.0, 4.0, 3.0])
    owner = np.array([0, 1, 0, 1, 0])
    np.testing.assert_allclose(aggregate(scores, owner, 2, "mean"), [2.0, 4.5])
    np.testing.assert_allclose(aggregate(scores, owner, 2, "min"), [1.0, 4.0])
    np.testing.assert_allclose(aggregate(scores, owner, 2, "max"), [3.0, 5.0])
    with pytest.raises(CxrsynthError, match="no scored image"):
        aggregate(scores, owner, 3, "mean")
    with pytest.raises(CxrsynthError, match="unknown aggregation"):
        aggregate(scores, owner, 2, "median")


def memorised_one_follow_up(n_patients: int = 200, images: int = 10, seed: int = 0):
    """Loss-like scores (lower ⇒ member): each member has exactly one memorised image (score −4), others N(0, 1)."""
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(n_patients), images)
    scores = rng.normal(size=len(owner))
    is_member = np.arange(n_patients) % 2 == 0
    memorised = np.flatnonzero(is_member) * images + rng.integers(0, images, size=int(is_member.sum()))
    scores[memorised] = -4.0
    is_calibration = rng.permutation(n_patients) < n_patients // 2
    return scores, owner, is_member, is_calibration


def test_the_most_member_like_image_wins_when_one_follow_up_is_memorised() -> None:
    scores, owner, is_member, is_calibration = memorised_one_follow_up()
    how, tail, aucs, tails = choose_aggregation(scores, owner, is_member, is_calibration, "lower")
    assert how == "min" == tail and aucs["min"] > 0.95 > aucs["mean"] and tails["min"] > tails["mean"]
    scored = ScoredImages(np.arange(len(owner)), owner, len(is_member))
    result, aggregated = patient_metrics(scores, scored, is_member, is_calibration, "lower", delta=1e-5, seed=0)
    assert result["aggregation"] == "min" == result["tail_aggregation"] and result["auc"] > 0.95
    assert result["images_per_patient"] == {"mean": 10.0, "max": 10}
    # The image-level audit draws one image per patient and misses most memorised follow-ups.
    first = scores[np.arange(len(is_member)) * 10]
    assert attack_metrics(first, is_member, is_calibration, "lower")["auc"] < 0.7


def test_a_few_memorised_follow_ups_choose_max_for_the_tail_whatever_the_auc_prefers() -> None:
    # 5 of 100 calibration members have one image far above everything (higher ⇒ member); the AUCs of
    # the aggregations differ only by noise, but only max keeps those members above every non-member.
    rng = np.random.default_rng(3)
    n_patients, images = 400, 6
    owner = np.repeat(np.arange(n_patients), images)
    scores = rng.normal(size=len(owner)) + np.repeat(rng.normal(size=n_patients), images)
    is_member = np.arange(n_patients) % 2 == 0
    is_calibration = rng.permutation(n_patients) < n_patients // 2
    leaky = rng.choice(np.flatnonzero(is_member), size=20, replace=False)
    scores[leaky * images + 1] = 12.0
    how, tail, aucs, tails = choose_aggregation(scores, owner, is_member, is_calibration, "higher")
    assert tail == "max" and tails["max"] >= 5 and tails["mean"] < tails["max"]
    scored = ScoredImages(np.arange(len(owner)), owner, n_patients)
    result, _ = patient_metrics(scores, scored, is_member, is_calibration, "higher", delta=1e-5, seed=0)
    assert result["tail_aggregation"] == "max" and result["tpr_at_zero_fpr"] >= 0.05 and result["p_value_tail"] < 0.01
    on_auc_choice = attack_metrics(aggregate(scores, owner, n_patients, how), is_member, is_calibration, "higher")
    assert result["aggregation"] == how and result["auc"] == pytest.approx(on_auc_choice["auc"])


def test_the_aggregation_is_chosen_without_looking_at_evaluation_membership() -> None:
    scores, owner, is_member, is_calibration = memorised_one_follow_up(seed=1)
    flipped = is_member.copy()
    flipped[~is_calibration] = ~flipped[~is_calibration]
    assert choose_aggregation(scores, owner, is_member, is_calibration, "lower") == \
        choose_aggregation(scores, owner, flipped, is_calibration, "lower")


def test_patient_images_keep_the_designated_image_first_and_stay_within_the_patient(tmp_path: Path) -> None:
    data = load_prepared(make_prepared_folder(tmp_path / "data", n_patients=20, images_per_patient=5, size=16,
                                              split_cycle=("member", "holdout")))
    audited = select_audited_set(data, None, seed=2)
    scored = patient_images(data, audited.rows, max_images=3, seed=2)
    n = len(audited.rows)
    assert np.array_equal(scored.rows[:n], audited.rows) and np.array_equal(scored.owner[:n], np.arange(n))
    assert len(scored.rows) == 3 * n and len(set(scored.rows.tolist())) == len(scored.rows)
    patient = data.index["patient_id"].to_numpy()
    assert np.array_equal(patient[scored.rows], patient[audited.rows][scored.owner])
    assert np.array_equal(scored.images_per_patient(), np.full(n, 3))
    assert np.array_equal(patient_images(data, audited.rows, 3, seed=2).rows, scored.rows)
    single = patient_images(data, audited.rows, max_images=1, seed=2)
    assert np.array_equal(single.rows, audited.rows)
    with pytest.raises(CxrsynthError, match="max-images-per-patient"):
        patient_images(data, audited.rows, max_images=0, seed=2)


def test_audit_reports_image_and_patient_levels_side_by_side(tmp_path: Path) -> None:
    data = make_prepared_folder(tmp_path / "data", n_patients=24, images_per_patient=3, size=16,
                                split_cycle=("member", "holdout", "test"))
    run = write_untrained_run(tmp_path / "run")
    options = dict(data=data, attacks=("loss", "pia", "blind"), noise_draws=1, device="cpu", timestep=100)
    report = audit_run(run, AuditOptions(**options))
    assert report["unit"] == "patient" and report["n_scored_images"] == 16 * 3
    assert set(report["patient_attacks"]) == {"loss", "pia", "blind"}
    for name, result in report["patient_attacks"].items():
        assert result["aggregation"] in ("mean", "min", "max")
        assert result["images_per_patient"] == {"mean": 3.0, "max": 3}
        assert 0.0 <= result["auc"] <= 1.0 and result["n_eval_members"] == 4
    names = {test["name"] for test in report["summary"]["tests"]}
    assert {"loss@patient:auc", "loss@patient:tail", "pia@patient:auc"} <= names
    assert not any(name.startswith("blind") for name in names)
    with (run / "audit" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48 and sum(row["image_level"] == "1" for row in rows) == 16
    # The image-level results do not depend on the unit: the same images, the same scores.
    image_only = audit_run(run, AuditOptions(**options, unit="image"))
    assert image_only["unit"] == "image" and image_only["patient_attacks"] == {}
    for name in ("loss", "pia"):
        assert image_only["attacks"][name]["auc"] == report["attacks"][name]["auc"]
    with pytest.raises(CxrsynthError, match="unknown --unit"):
        audit_run(run, AuditOptions(**options, unit="study"))
