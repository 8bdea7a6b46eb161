"""Cross-fitting on the calibration half is grouped by patient: with several images per patient and
nothing leaking, the out-of-fold AUC stays near 0.5 (ungrouped folds recognise the patient: ≈ 1.0)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cxrsynth.audit.crossfit import cross_fitted_probabilities


def _null_calibration(patients: int = 60, images: int = 8, seed: int = 0):
    """Features that identify the patient (a per-patient vector) and say nothing about membership."""
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(patients), images)
    features = rng.normal(size=(patients, 20))[owner] + 0.1 * rng.normal(size=(len(owner), 20))
    member = (rng.permutation(patients) < patients // 2).astype(int)[owner]
    return features, owner, member


def test_out_of_fold_scores_do_not_recognise_the_patient_under_the_null() -> None:
    aucs, ungrouped = [], []
    for seed in range(5):
        features, owner, member = _null_calibration(seed=seed)
        rows = np.arange(len(owner))
        grouped_scores, out_of_fold = cross_fitted_probabilities(lambda: LogisticRegression(max_iter=2000), features,
                                                                 rows, member, owner, seed)
        assert out_of_fold
        aucs.append(roc_auc_score(member, grouped_scores))
        by_image, _ = cross_fitted_probabilities(lambda: LogisticRegression(max_iter=2000), features, rows, member,
                                                 None, seed)
        ungrouped.append(roc_auc_score(member, by_image))
    assert 0.3 < np.mean(aucs) < 0.7, aucs
    assert np.mean(ungrouped) > 0.75, ungrouped  # what image-level folds did (0.81–0.86): the patient, not membership


def test_folds_never_split_a_patient_and_too_few_patients_fall_back_to_in_sample() -> None:
    features, owner, member = _null_calibration(patients=6, images=3)
    rows = np.arange(len(owner))
    _, out_of_fold = cross_fitted_probabilities(lambda: LogisticRegression(max_iter=2000), features, rows, member,
                                                owner, 0)
    assert out_of_fold  # 3 patients per class: 3 folds
    single = member.copy()
    single[owner != 0] = 0
    single[owner == 0] = 1  # one member patient
    _, out_of_fold = cross_fitted_probabilities(lambda: LogisticRegression(max_iter=2000), features, rows, single,
                                                owner, 0)
    assert not out_of_fold
