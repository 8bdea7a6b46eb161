"""Downstream utility: can synthetic images train a classifier that works on real patients?

TSTR ("train on synthetic, test on real") vs TRTR ("train on real, test on real"), Esteban et al.
(2017): the same :class:`~cxrsynth.evaluate.domain.CompactCxrNet` architecture, budget (steps ×
batch) and seed is trained once on the synthetic images with the labels they were sampled with,
and once on the real ``member`` images with their finding labels — the run's domain classifier
*is* that TRTR model, so it is reused. Both are scored on the real ``test`` split: AUROC per
finding (rank-based; equal to scikit-learn's ``roc_auc_score``), the macro average over findings with both classes present in ``test``,
and ``ratio`` = TSTR macro / TRTR macro (1 = synthetic data as useful as real data).

95% intervals come from one paired bootstrap over the test images: each resample scores both
models on the same images, so the ratio's interval accounts for their correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from cxrsynth.data.prepared import split_labels
from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate.bootstrap import DEFAULT_RESAMPLES, percentile_interval
from cxrsynth.evaluate.domain import DomainClassifier, train_classifier


def label_matrix_from_texts(label_texts: list[str], label_names: list[str] | tuple[str, ...]) -> np.ndarray:
    """Multi-hot matrix (N×len(label_names)) from label-set strings like ``"A|B"`` or ``"No Finding"``.

    Raises:
        CxrsynthError: for a finding name that is not in ``label_names``.
    """
    position = {name: i for i, name in enumerate(label_names)}
    matrix = np.zeros((len(label_texts), len(position)), dtype=np.float32)
    for row, text in enumerate(label_texts):
        for name in split_labels(text):
            if name not in position:
                raise CxrsynthError(
                    f"synthetic label {name!r} is not a finding of the prepared data ({', '.join(label_names)})",
                    "evaluate against the data the run was trained on (--data)",
                )
            matrix[row, position[name]] = 1.0
    return matrix


def auroc_per_finding(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each column; NaN where ``truth`` has only one class in that column.

    Computed as the Mann–Whitney statistic from average ranks (``scipy.stats.rankdata``), which
    equals scikit-learn's ``roc_auc_score`` including ties (the tests check it) but is vectorised
    over findings: the bootstrap needs thousands of AUROCs, and ``roc_auc_score``'s per-call
    overhead (~5 ms) would dominate the evaluation.
    """
    truth = np.asarray(truth, dtype=bool)
    ranks = rankdata(np.asarray(scores, dtype=np.float64), axis=0)
    positives = truth.sum(axis=0).astype(np.float64)
    negatives = len(truth) - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        values = ((ranks * truth).sum(axis=0) - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), values, np.nan)


def _macro(values: np.ndarray, columns: np.ndarray) -> float:
    chosen = values[columns]
    return float(np.nanmean(chosen)) if np.isfinite(chosen).any() else float("nan")


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclass(frozen=True)
class UtilityInputs:
    """Images and labels of the utility check (uint8 images, multi-hot labels over the data's findings)."""

    synthetic_images: np.ndarray
    synthetic_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def evaluate_utility(
    trtr: DomainClassifier,
    inputs: UtilityInputs,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    progress: bool = False,
) -> dict:
    """Train the TSTR classifier and compare it with the TRTR one on real test images.

    Args:
        trtr: the run's domain classifier (``findings`` task, trained on real member images).
        inputs: synthetic images with their sampled labels, and the real test images with theirs.
        seed: bootstrap seed (the TSTR classifier uses ``trtr.config``'s seed and budget).
        resamples: bootstrap resamples.
        progress: show the TSTR training progress bar.

    Returns:
        The ``utility`` object of ``fidelity.json`` (documented in :mod:`cxrsynth.evaluate.runner`).

    Raises:
        CxrsynthError: when ``trtr`` is not a findings classifier, or no finding has both classes in test.
    """
    if trtr.config.task != "findings":
        raise CxrsynthError("the utility check needs a classifier trained on finding labels")
    names = list(trtr.config.label_names)
    scorable = np.array([0 < inputs.test_labels[:, j].sum() < len(inputs.test_labels) for j in range(len(names))])
    if not scorable.any():
        raise CxrsynthError("no finding has both positive and negative images in the test split; AUROC is undefined")
    tstr = train_classifier(
        inputs.synthetic_images, inputs.synthetic_labels, trtr.config, device=trtr.device, progress=progress,
        description="TSTR classifier",
    )
    scores = {"tstr": tstr.predict_proba(inputs.test_images), "trtr": trtr.predict_proba(inputs.test_images)}
    truth = inputs.test_labels
    point = {name: auroc_per_finding(truth, score) for name, score in scores.items()}
    columns = np.flatnonzero(scorable)

    rng = np.random.default_rng(seed)
    boot = {"tstr": [], "trtr": []}
    for _ in range(resamples):
        rows = rng.integers(0, len(truth), size=len(truth))
        for name, score in scores.items():
            boot[name].append(auroc_per_finding(truth[rows], score[rows]))
    boot_arrays = {name: np.array(values) for name, values in boot.items()}
    macro_boot = {name: np.array([_macro(v, columns) for v in values]) for name, values in boot_arrays.items()}

    macro = {name: _macro(values, columns) for name, values in point.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_boot = macro_boot["tstr"] / macro_boot["trtr"]
    per_finding = []
    for j, finding in enumerate(names):
        per_finding.append(
            {
                "finding": finding,
                "n_positive_test": int(truth[:, j].sum()),
                "n_positive_synthetic": int(inputs.synthetic_labels[:, j].sum()),
                "tstr_auroc": _finite_or_none(point["tstr"][j]),
                "tstr_auroc_ci": percentile_interval(boot_arrays["tstr"][:, j]) if scorable[j] else None,
                "trtr_auroc": _finite_or_none(point["trtr"][j]),
                "trtr_auroc_ci": percentile_interval(boot_arrays["trtr"][:, j]) if scorable[j] else None,
            }
        )
    return {
        "tstr_auroc": _finite_or_none(macro["tstr"]),
        "tstr_auroc_ci": percentile_interval(macro_boot["tstr"]),
        "trtr_auroc": _finite_or_none(macro["trtr"]),
        "trtr_auroc_ci": percentile_interval(macro_boot["trtr"]),
        "ratio": _finite_or_none(macro["tstr"] / macro["trtr"]),
        "ratio_ci": percentile_interval(ratio_boot),
        "per_finding": per_finding,
        "macro_over": [names[j] for j in columns],
        "n_train_synthetic": int(len(inputs.synthetic_images)),
        "n_train_real": int(trtr.info.get("n_train", 0)),
        "n_test": int(len(truth)),
        "classifier": {"steps": trtr.config.steps, "batch_size": trtr.config.batch_size, "seed": trtr.config.seed},
        "tstr_training_seconds": tstr.info.get("seconds"),
    }
