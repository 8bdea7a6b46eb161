"""Automatic choice of an attack's diffusion timestep t on the calibration half.

The attacks that score an image at one timestep (``loss``, ``pia``, ``pian``, ``sima``) are
sensitive to t: a small model that memorised a few images shows it at small t, a large one often
at t ≈ 100–300. With ``--timestep`` left unset (``AttackSettings.timestep is None``) each of them
scores the **calibration half only** at every candidate t, keeps the t whose calibration AUC is
farthest from 0.5 (either direction counts: the runner chooses the direction on the calibration
half too, :func:`cxrsynth.audit.metrics.choose_direction`), then scores the **evaluation half only
at the chosen t**. The evaluation half is never scored at a rejected t, so its membership plays no
part in the choice and its metrics are measured once, at a t fixed beforehand.

Common random numbers: a candidate's score of an image uses the same noise draw(s) as every other
candidate's (the per-row noise streams of :class:`cxrsynth.audit.whitebox.WhiteBoxModel` do not
depend on t), so the comparison between candidates is not blurred by noise differences.

Cost per audited image, with C candidates and an attack costing n forwards per image at one t:
``n·(C + 1)/2`` when the calibration half is half of the audited images (the runner's split):
calibration images pay C·n, evaluation images n. The ties rule: the first candidate (in the given
order, smallest t first for :data:`cxrsynth.audit.registry.TIMESTEP_CANDIDATES`) among the best.

PIA's official code (Kong et al., github kong13661/PIA) sweeps t = 10, 20, …, 300 and reports
the best t measured on the very images it evaluates; here the sweep
(:data:`~cxrsynth.audit.registry.TIMESTEP_CANDIDATES`, t = 10…300) is done on the calibration half.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cxrsynth.audit.metrics import membership_scores, roc_auc
from cxrsynth.audit.registry import AttackContext
from cxrsynth.errors import CxrsynthError

ScoreAt = Callable[[int, np.ndarray], np.ndarray]
"""``score_at(t, rows)``: raw scores of the audited images ``rows`` at timestep t (one per row)."""


def valid_candidates(candidates: Sequence[int], num_train_timesteps: int) -> list[int]:
    """The candidates inside 1..num_train_timesteps−1, in the given order, without repeats.

    Raises:
        CxrsynthError: when none is left.
    """
    kept: list[int] = []
    for t in candidates:
        if 1 <= int(t) < num_train_timesteps and int(t) not in kept:
            kept.append(int(t))
    if not kept:
        raise CxrsynthError(f"no candidate timestep of {list(candidates)} lies in 1..{num_train_timesteps - 1}",
                            "pass --timestep within the model's schedule")
    return kept


def select_timestep(context: AttackContext, candidates: Sequence[int], score_at: ScoreAt,
                    member_if: str) -> tuple[int, dict[int, float], np.ndarray]:
    """Choose t on the calibration half: the candidate with the largest |AUC − 0.5| there.

    Args:
        context: the attack's context (only ``calibration_rows`` / ``calibration_is_member`` are read).
        candidates: the timesteps to try, in tie-breaking order.
        score_at: raw scores of given rows at a timestep; called once per candidate, with the
            calibration rows only.
        member_if: the attack's published direction (the table's AUCs are in that direction).

    Returns:
        ``(t, calibration_auc, calibration_scores)``: the chosen t, the calibration AUC (published
        direction) of every candidate, and the calibration rows' raw scores at the chosen t.

    Raises:
        CxrsynthError: without both members and non-members among the calibration rows, or when
            ``score_at`` returns a wrong number of scores or non-finite ones.
    """
    rows = np.asarray(context.calibration_rows, dtype=np.int64)
    labels = np.asarray(context.calibration_is_member).astype(bool)
    if labels.all() or not labels.any():
        raise CxrsynthError("choosing the timestep needs members and non-members in the calibration half",
                            "pass --timestep to fix t")
    table: dict[int, float] = {}
    best: tuple[float, int, np.ndarray] | None = None
    for t in candidates:
        scores = np.asarray(score_at(int(t), rows), dtype=np.float64)
        if scores.shape != rows.shape:
            raise CxrsynthError(f"timestep {t}: {scores.shape} scores for {rows.shape[0]} calibration rows")
        auc = roc_auc(labels, membership_scores(scores, member_if))
        table[int(t)] = auc
        if best is None or abs(auc - 0.5) > best[0]:
            best = (abs(auc - 0.5), int(t), scores)
    if best is None:
        raise CxrsynthError("timestep selection needs at least one candidate")
    return best[1], table, best[2]


def scores_at_selected_timestep(context: AttackContext, name: str, member_if: str, score_at: ScoreAt,
                                candidates: Sequence[int]) -> np.ndarray:
    """Raw scores of every audited image, at ``--timestep`` or at the t chosen on the calibration half.

    With ``context.settings.timestep`` set, every image is scored at it and
    ``context.choices[name] = {"timestep": t, "selected_by": "--timestep"}``. Otherwise the
    calibration rows are scored at every candidate (:func:`select_timestep`), the evaluation rows
    only at the chosen t, and ``context.choices[name]`` records ``timestep``, ``candidates``,
    ``calibration_auc`` ({str(t): AUC in the published direction}) and ``selected_by``.

    Args:
        context: the attack's context.
        name: the attack's registered name (key of ``context.choices``).
        member_if: the attack's published direction.
        score_at: raw scores of given rows at a timestep.
        candidates: timesteps to choose from (those outside the model's schedule are dropped).

    Returns:
        float64 raw scores, one per audited image.

    Raises:
        CxrsynthError: as :func:`select_timestep`, or when no candidate fits the schedule.
    """
    count = len(context.images)
    settings = context.settings
    if settings.timestep is not None:
        t = int(settings.timestep)
        context.choices[name] = {"timestep": t, "selected_by": "--timestep"}
        return np.asarray(score_at(t, np.arange(count)), dtype=np.float64)
    steps = valid_candidates(candidates, context.model.num_train_timesteps)
    chosen, table, calibration_scores = select_timestep(context, steps, score_at, member_if)
    scores = np.zeros(count)
    calibration = np.asarray(context.calibration_rows, dtype=np.int64)
    scores[calibration] = calibration_scores
    evaluation = np.setdiff1d(np.arange(count), calibration)
    if len(evaluation):
        scores[evaluation] = score_at(chosen, evaluation)
    context.choices[name] = {
        "timestep": chosen, "candidates": steps,
        # string keys: audit.json round-trips them unchanged
        "calibration_auc": {str(t): float(auc) for t, auc in table.items()},
        "selected_by": "calibration half: largest |AUC - 0.5|",
    }
    return scores


def selection_nfe(forwards_at_one_timestep: float, candidates: Sequence[int]) -> float:
    """NFE per audited image of :func:`scores_at_selected_timestep` when half the images calibrate:
    ``n·(C + 1)/2`` for an attack costing n forwards per image at one t and C candidates."""
    return forwards_at_one_timestep * (len(candidates) + 1) / 2.0
