"""Patient-level splits: ``test``, then ``member`` / ``holdout`` from the remaining patients.

Splits are always by patient, never by image: every image of a patient lands in the same split.
A seeded split draws a fixed number of patients (the fraction of the pool, rounded half up, and
never the whole pool) from the patients in sorted order, so it depends only on the set of
patients, the fractions and the seed — not on the order images were listed in.
"""

from __future__ import annotations

import math
from typing import Collection, Iterable, Mapping

import numpy as np

from cxrsynth.errors import CxrsynthError


def check_fraction(value: float, option: str) -> float:
    """Return ``value`` if it is a usable split fraction (0 ≤ value < 1).

    Raises:
        CxrsynthError: otherwise, naming the option.
    """
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise CxrsynthError(f"{option} must be at least 0 and below 1, got {value}", f"pass e.g. {option} 0.2")
    return float(value)


def split_count(fraction: float, pool: int) -> int:
    """How many of ``pool`` patients a fraction takes: rounded half up, leaving at least one behind.

    The one left behind keeps the other side of the split non-empty whenever the pool has a patient.
    """
    if pool <= 0:
        return 0
    return min(math.floor(fraction * pool + 0.5), pool - 1)


def _draw(patients: list[str], fraction: float, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Seeded draw of ``split_count(fraction)`` patients: returns (drawn, rest)."""
    order = rng.permutation(len(patients))
    count = split_count(fraction, len(patients))
    drawn = {patients[i] for i in order[:count]}
    return [p for p in patients if p in drawn], [p for p in patients if p not in drawn]


def assign_patient_splits(
    patients: Iterable[str],
    holdout_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    test_patients: Collection[str] | None = None,
) -> dict[str, str]:
    """Assign every patient to ``member``, ``holdout`` or ``test``.

    Args:
        patients: patient ids (repeats allowed; one entry per image is fine).
        holdout_fraction: share of the non-test patients put in ``holdout`` (0 ≤ f < 1).
        test_fraction: share of all patients put in ``test`` when ``test_patients`` is None.
        seed: seed of the draws.
        test_patients: patients fixed to ``test`` by the source (e.g. ``test_list.txt``); ids not
            among ``patients`` are ignored, and ``test_fraction`` is then unused.

    Returns:
        patient id → split name, for every distinct patient.

    Raises:
        CxrsynthError: for a fraction outside [0, 1).
    """
    check_fraction(holdout_fraction, "--holdout-fraction")
    check_fraction(test_fraction, "--test-fraction")
    pool = sorted(set(patients))
    rng = np.random.default_rng(seed)
    if test_patients is None:
        test, rest = _draw(pool, test_fraction, rng)
    else:
        fixed = set(test_patients)
        test, rest = [p for p in pool if p in fixed], [p for p in pool if p not in fixed]
    holdout, member = _draw(rest, holdout_fraction, rng)
    assignment = {patient: "test" for patient in test}
    assignment.update({patient: "holdout" for patient in holdout})
    assignment.update({patient: "member" for patient in member})
    return assignment


def check_disjoint_patient_lists(lists: Mapping[str, Mapping[str, str]], source: str) -> None:
    """Refuse patient lists (e.g. ``train_val_list.txt`` and ``test_list.txt``) that share a patient.

    Args:
        lists: list name → {patient id → an image of that patient in the list}.
        source: where the lists are, named in the error.

    Raises:
        CxrsynthError: naming up to five shared patients, the lists and an image in each.
    """
    names = list(lists)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = sorted(set(lists[first]) & set(lists[second]))
            if shared:
                examples = ", ".join(
                    f"patient {p} ({first}: {lists[first][p]}; {second}: {lists[second][p]})" for p in shared[:5]
                )
                raise CxrsynthError(
                    f"{source}: {len(shared)} patient(s) are in both {first} and {second}, e.g. {examples}; "
                    "splits must be by patient, or the same person is both trained on and tested on",
                    f"make {first} and {second} patient-disjoint (move all of a patient's images to one list), "
                    "or remove both files to use a seeded patient split",
                )
