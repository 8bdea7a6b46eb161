"""Membership classifiers fitted on the calibration half, scored out-of-fold there (``gsa``, ``blind``).

An attack that fits a model on calibration rows must not score those rows in-sample: its direction,
thresholds and variant are chosen on them. Folds are **grouped by patient**: at ``--unit patient`` a
patient's other images would otherwise sit in the training folds with the same label, and the
classifier would recognise the patient instead of membership (calibration AUC ≈ 1.0 under the null).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

MAX_FOLDS = 5


def cross_fitted_probabilities(make_classifier: Callable[[], Any], features: np.ndarray, rows: np.ndarray,
                               labels: np.ndarray, groups: np.ndarray | None, seed: int) -> tuple[np.ndarray, bool]:
    """Membership probabilities of every row: out-of-fold on ``rows``, from the fit on all of ``rows`` elsewhere.

    Args:
        make_classifier: a new unfitted scikit-learn classifier with ``predict_proba``.
        features: N × F features of every audited image.
        rows: the calibration rows (indices into ``features``).
        labels: 1 for members, 0 for non-members, one per calibration row.
        groups: the patient of each of ``features``' rows (None: every row its own patient).
        seed: seed of the fold assignment.

    Returns:
        ``(probabilities N, out_of_fold)``; ``out_of_fold`` is False when a class has fewer than 2
        calibration patients, and the calibration rows are then scored in-sample.
    """
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    rows = np.asarray(rows, dtype=np.int64)
    labels = np.asarray(labels).astype(int)
    probabilities = make_classifier().fit(features[rows], labels).predict_proba(features)[:, 1]
    row_groups = np.arange(len(rows)) if groups is None else np.unique(np.asarray(groups)[rows], return_inverse=True)[1]
    patients_per_class = [len(np.unique(row_groups[labels == value])) for value in (0, 1)]
    folds = int(min(MAX_FOLDS, *patients_per_class))
    if folds < 2:
        return probabilities, False
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    probabilities[rows] = cross_val_predict(make_classifier(), features[rows], labels, groups=row_groups, cv=splitter,
                                            method="predict_proba")[:, 1]
    return probabilities, True
