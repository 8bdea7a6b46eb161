"""TSTR vs TRTR utility on images whose label is visible (brightness), and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate.domain import ClassifierConfig, train_classifier
from cxrsynth.evaluate.utility import UtilityInputs, auroc_per_finding, evaluate_utility, label_matrix_from_texts


def _bright_when_positive(labels: np.ndarray, seed: int, size: int = 16) -> np.ndarray:
    """Images whose mean brightness is high exactly when the finding 'Bright' is present."""
    rng = np.random.default_rng(seed)
    base = np.where(labels[:, 0] > 0, 170.0, 90.0)[:, None, None]
    return np.clip(base + rng.normal(0, 25, size=(len(labels), size, size)), 0, 255).astype(np.uint8)


def _labels(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.random(count) < 0.5, rng.random(count) < 0.3], axis=1).astype(np.float32)


def test_label_texts_become_multi_hot_rows() -> None:
    matrix = label_matrix_from_texts(["Bright", "No Finding", "Other|Bright"], ["Bright", "Other"])
    np.testing.assert_array_equal(matrix, [[1, 0], [0, 0], [1, 1]])
    with pytest.raises(CxrsynthError, match="Unknown"):
        label_matrix_from_texts(["Unknown"], ["Bright"])


def test_auroc_per_finding_is_nan_for_a_single_class_column() -> None:
    truth = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    scores = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3], [0.3, 0.4]])
    values = auroc_per_finding(truth, scores)
    assert values[0] == 1.0 and np.isnan(values[1])


def test_rank_auroc_equals_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    truth = (rng.random((60, 3)) < 0.4).astype(np.float32)
    scores = np.round(rng.random((60, 3)) + truth * 0.3, 1)  # rounding makes many ties
    expected = [roc_auc_score(truth[:, j], scores[:, j]) for j in range(3)]
    np.testing.assert_allclose(auroc_per_finding(truth, scores), expected, rtol=1e-12)


def test_tstr_learns_what_the_synthetic_labels_teach() -> None:
    config = ClassifierConfig(image_size=16, label_names=("Bright", "Noise"), steps=40, batch_size=32, seed=0)
    member_labels, synthetic_labels, test_labels = _labels(96, 1), _labels(96, 2), _labels(80, 3)
    trtr = train_classifier(_bright_when_positive(member_labels, 1), member_labels, config, device="cpu")
    inputs = UtilityInputs(
        synthetic_images=_bright_when_positive(synthetic_labels, 2),
        synthetic_labels=synthetic_labels,
        test_images=_bright_when_positive(test_labels, 3),
        test_labels=test_labels,
    )
    useful = evaluate_utility(trtr, inputs, seed=0, resamples=50)
    bright = useful["per_finding"][0]
    assert bright["finding"] == "Bright" and bright["tstr_auroc"] > 0.9 and bright["trtr_auroc"] > 0.9
    assert bright["tstr_auroc_ci"][0] <= bright["tstr_auroc"] <= bright["tstr_auroc_ci"][1]
    assert useful["ratio"] == pytest.approx(useful["tstr_auroc"] / useful["trtr_auroc"])
    assert useful["macro_over"] == ["Bright", "Noise"] and useful["n_test"] == 80 and useful["n_train_synthetic"] == 96

    # Synthetic images whose visible sign contradicts their label teach the opposite rule.
    misleading = UtilityInputs(
        synthetic_images=_bright_when_positive(1.0 - synthetic_labels, 2),
        synthetic_labels=synthetic_labels,
        test_images=inputs.test_images,
        test_labels=test_labels,
    )
    harmful = evaluate_utility(trtr, misleading, seed=0, resamples=50)
    assert harmful["per_finding"][0]["tstr_auroc"] < 0.2
    assert harmful["per_finding"][0]["trtr_auroc"] == bright["trtr_auroc"]
    assert harmful["ratio"] < 0.8 < useful["ratio"]


def test_utility_needs_a_scorable_finding() -> None:
    config = ClassifierConfig(image_size=16, label_names=("Bright",), steps=1, batch_size=8)
    labels = np.ones((8, 1), np.float32)
    trtr = train_classifier(_bright_when_positive(labels, 0), labels, config, device="cpu")
    inputs = UtilityInputs(_bright_when_positive(labels, 1), labels, _bright_when_positive(labels, 2), labels)
    with pytest.raises(CxrsynthError, match="both positive and negative"):
        evaluate_utility(trtr, inputs)
