"""Patient-level scoring: judge a patient on every image they contributed, not on one.

The unit of privacy is the patient. With ``--unit patient`` the audit scores up to
``--max-images-per-patient`` images of every audited patient (the image-level image first, the
others in seeded random order) and aggregates each attack's per-image scores per patient. The
aggregation — the mean, or the most or the least member-like image (min/max of the raw score) — is
chosen on the calibration patients only, by the calibration AUC in the better direction, and then
applied once to the evaluation patients; the patient-level metrics are
:func:`cxrsynth.audit.metrics.attack_metrics` of the aggregated scores, so they mean exactly what
the image-level ones mean with "patient" in place of "image".

Why it matters: a model that memorised one of a patient's twenty follow-ups leaks that patient,
but an image-level audit that drew one of the other nineteen sees nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrsynth.audit import metrics
from cxrsynth.data.prepared import PreparedData
from cxrsynth.errors import CxrsynthError

UNITS: tuple[str, ...] = ("image", "patient")
AGGREGATIONS: tuple[str, ...] = ("mean", "min", "max")
DEFAULT_MAX_IMAGES_PER_PATIENT = 8


@dataclass(frozen=True)
class ScoredImages:
    """The images an audit scores, and which audited patient each belongs to.

    Attributes:
        rows: image rows into the prepared data; the first ``n_patients`` are the image-level
            images, in the audited set's order.
        owner: index into the audited set (0..n_patients−1) of each scored image.
        n_patients: audited patients (members + non-members).
    """

    rows: np.ndarray
    owner: np.ndarray
    n_patients: int

    def images_per_patient(self) -> np.ndarray:
        """Number of scored images of each audited patient."""
        return np.bincount(self.owner, minlength=self.n_patients)


def patient_images(data: PreparedData, designated_rows: np.ndarray, max_images: int | None, seed: int) -> ScoredImages:
    """Every image (up to ``max_images``) of each patient whose image-level image is ``designated_rows[i]``.

    Args:
        data: the prepared data.
        designated_rows: the audited set's image rows, one per patient.
        max_images: cap per patient (the designated image included); None or 1 scores the designated image only.
        seed: seed of which extra images are kept when a patient has more than the cap.

    Returns:
        The :class:`ScoredImages`: the designated images first, then the extras.

    Raises:
        CxrsynthError: for a cap below 1.
    """
    designated_rows = np.asarray(designated_rows, dtype=np.int64)
    n = len(designated_rows)
    if max_images is not None and max_images < 1:
        raise CxrsynthError(f"--max-images-per-patient must be >= 1, got {max_images}")
    if max_images is None or max_images == 1:
        return ScoredImages(designated_rows, np.arange(n), n)
    patient_of = data.index["patient_id"].to_numpy()
    split_of = data.index["split"].to_numpy()
    rows_by_split = {str(split): data.patient_rows(str(split)) for split in np.unique(split_of[designated_rows])}
    rng = np.random.default_rng([seed, 61])
    extra_rows, extra_owner = [], []
    for i, row in enumerate(designated_rows):
        patient_rows = rows_by_split[str(split_of[row])][str(patient_of[row])]
        others = patient_rows[patient_rows != row]
        keep = rng.permutation(others)[: max_images - 1]
        extra_rows.extend(keep.tolist())
        extra_owner.extend([i] * len(keep))
    rows = np.concatenate([designated_rows, np.asarray(extra_rows, dtype=np.int64)])
    owner = np.concatenate([np.arange(n), np.asarray(extra_owner, dtype=np.int64)])
    return ScoredImages(rows, owner, n)


def aggregate(scores: np.ndarray, owner: np.ndarray, n_patients: int, how: str) -> np.ndarray:
    """Per-patient ``how`` (mean, min or max) of per-image raw scores.

    Raises:
        CxrsynthError: for an unknown aggregation or a patient without a score.
    """
    if how not in AGGREGATIONS:
        raise CxrsynthError(f"unknown aggregation {how!r}", f"use one of {AGGREGATIONS}")
    scores, owner = np.asarray(scores, dtype=np.float64), np.asarray(owner, dtype=np.int64)
    counts = np.bincount(owner, minlength=n_patients)
    if np.any(counts == 0):
        raise CxrsynthError("a patient has no scored image", "score at least one image of every audited patient")
    if how == "mean":
        return np.bincount(owner, weights=scores, minlength=n_patients) / counts
    result = np.full(n_patients, np.inf if how == "min" else -np.inf)
    (np.minimum if how == "min" else np.maximum).at(result, owner, scores)
    return result


TAIL_KEYS: tuple[str, ...] = ("p_value_tail", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "tpr_at_zero_fpr", "low_fpr",
                              "tail_direction", "eps_threshold", "eps_lower_bound", "eps_bound")
"""Patient-level results measured on the tail aggregation (see :func:`patient_metrics`)."""


def choose_aggregation(scores: np.ndarray, owner: np.ndarray, is_member: np.ndarray, is_calibration: np.ndarray,
                       member_if: str) -> tuple[str, str, dict[str, float], dict[str, int]]:
    """The aggregations chosen on calibration: one for the AUC, one for the low-FPR tail.

    Only calibration patients' scores and membership are looked at, so the evaluation half's tests
    stay valid. The AUC aggregation has the best calibration AUC; the tail aggregation identifies
    the most calibration members above every calibration non-member (a few memorised follow-ups
    barely move any AUC, so an AUC-chosen aggregation is a coin toss for them, while ``max`` keeps
    them at the top). Both in the direction chosen on calibration; ties keep the earlier of
    :data:`AGGREGATIONS` (the mean first), and the tail prefers the AUC choice on a tie.

    Returns:
        ``(auc aggregation, tail aggregation, {aggregation: calibration AUC},
        {aggregation: calibration members above every calibration non-member})``.
    """
    calibration = np.asarray(is_calibration, dtype=bool)
    labels = np.asarray(is_member, dtype=bool)[calibration]
    aucs: dict[str, float] = {}
    tails: dict[str, int] = {}
    for how in AGGREGATIONS:
        values = aggregate(scores, owner, len(is_member), how)[calibration]
        direction = metrics.choose_direction(labels, values, member_if)
        aucs[how] = float(metrics.roc_auc(labels, metrics.membership_scores(values, direction)))
        tail_direction = metrics.choose_tail_direction(labels, values, direction)
        tails[how] = metrics.calibration_tail_count(labels, metrics.membership_scores(values, tail_direction))
    best = max(AGGREGATIONS, key=lambda how: (aucs[how], -AGGREGATIONS.index(how)))
    tail = max(AGGREGATIONS, key=lambda how: (tails[how], how == best, -AGGREGATIONS.index(how)))
    return best, tail, aucs, tails


def patient_metrics(scores: np.ndarray, scored: ScoredImages, is_member: np.ndarray, is_calibration: np.ndarray,
                    member_if: str, delta: float, seed: int) -> tuple[dict, np.ndarray]:
    """Patient-level metrics of one attack's per-image scores.

    The AUC, its interval, ``p_value_auc`` and the balanced accuracy are measured on the AUC
    aggregation; the keys of :data:`TAIL_KEYS` (``p_value_tail``, TPRs at low FPR, the ε lower
    bound) on the tail aggregation (both chosen on calibration by :func:`choose_aggregation`).

    Returns:
        ``(result, aggregated scores)``: ``result`` holds the keys of
        :func:`cxrsynth.audit.metrics.attack_metrics` plus ``aggregation``, ``tail_aggregation``,
        ``calibration_auc_by_aggregation``, ``calibration_tail_by_aggregation`` and
        ``images_per_patient`` (``mean``, ``max``); the aggregated scores are the AUC aggregation's.
    """
    how, tail_how, aucs, tails = choose_aggregation(scores, scored.owner, is_member, is_calibration, member_if)
    aggregated = aggregate(scores, scored.owner, scored.n_patients, how)
    result = metrics.attack_metrics(aggregated, is_member, is_calibration, member_if, delta=delta, seed=seed)
    if tail_how != how:
        tail_scores = aggregate(scores, scored.owner, scored.n_patients, tail_how)
        tail_result = metrics.attack_metrics(tail_scores, is_member, is_calibration, member_if, delta=delta, seed=seed)
        result.update({key: tail_result[key] for key in TAIL_KEYS})
        result["notes"] = list(dict.fromkeys(result["notes"] + tail_result["notes"]))
    counts = scored.images_per_patient()
    result.update({"aggregation": how, "tail_aggregation": tail_how, "calibration_auc_by_aggregation": aucs,
                   "calibration_tail_by_aggregation": tails,
                   "images_per_patient": {"mean": float(counts.mean()), "max": int(counts.max())}})
    return result, aggregated


def aggregation_label(result: dict) -> str:
    """How a patient-level result was aggregated, for tables and logs: ``min``, or ``mean; tail: max``
    when the low-FPR tail used another aggregation than the AUC."""
    tail = result.get("tail_aggregation", result["aggregation"])
    return result["aggregation"] if tail == result["aggregation"] else f"{result['aggregation']}; tail: {tail}"
