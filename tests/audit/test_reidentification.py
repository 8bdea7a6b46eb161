"""Patient re-identification on the phantom, whose patients are individual by construction."""

from __future__ import annotations


import numpy as np
import pytest

from cxrsynth.audit.reidentification import (
    VerifierConfig,
    match_patients,
    plan_reidentification,
    reidentify,
    score_against_members,
    train_patient_verifier,
    verification_auc,
    verification_pairs,
)
from cxrsynth.data.phantom import generate_phantom
from cxrsynth.data.prepare import prepare_dataset
from cxrsynth.data.prepared import PreparedData, load_prepared

STEPS = 150


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """80 phantom patients with ~3 studies each at 32², split member/holdout/test."""
    root = tmp_path_factory.mktemp("reid")
    generate_phantom(root / "phantom", patients=80, studies_per_patient=3.0, size=32, seed=1)
    prepare_dataset(root / "phantom", root / "data", "nih", size=32, holdout_fraction=0.5, seed=0, workers=1, progress=False)
    return load_prepared(root / "data")


def _patient_index(data: PreparedData, patients: list[str]) -> tuple[np.ndarray, np.ndarray]:
    lookup = {patient: i for i, patient in enumerate(patients)}
    selected = data.index[data.index["patient_id"].isin(lookup)]
    return np.asarray(data.images[selected["row"].to_numpy()]), selected["patient_id"].map(lookup).to_numpy()


def test_plan_keeps_members_and_gallery_out_of_training(phantom: PreparedData) -> None:
    plan = plan_reidentification(phantom, seed=0)
    members = set(phantom.patient_rows("member"))
    assert len(plan.gallery_members) == len(plan.gallery_holdout) >= 1
    assert set(plan.gallery_members) <= members
    trained_on = set(plan.train_patients) | set(plan.verification_patients)
    assert not trained_on & members and not trained_on & set(plan.gallery_holdout)
    assert not set(plan.train_patients) & set(plan.verification_patients)
    assert plan == plan_reidentification(phantom, seed=0)


def test_verification_pairs_are_balanced_and_labelled_correctly() -> None:
    patients = np.array([0, 0, 0, 1, 1, 2])
    pairs, same = verification_pairs(patients, seed=0)
    assert same.sum() == 4 and (~same).sum() == 4  # 3 pairs of patient 0, 1 of patient 1
    assert np.array_equal(patients[pairs[:, 0]] == patients[pairs[:, 1]], same)


def test_verifier_recognises_unseen_patients_well_above_chance(phantom: PreparedData) -> None:
    plan = plan_reidentification(phantom, seed=0)
    train_images, train_patients = _patient_index(phantom, plan.train_patients)
    verifier = train_patient_verifier(train_images, train_patients, VerifierConfig(input_size=32, steps=STEPS), device="cpu")
    # unseen patients: the gallery holdout patients (never trained on)
    images, patient_index = _patient_index(phantom, plan.gallery_holdout)
    auc, positive_pairs = verification_auc(verifier, images, patient_index)
    assert positive_pairs >= 20 and auc > 0.8
    # one study per patient as the query, the others as the gallery: most queries find their own patient
    first = np.array([np.flatnonzero(patient_index == p)[0] for p in np.unique(patient_index)
                      if (patient_index == p).sum() >= 2])
    rest = np.setdiff1d(np.arange(len(images)), first)
    matches = match_patients(verifier, images[first], images[rest], patient_index[rest])
    accuracy = float(np.mean(matches.patient_ids == patient_index[first]))
    chance = 1.0 / len(np.unique(patient_index[rest]))
    assert accuracy > 4 * chance


def test_reidentify_links_copies_of_member_images_to_members(phantom: PreparedData) -> None:
    plan = plan_reidentification(phantom, seed=0)
    gallery_member_rows = phantom.index.loc[phantom.index["patient_id"].isin(plan.gallery_members), "row"].to_numpy()
    leaked = np.asarray(phantom.images[gallery_member_rows])
    report = reidentify(phantom, leaked, seed=0, steps=STEPS, device="cpu")
    assert report["verification_auc"] > 0.75
    assert report["fraction_linked_to_member"] > 0.9 and report["p_value"] < 0.01
    assert report["n_synthetic"] == len(leaked)
    assert report["gallery_images"]["member"] == len(gallery_member_rows)


def test_score_against_members_finds_the_patient_of_a_leaked_image(phantom: PreparedData) -> None:
    member_rows = phantom.rows("member")
    leaked = np.asarray(phantom.images[member_rows[:6]])
    novel = np.asarray(phantom.images[phantom.rows("test")[:6]])
    matches = score_against_members(phantom, np.concatenate([leaked, novel]), steps=STEPS, device="cpu", chunk=17)
    expected = phantom.index["patient_id"].to_numpy()[member_rows[:6]]
    assert list(matches.patient_ids[:6]) == list(expected)
    np.testing.assert_allclose(matches.similarity[:6], 1.0, atol=1e-4)
    assert matches.similarity[6:].max() < 1.0 - 1e-3
