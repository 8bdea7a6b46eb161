"""Downstream utility: can synthetic images train a classifier that works on real patients?

TSTR ("train on synthetic, test on real") vs TRTR ("train on real, test on real"), Esteban et al.
(2017): the same :class:`~cxrsynth.evaluate.domain.CompactCxrNet` architecture, budget (steps ×
batch) and seed is trained once on the synthetic images with the labels they were sampled with,
and once on the real ``member`` images with their finding labels. Both are scored on the real
``test`` split: AUROC per finding (rank-based; equal to scikit-learn's ``roc_auc_score``), the
macro average over findings with both classes present in ``test``, and ``ratio`` = TSTR macro /
TRTR macro (1 = synthetic data as useful as real data).

**Same number of training images.** A classifier trained on more images is better for that reason
alone, so the two are trained on ``matched_n_train = min(n_synthetic, n_member)`` images each: the
larger set is subsampled (seeded, without replacement). When the synthetic set is the larger one
(or as large), TRTR is the run's domain classifier, reused as is; when the members are more, TRTR is
trained anew on a seeded subsample of them (``trtr_retrained``), with the step budget capped for
the smaller set (:func:`~cxrsynth.evaluate.domain.classifier_steps_for`) — the same config as TSTR.

**Intervals over patients.** 95% intervals come from one paired cluster bootstrap over the test
*patients*: each resample draws patients with replacement and takes all their images
(:func:`~cxrsynth.evaluate.bootstrap.patient_bootstrap_rows`), because a patient's images are not
independent — resampling images would treat 60 follow-ups of one patient as 60 independent
cases and give intervals that are too narrow. Each resample scores both models on the same
images, so the ratio's interval accounts for their correlation. The intervals reflect the finite
test set only, not the randomness of training (one seed per classifier). Without patient ids each
image is its own patient (``bootstrap_unit`` = ``image``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import rankdata

from cxrsynth.data.prepared import split_labels
from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate.bootstrap import (
    DEFAULT_RESAMPLES,
    patient_bootstrap_rows,
    patient_groups,
    percentile_interval,
    subsample_rows,
)
from cxrsynth.evaluate.domain import ClassifierConfig, DomainClassifier, classifier_steps_for, train_classifier


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
class RealTrainingSet:
    """The real images the TRTR classifier was trained on (to retrain it on fewer, when needed).

    Attributes:
        images: the array holding them (uint8 N×S×S; a memory-mapped array is read row by row).
        rows: the rows of ``images`` TRTR was trained on.
        labels: multi-hot labels, one row per entry of ``rows``.
    """

    images: np.ndarray
    rows: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class UtilityInputs:
    """Images and labels of the utility check (uint8 images, multi-hot labels over the data's findings).

    Attributes:
        synthetic_images, synthetic_labels: the synthetic training set.
        test_images, test_labels: the real test set.
        test_patients: patient id of each test image (the bootstrap's unit); None: one patient per image.
        real_training: TRTR's training set; needed only when it has more images than the synthetic
            set (TRTR is then retrained on a subsample of the synthetic set's size).
    """

    synthetic_images: np.ndarray
    synthetic_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_patients: np.ndarray | None = None
    real_training: RealTrainingSet | None = None


def real_training_size(trtr: DomainClassifier, inputs: UtilityInputs) -> int:
    """Images TRTR was trained on: ``inputs.real_training``'s rows, else the classifier's recorded ``n_train``.

    Raises:
        CxrsynthError: when neither says.
    """
    if inputs.real_training is not None:
        return int(len(inputs.real_training.rows))
    count = int(trtr.info.get("n_train", 0))
    if count < 1:
        raise CxrsynthError("the TRTR classifier does not record how many images it was trained on")
    return count


def matched_trtr(
    trtr: DomainClassifier, inputs: UtilityInputs, matched_n: int, seed: int, progress: bool = False
) -> tuple[DomainClassifier, bool]:
    """TRTR trained on ``matched_n`` real images: ``trtr`` itself when it was, else one retrained on a subsample.

    The retrained classifier uses :func:`matched_config` of TRTR's config and a seeded subsample of
    ``inputs.real_training`` drawn without replacement; TSTR then trains with the same config.

    Returns:
        ``(classifier, retrained)``.

    Raises:
        CxrsynthError: when a retraining is needed but ``inputs.real_training`` is missing.
    """
    if real_training_size(trtr, inputs) <= matched_n:
        return trtr, False
    real = inputs.real_training
    if real is None:
        raise CxrsynthError(
            "TRTR was trained on more images than the synthetic set has, and its training images were not given",
            "pass UtilityInputs.real_training so that TRTR can be retrained at the matched N",
        )
    chosen = subsample_rows(len(real.rows), matched_n, np.random.default_rng([seed, 12]))
    classifier = train_classifier(
        real.images, np.asarray(real.labels)[chosen], matched_config(trtr.config, matched_n), device=trtr.device,
        progress=progress, description="TRTR classifier (matched N)", rows=np.asarray(real.rows)[chosen],
    )
    return classifier, True


def matched_config(config: ClassifierConfig, matched_n: int) -> ClassifierConfig:
    """``config`` with its steps capped for ``matched_n`` training images (:func:`classifier_steps_for`)."""
    return replace(config, steps=classifier_steps_for(matched_n, config.steps, config.batch_size))


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
        inputs: synthetic images with their sampled labels, the real test images with theirs (and
            their patient ids), and TRTR's training set (see :class:`UtilityInputs`).
        seed: seed of the bootstrap and of the subsampling to the matched N (the classifiers use
            ``trtr.config``'s seed and budget, the steps capped for the matched N).
        resamples: bootstrap resamples.
        progress: show the training progress bars.

    Returns:
        The ``utility`` object of ``fidelity.json`` (documented in :mod:`cxrsynth.evaluate.runner`).

    Raises:
        CxrsynthError: when ``trtr`` is not a findings classifier, no finding has both classes in test,
            or TRTR needs retraining at the matched N and ``inputs.real_training`` is missing.
    """
    if trtr.config.task != "findings":
        raise CxrsynthError("the utility check needs a classifier trained on finding labels")
    names = list(trtr.config.label_names)
    scorable = np.array([0 < inputs.test_labels[:, j].sum() < len(inputs.test_labels) for j in range(len(names))])
    if not scorable.any():
        raise CxrsynthError("no finding has both positive and negative images in the test split; AUROC is undefined")
    n_synthetic, n_real = len(inputs.synthetic_images), real_training_size(trtr, inputs)
    matched_n = min(n_synthetic, n_real)
    real_model, retrained = matched_trtr(trtr, inputs, matched_n, seed, progress)
    synthetic_rows = (
        np.arange(n_synthetic) if n_synthetic == matched_n
        else subsample_rows(n_synthetic, matched_n, np.random.default_rng([seed, 11]))
    )
    synthetic_labels = np.asarray(inputs.synthetic_labels)[synthetic_rows]
    tstr = train_classifier(
        inputs.synthetic_images, synthetic_labels, real_model.config, device=trtr.device, progress=progress,
        description="TSTR classifier", rows=synthetic_rows,
    )
    scores = {"tstr": tstr.predict_proba(inputs.test_images), "trtr": real_model.predict_proba(inputs.test_images)}
    truth = inputs.test_labels
    point = {name: auroc_per_finding(truth, score) for name, score in scores.items()}
    columns = np.flatnonzero(scorable)

    groups = patient_groups(inputs.test_patients, len(truth))
    rng = np.random.default_rng(seed)
    boot = {"tstr": [], "trtr": []}
    for _ in range(resamples):
        rows = patient_bootstrap_rows(groups, rng)
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
                "n_positive_synthetic": int(synthetic_labels[:, j].sum()),
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
        "matched_n_train": int(matched_n),
        "n_train_synthetic": int(tstr.info.get("n_train", len(synthetic_rows))),
        "n_train_real": int(real_model.info.get("n_train", matched_n)),
        "n_synthetic_available": int(n_synthetic),
        "n_real_available": int(n_real),
        "trtr_retrained": retrained,
        "n_test": int(len(truth)),
        "n_test_patients": int(len(groups)),
        "bootstrap_unit": "patient" if inputs.test_patients is not None else "image",
        "classifier": {"steps": tstr.config.steps, "batch_size": tstr.config.batch_size, "seed": tstr.config.seed},
        "tstr_training_seconds": tstr.info.get("seconds"),
    }
