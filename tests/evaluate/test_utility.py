"""TSTR vs TRTR utility on images whose label is visible (brightness), and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate.domain import ClassifierConfig, train_classifier
from cxrsynth.evaluate.utility import (
    RealTrainingSet,
    UtilityInputs,
    auroc_per_finding,
    evaluate_utility,
    label_matrix_from_texts,
)


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


def _bright_classifier(count: int, seed: int, steps: int = 40):
    config = ClassifierConfig(image_size=16, label_names=("Bright", "Noise"), steps=steps, batch_size=32, seed=0)
    labels = _labels(count, seed)
    images = _bright_when_positive(labels, seed)
    return train_classifier(images, labels, config, device="cpu"), images, labels


def test_tstr_and_trtr_train_on_the_same_number_of_images() -> None:
    trtr, member_images, member_labels = _bright_classifier(48, 1)
    test_labels = _labels(60, 3)
    test_images = _bright_when_positive(test_labels, 3)
    many_synthetic = _labels(96, 2)
    more_synthetic = evaluate_utility(trtr, UtilityInputs(_bright_when_positive(many_synthetic, 2), many_synthetic,
                                                          test_images, test_labels), seed=0, resamples=20)
    assert more_synthetic["matched_n_train"] == more_synthetic["n_train_synthetic"] == more_synthetic["n_train_real"] == 48
    assert more_synthetic["n_synthetic_available"] == 96 and more_synthetic["trtr_retrained"] is False
    assert sum(row["n_positive_synthetic"] for row in more_synthetic["per_finding"]) < many_synthetic.sum()

    # More members than synthetic images: TRTR is retrained on a seeded subsample of the synthetic set's size.
    few_synthetic = _labels(24, 4)
    real = RealTrainingSet(images=member_images, rows=np.arange(48), labels=member_labels)
    inputs = UtilityInputs(_bright_when_positive(few_synthetic, 4), few_synthetic, test_images, test_labels,
                           real_training=real)
    fewer_synthetic = evaluate_utility(trtr, inputs, seed=0, resamples=20)
    assert fewer_synthetic["n_train_synthetic"] == fewer_synthetic["n_train_real"] == 24
    assert fewer_synthetic["n_real_available"] == 48 and fewer_synthetic["trtr_retrained"] is True
    assert fewer_synthetic["trtr_auroc"] != more_synthetic["trtr_auroc"]
    assert evaluate_utility(trtr, inputs, seed=0, resamples=20)["trtr_auroc"] == fewer_synthetic["trtr_auroc"]
    with pytest.raises(CxrsynthError, match="real_training"):
        evaluate_utility(trtr, UtilityInputs(inputs.synthetic_images, few_synthetic, test_images, test_labels))


def test_intervals_resample_test_patients_not_images() -> None:
    trtr, _, _ = _bright_classifier(64, 1, steps=20)
    synthetic_labels, test_labels = _labels(64, 2), _labels(40, 3)
    synthetic_images, test_images = _bright_when_positive(synthetic_labels, 2), _bright_when_positive(test_labels, 3)
    unique = evaluate_utility(trtr, UtilityInputs(synthetic_images, synthetic_labels, test_images, test_labels),
                              seed=0, resamples=100)
    # Every test patient now has 5 identical images: resampling patients must give exactly the
    # intervals of the 40 distinct images; resampling images would make them narrower.
    copies = 5
    patients = np.repeat([f"p{i:02d}" for i in range(40)], copies)
    repeated = UtilityInputs(synthetic_images, synthetic_labels, np.repeat(test_images, copies, axis=0),
                             np.repeat(test_labels, copies, axis=0), test_patients=patients)
    by_patient = evaluate_utility(trtr, repeated, seed=0, resamples=100)
    assert by_patient["bootstrap_unit"] == "patient" and by_patient["n_test_patients"] == 40
    assert by_patient["n_test"] == 200 and unique["bootstrap_unit"] == "image"
    for key in ("tstr_auroc_ci", "trtr_auroc_ci", "ratio_ci"):
        assert by_patient[key] == pytest.approx(unique[key], abs=1e-9), key
    by_image = evaluate_utility(trtr, UtilityInputs(*[getattr(repeated, f) for f in
                                                      ("synthetic_images", "synthetic_labels", "test_images", "test_labels")]),
                                seed=0, resamples=100)

    def width(result: dict) -> float:
        return result["trtr_auroc_ci"][1] - result["trtr_auroc_ci"][0]

    print(f"TRTR macro AUROC 95% width: {width(by_patient):.3f} over patients, {width(by_image):.3f} over images")
    assert width(by_image) < 0.7 * width(by_patient)
