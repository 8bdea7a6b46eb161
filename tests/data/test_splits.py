"""Patient-level splits: property tests with hypothesis, and the list-overlap check."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrsynth.data.splits import assign_patient_splits, check_disjoint_patient_lists, split_count
from cxrsynth.errors import CxrsynthError

patient_lists = st.lists(st.text(alphabet="0123456789abcdef", min_size=1, max_size=6), min_size=0, max_size=60)
fractions = st.floats(min_value=0.0, max_value=0.95)


def _by_split(assignment: dict[str, str]) -> dict[str, set[str]]:
    return {split: {p for p, s in assignment.items() if s == split} for split in ("member", "holdout", "test")}


@settings(max_examples=150, deadline=None)
@given(images=patient_lists, holdout=fractions, test=fractions, seed=st.integers(0, 2**32 - 1))
def test_every_patient_in_exactly_one_split_with_fractions_honoured(images, holdout, test, seed) -> None:
    assignment = assign_patient_splits(images, holdout_fraction=holdout, test_fraction=test, seed=seed)
    patients = set(images)
    assert set(assignment) == patients  # every patient, each under one key: no patient in two splits
    assert set(assignment.values()) <= {"member", "holdout", "test"}
    groups = _by_split(assignment)
    n = len(patients)
    # rounding half up, keeping at least one patient on the other side of each draw
    assert abs(len(groups["test"]) - test * n) <= 1 and len(groups["test"]) == split_count(test, n)
    rest = n - len(groups["test"])
    assert abs(len(groups["holdout"]) - holdout * rest) <= 1
    if n:
        assert len(groups["member"]) + len(groups["holdout"]) >= 1
    if rest:
        assert groups["member"]


@settings(max_examples=60, deadline=None)
@given(images=patient_lists, seed=st.integers(0, 1000), shuffle_seed=st.randoms(use_true_random=False))
def test_split_is_deterministic_by_seed_and_independent_of_listing_order(images, seed, shuffle_seed) -> None:
    first = assign_patient_splits(images, 0.3, 0.2, seed)
    shuffled = list(images)
    shuffle_seed.shuffle(shuffled)
    assert assign_patient_splits(shuffled, 0.3, 0.2, seed) == first


def test_different_seeds_give_different_splits() -> None:
    patients = [f"{i:04d}" for i in range(200)]
    assert assign_patient_splits(patients, seed=1) != assign_patient_splits(patients, seed=2)


@settings(max_examples=60, deadline=None)
@given(images=patient_lists, data=st.data())
def test_fixed_test_patients_are_test_and_only_they(images, data) -> None:
    patients = sorted(set(images))
    fixed = set(data.draw(st.lists(st.sampled_from(patients), unique=True))) if patients else set()
    assignment = assign_patient_splits(images, 0.25, 0.9, 7, test_patients=fixed | {"not-listed"})
    assert _by_split(assignment)["test"] == fixed
    assert "not-listed" not in assignment


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan])
def test_fractions_outside_zero_one_are_refused(bad: float) -> None:
    with pytest.raises(CxrsynthError, match="--holdout-fraction"):
        assign_patient_splits(["a", "b"], holdout_fraction=bad)
    with pytest.raises(CxrsynthError, match="--test-fraction"):
        assign_patient_splits(["a", "b"], test_fraction=bad)


def test_overlapping_patient_lists_name_the_lists_and_an_image_in_each() -> None:
    lists = {
        "train_val_list.txt": {"00000001": "00000001_000.png", "00000002": "00000002_000.png"},
        "test_list.txt": {"00000002": "00000002_001.png", "00000003": "00000003_000.png"},
    }
    with pytest.raises(CxrsynthError) as error:
        check_disjoint_patient_lists(lists, "SRC")
    message = str(error.value)
    assert "1 patient(s)" in message and "00000002_000.png" in message and "00000002_001.png" in message
    check_disjoint_patient_lists({"a": {"1": "x"}, "b": {"2": "y"}}, "SRC")  # disjoint: accepted
