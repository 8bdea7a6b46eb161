"""Reference models (halves, data views, reuse) and the LiRA / RMIA scores built on them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from cxrsynth.audit.attacks.lira import gaussian_fits, lira_offline, lira_online
from cxrsynth.audit.attacks.rmia import rmia_scores
from cxrsynth.audit.reference import (
    MANIFEST_FILE,
    REFERENCE_FOLDER,
    pool_patients,
    prepare_reference_models,
    reference_halves,
    translate_labels,
    write_data_view,
)
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError
from tests.factories import make_prepared_folder


@pytest.fixture
def multi_image_data(tmp_path: Path):
    """21 patients × 3 images at 16²: 13 member, 4 holdout and 4 test patients (an odd pool of 17)."""
    return load_prepared(make_prepared_folder(tmp_path / "data", n_patients=21, images_per_patient=3, size=16,
                                              split_cycle=("member", "member", "holdout", "test", "member")))


def test_halves_are_paired_complements_balanced_per_patient(multi_image_data) -> None:
    patients = pool_patients(multi_image_data)
    assert len(patients) == 17 and all(p not in patients for p in multi_image_data.index.loc[
        multi_image_data.index["split"] == "test", "patient_id"])
    halves = reference_halves(patients, 6, seed=3)
    for pair in range(3):
        assert np.array_equal(halves[2 * pair], ~halves[2 * pair + 1])
    assert np.all(halves.sum(axis=0) == 3)  # every patient in exactly K/2 models
    assert set(halves.sum(axis=1)) == {8, 9}  # an odd pool: ⌊P/2⌋ and ⌈P/2⌉
    assert len({row.tobytes() for row in halves[::2]}) == 3  # pairs draw different halves
    assert np.array_equal(reference_halves(patients, 4, seed=3), halves[:4])  # a larger K reuses the first models
    assert not np.array_equal(reference_halves(patients, 2, seed=4), halves[:2])


def test_data_view_is_patient_disjoint_and_matches_the_half(multi_image_data, tmp_path: Path) -> None:
    patients = pool_patients(multi_image_data)
    half = reference_halves(patients, 2, seed=0)[1]
    chosen = {p for p, keep in zip(patients, half) if keep}
    view = load_prepared(write_data_view(multi_image_data, chosen, tmp_path / "view", 1))  # load validates splits
    members = view.index.loc[view.index["split"] == "member"]
    assert set(members["patient_id"]) == chosen
    assert members.groupby("patient_id").size().eq(3).all()  # every image of an in-patient is in
    holdout = set(view.index.loc[view.index["split"] == "holdout", "patient_id"])
    assert holdout == set(patients) - chosen
    original = multi_image_data.index
    assert (view.index["split"] == "test").equals(original["split"] == "test")
    assert os.path.samefile(view.root / "images.npy", multi_image_data.root / "images.npy")  # linked, not copied
    assert view.meta["reference_view"] == {"of": str(multi_image_data.root), "model": 1}


def test_gaussian_fits_pooled_and_per_image_variance() -> None:
    statistics = np.array([[1.0, 10.0], [3.0, 14.0], [2.0, 0.0], [5.0, 0.0]])
    mask = np.array([[True, True], [True, True], [True, False], [False, False]])
    mean, std = gaussian_fits(statistics, mask, per_image=True)
    assert mean == pytest.approx([2.0, 12.0])
    assert std == pytest.approx([1.0, math.sqrt(8.0)])  # (1+1+0)/2 and (4+4)/1
    _, pooled = gaussian_fits(statistics, mask, per_image=False)
    assert pooled == pytest.approx([math.sqrt(10.0 / 3.0)] * 2)  # (2 + 8) / (2 + 1)
    with pytest.raises(CxrsynthError, match="fewer than 2 reference models"):
        gaussian_fits(statistics, ~mask, per_image=True)


def test_lira_scores_match_hand_computed_likelihood_ratio() -> None:
    reference = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 9.0]])
    in_mask = np.array([[True, False], [True, True], [False, True], [False, False]])
    target = np.array([1.0, 4.0])
    # image 0: in {0, 2} → μ 1, out {4, 6} → μ 5; image 1: in {3, 5} → μ 4, out {1, 9} → μ 5.
    # pooled variances: in (1+1+1+1)/2 = 2; out (1+1+16+16)/2 = 17.
    expected_online = [norm.logpdf(1.0, 1.0, math.sqrt(2)) - norm.logpdf(1.0, 5.0, math.sqrt(17)),
                       norm.logpdf(4.0, 4.0, math.sqrt(2)) - norm.logpdf(4.0, 5.0, math.sqrt(17))]
    assert lira_online(target, reference, in_mask) == pytest.approx(expected_online)
    assert lira_online(target, reference, in_mask)[0] > 0  # at the in mean, far from the out mean: member
    # offline: Φ⁻¹ of the one-sided tail Pr[s_out ≥ s_target] = 1 − Φ((s − μ_out)/σ_out)
    expected_offline = [norm.ppf(norm.sf((1.0 - 5.0) / math.sqrt(17))), norm.ppf(norm.sf((4.0 - 5.0) / math.sqrt(17)))]
    assert lira_offline(target, reference, in_mask) == pytest.approx(expected_offline)
    # per-image variances: out sides 2 and 32
    per_image = lira_offline(target, reference, in_mask, per_image=True)
    assert per_image == pytest.approx([4.0 / math.sqrt(2), 1.0 / math.sqrt(32)])
    assert lira_offline(np.array([-200.0, 200.0]), reference, in_mask).tolist() == pytest.approx(
        [205 / math.sqrt(17), -195 / math.sqrt(17)])  # no saturation far in either tail


def test_rmia_counts_the_population_dominated_by_gamma() -> None:
    temperature = 0.5
    target_x = np.array([0.1, 0.8])
    reference_x = np.array([[0.3, 0.7], [0.5, 0.9]])
    target_z = np.array([0.2, 0.4, 0.6])
    reference_z = np.array([[0.25, 0.3, 0.6], [0.35, 0.5, 0.7]])

    def ratio(target: float, references: list[float], a: float | None = None) -> float:
        probability = sum(math.exp(-loss / temperature) for loss in references) / len(references)
        if a is not None:
            probability = 0.5 * ((1 + a) * probability + (1 - a))
        return math.exp(-target / temperature) / probability

    for gamma in (1.0, 1.5):
        ratios_z = [ratio(target_z[j], list(reference_z[:, j])) for j in range(3)]
        expected = [sum(ratio(target_x[i], list(reference_x[:, i])) / rz >= gamma for rz in ratios_z) / 3 for i in range(2)]
        assert rmia_scores(target_x, reference_x, target_z, reference_z, temperature, gamma) == pytest.approx(expected)
    assert rmia_scores(target_x, reference_x, target_z, reference_z, temperature).tolist() == [1.0, 0.0]
    out_mask = np.array([[True, False], [False, True]])
    a = 0.4
    ratios_z = [ratio(target_z[j], list(reference_z[:, j]), a) for j in range(3)]
    ratios_x = [ratio(target_x[0], [0.3], a), ratio(target_x[1], [0.9], a)]
    expected = [sum(rx / rz >= 1.0 for rz in ratios_z) / 3 for rx in ratios_x]
    assert rmia_scores(target_x, reference_x, target_z, reference_z, temperature, out_mask_x=out_mask, a=a) == \
        pytest.approx(expected)
    with pytest.raises(CxrsynthError, match="population images"):
        rmia_scores(target_x, reference_x, np.zeros(0), np.zeros((2, 0)), temperature)


def test_translate_labels_between_vocabularies() -> None:
    from cxrsynth.model.conditioning import LabelVocabulary

    source = LabelVocabulary.from_labels(["Nodule", "No Finding", "Cardiomegaly"])
    target = LabelVocabulary.from_labels(["Cardiomegaly", "Nodule", "No Finding", "Nodule"])
    ids = source.encode_training_labels(["Nodule", "Cardiomegaly"])
    assert target.decode(translate_labels(ids, source, target).tolist()) == ["Nodule", "Cardiomegaly"]
    assert translate_labels(None, None, None) is None
    small = LabelVocabulary.from_labels(["Nodule"])
    assert translate_labels(ids, source, small).tolist() == [small.null_class] * 2  # unknown set: null for all


def _tiny_run(root: Path, steps: int, conditional: bool = False, **data_options) -> Path:
    """A ``tiny`` UNet trained ``steps`` steps on a prepared folder (24 patients × 2 images unless told)."""
    from cxrsynth.config import TrainConfig
    from cxrsynth.train import train

    data = make_prepared_folder(root / "data", **{"n_patients": 24, "images_per_patient": 2, "size": 32, **data_options})
    run = root / "run"
    train(TrainConfig(data=str(data), preset="tiny", max_steps=steps, batch_size=4, lr=1e-3, warmup_steps=2,
                      checkpoint_every=steps, keep_checkpoints=1, progress_every=0, log_every=steps,
                      conditional=conditional), run)
    return run


def test_reference_models_train_once_match_their_data_and_are_reused(tmp_path: Path, monkeypatch) -> None:
    run = _tiny_run(tmp_path, steps=2)
    data = load_prepared(run.parent / "data")
    with pytest.raises(CxrsynthError, match="too few"):
        prepare_reference_models(run, data, 2, 2, 0, "cpu")
    reference = prepare_reference_models(run, data, 4, 2, 0, "cpu")
    root = run / "audit" / REFERENCE_FOLDER
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    assert manifest["count"] == 4 and manifest["steps"] == 2 and not manifest["dp_dropped"]
    assert [model["steps"] for model in manifest["models"]] == [2] * 4
    assert reference.train_seconds > 0 and reference.count == 4
    audited = data.index.loc[data.index["split"].isin(("member", "holdout")), "patient_id"].to_numpy()
    mask = reference.in_mask(audited)
    for k in range(4):
        trained = reference.trained_patients(k)  # read back from the data the model was trained on
        assert {p for p, inside in zip(audited, mask[k]) if inside} == trained
        assert set(manifest["models"][k]["in_patients"]) == trained
        assert not (reference.folders[k] / "checkpoints").exists()
        assert reference.load(k).unet.config.sample_size == 32
    assert np.all(mask.sum(axis=0) == 2)
    test_patients = data.index.loc[data.index["split"] == "test", "patient_id"].to_numpy()
    assert not reference.in_mask(test_patients).any()
    weights = sorted(root.glob("ref-*/pipeline/unet/*.safetensors"))
    mtimes = [path.stat().st_mtime_ns for path in weights]

    def no_training(*args, **kwargs):
        raise AssertionError("a cached reference model was trained again")

    monkeypatch.setattr("cxrsynth.train.train", no_training)
    again = prepare_reference_models(run, data, 4, 2, 0, "cpu")
    assert [path.stat().st_mtime_ns for path in weights] == mtimes
    assert again.train_seconds == pytest.approx(reference.train_seconds)
    assert again.report()["reused"] == [0, 1, 2, 3] and reference.report()["reused"] == []
    records = sorted(root.glob("ref-*/reference_model.json"))
    for path in records:  # models cached by a version without --threads, or trained with other logging
        record = json.loads(path.read_text())
        record["settings"].pop("threads", None)
        record["settings"]["log_every"] = 999
        path.write_text(json.dumps(record))
    assert prepare_reference_models(run, data, 4, 2, 0, "cpu").report()["reused"] == [0, 1, 2, 3]
    with pytest.raises(CxrsynthError, match="another"):
        prepare_reference_models(run, data, 4, 3, 0, "cpu")
    record = json.loads(records[0].read_text())
    record["settings"]["lr"] = 0.5
    records[0].write_text(json.dumps(record))
    with pytest.raises(CxrsynthError, match="another settings"):
        prepare_reference_models(run, data, 4, 2, 0, "cpu")


@pytest.mark.slow
def test_lira_and_rmia_end_to_end_on_a_target_that_saw_no_member(tmp_path: Path) -> None:
    from cxrsynth.audit.runner import AuditOptions, audit_run

    # 72 one-image patients: 24 member, 24 holdout (12 vs 12 evaluated), 24 test images as RMIA's population.
    # The target takes 1 step (it holds nothing about its members) while the reference models take 25: members
    # and holdout are treated alike by every reference model (each patient is in 2 of 4), so any signal would be
    # a bug. (At 25 target steps rmia's AUC was 0.73 [0.53, 0.93] here: a real, early signal.)
    run = _tiny_run(tmp_path, steps=1, n_patients=72, images_per_patient=1,
                    split_cycle=("member", "holdout", "test"))
    names = ("loss", "lira", "lira_offline", "rmia", "rmia_offline")
    report = audit_run(run, AuditOptions(attacks=names, noise_draws=2, device="cpu", reference_models=4,
                                         reference_steps=25, unit="image"))
    assert report["reference_models"]["count"] == 4 and report["reference_models"]["steps"] == 25
    for name in names:
        result = report["attacks"][name]
        assert np.isfinite(result["auc"])
        low, high = result["auc_ci"]
        assert low <= 0.5 <= high, (name, result["auc"], result["auc_ci"])  # no membership information
    for name in names[1:]:
        selected = report["attacks"][name]["selected"]
        assert selected["reference_models"] == 4
        # 4 models × 2 draws on each audited image, plus the population's share
        assert selected["reference_nfe_per_image"] >= 8
    assert report["attacks"]["lira_offline"]["selected"]["reference_statistics_shared"]
    assert report["attacks"]["rmia"]["selected"]["n_population"] == 24
    assert (run / "audit" / REFERENCE_FOLDER / MANIFEST_FILE).is_file()  # kept in the new audit folder
    torch.set_num_threads(1)


def test_without_a_test_split_rmia_is_skipped_with_its_reason_and_lira_still_runs(tmp_path: Path) -> None:
    from cxrsynth.audit.runner import AuditOptions, audit_run

    run = _tiny_run(tmp_path, steps=1, n_patients=24, images_per_patient=1, split_cycle=("member", "holdout"))
    report = audit_run(run, AuditOptions(attacks=("loss", "lira", "rmia", "rmia_offline"), noise_draws=1,
                                         device="cpu", reference_models=4, reference_steps=1, unit="image"))
    assert set(report["attacks"]) == {"loss", "lira"}
    for name in ("rmia", "rmia_offline"):
        assert "no test split" in report["skipped_attacks"][name] and "--test-fraction" in report["skipped_attacks"][name]
    torch.set_num_threads(1)


def test_conditional_run_scores_every_reference_attack_with_each_models_vocabulary(tmp_path: Path) -> None:
    from cxrsynth.audit.attacks.lira import lira_offline_scores, lira_scores
    from cxrsynth.audit.attacks.rmia import rmia_offline_scores, rmia_online_scores
    from cxrsynth.audit.registry import AttackContext, AttackSettings
    from cxrsynth.audit.runner import load_white_box_model, select_audited_set

    run = _tiny_run(tmp_path, steps=1, conditional=True)
    data = load_prepared(run.parent / "data")
    reference = prepare_reference_models(run, data, 4, 1, 0, "cpu")
    assert all(reference.load(k).vocabulary is not None for k in range(4))
    audited = select_audited_set(data, None, 0)
    settings = AttackSettings(noise_draws=1, batch_size=16)
    model, conditioning = load_white_box_model(run, data, audited.rows, settings, "cpu")
    calibration = np.flatnonzero(audited.is_calibration)
    context = AttackContext(images=np.asarray(data.images[audited.rows]), calibration_rows=calibration,
                            calibration_is_member=audited.is_member[calibration], settings=settings, model=model,
                            patients=data.index["patient_id"].to_numpy()[audited.rows], reference=reference)
    n = len(audited.rows)
    for name, score in (("lira", lira_scores), ("lira_offline", lira_offline_scores), ("rmia", rmia_online_scores),
                        ("rmia_offline", rmia_offline_scores)):
        before = model.image_forwards
        scores = score(context)
        assert scores.shape == (n,) and np.all(np.isfinite(scores)), name
        target_forwards = model.image_forwards - before
        population = len(reference.population_rows) if name.startswith("rmia") else 0
        assert target_forwards == n + population, name  # one draw per audited image (+ the population for RMIA)
        assert context.choices[name]["reference_nfe_per_image"] == pytest.approx(4 * (n + len(reference.population_rows)) / n)
    assert not context.choices["lira"]["reference_statistics_shared"] and context.choices["rmia"]["reference_statistics_shared"]
    assert 0.0 <= context.choices["rmia"]["calibration_auc"] <= 1.0
    assert context.choices["rmia_offline"]["a"] in (0.0, 0.25, 0.5, 0.75, 1.0)
