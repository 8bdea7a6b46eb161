"""The audit runner: audited set, δ, attack selection, files written, and an untrained model's null result."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from diffusers import DDPMPipeline, DDPMScheduler

from cxrsynth.audit.runner import (
    AuditOptions,
    audit_run,
    conditioning_labels,
    parse_attacks,
    read_delta,
    select_audited_set,
)
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError
from cxrsynth.model.conditioning import LabelVocabulary
from tests.audit.test_attacks import tiny_unet
from tests.factories import make_prepared_folder

WHITE_BOX = ("loss", "recon", "secmi", "pia", "pian")
LATER_WHITE_BOX = ("sima", "gsa")
"""White-box attacks registered after ``blind``."""


def write_untrained_run(root: Path, size: int = 16, widths: tuple[int, int] = (32, 64)) -> Path:
    """A run folder holding only an untrained tiny pipeline (the audit needs no config with --data)."""
    unet = tiny_unet(size=size, widths=widths)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        root / "pipeline", safe_serialization=True
    )
    return root


def test_audited_set_is_one_image_per_patient_equal_counts_and_seeded(tmp_path: Path) -> None:
    data = load_prepared(make_prepared_folder(tmp_path / "data", n_patients=30, images_per_patient=3,
                                              split_cycle=("member", "holdout", "member")))
    audited = select_audited_set(data, None, seed=3)
    patients = data.index["patient_id"].iloc[audited.rows]
    assert patients.is_unique and audited.n_per_group == 10 == int((~audited.is_member).sum())
    splits = data.index["split"].iloc[audited.rows].to_numpy()
    assert np.array_equal(splits == "member", audited.is_member)
    for group in (audited.is_member, ~audited.is_member):
        assert int((group & audited.is_calibration).sum()) == 5
    again = select_audited_set(data, None, seed=3)
    assert np.array_equal(again.rows, audited.rows) and np.array_equal(again.is_calibration, audited.is_calibration)
    assert not np.array_equal(select_audited_set(data, None, seed=4).rows, audited.rows)
    assert select_audited_set(data, 6, seed=3).n_per_group == 6
    with pytest.raises(CxrsynthError, match="--num-members 11") as too_many:
        select_audited_set(data, 11, seed=0)
    assert "between 4 and 10" in too_many.value.fix
    with pytest.raises(CxrsynthError, match="below the audit's minimum of 4") as too_few:
        select_audited_set(data, 3, seed=0)
    assert "between 4 and 10" in too_few.value.fix
    small = load_prepared(make_prepared_folder(tmp_path / "small", n_patients=6, images_per_patient=1,
                                               split_cycle=("member", "holdout")))
    with pytest.raises(CxrsynthError, match="3 member and 3 holdout patients") as too_small:
        select_audited_set(small, None, seed=0)
    assert "--holdout-fraction" in too_small.value.fix and "--num-members" not in too_small.value.fix


def test_delta_comes_from_privacy_json_when_present(tmp_path: Path) -> None:
    assert read_delta(tmp_path) == (1e-5, "default")
    (tmp_path / "privacy.json").write_text(json.dumps({"epsilon": 3.0, "delta": 2e-4}))
    assert read_delta(tmp_path) == (2e-4, "privacy.json")
    (tmp_path / "privacy.json").write_text(json.dumps({"epsilon": 3.0}))
    with pytest.raises(CxrsynthError, match="delta"):
        read_delta(tmp_path)


def test_parse_attacks() -> None:
    assert parse_attacks(None) is None and parse_attacks("all") is None
    assert parse_attacks("loss, pia") == ("loss", "pia")
    with pytest.raises(CxrsynthError, match="unknown attack"):
        parse_attacks("loss,magic")
    with pytest.raises(CxrsynthError, match="twice"):
        parse_attacks("loss,loss")


def test_conditional_models_see_labels_only_when_every_label_set_is_known(tmp_path: Path) -> None:
    data = load_prepared(make_prepared_folder(tmp_path / "data", n_patients=12))
    rows = np.arange(len(data.index))
    known = LabelVocabulary.from_labels(data.index["labels"].tolist())
    labels, mode = conditioning_labels(SimpleNamespace(vocabulary=known), data, rows)
    assert mode == "labels" and labels.tolist() == known.encode(data.index["labels"].tolist()).tolist()
    partial = LabelVocabulary.from_labels(["No Finding"])
    labels, mode = conditioning_labels(SimpleNamespace(vocabulary=partial), data, rows)
    assert mode == "null" and set(labels.tolist()) == {partial.null_class}
    assert conditioning_labels(SimpleNamespace(vocabulary=None), data, rows) == (None, "unconditional")


def test_audit_without_samples_writes_every_file_and_skips_black_box_attacks(tmp_path: Path) -> None:
    data = make_prepared_folder(tmp_path / "data", n_patients=24, images_per_patient=1, size=16,
                                split_cycle=("member", "holdout", "test"))
    run = write_untrained_run(tmp_path / "run")
    (run / "privacy.json").write_text(json.dumps({"delta": 1e-3}))
    report = audit_run(run, AuditOptions(data=data, noise_draws=1, device="cpu"))
    assert sorted(path.name for path in (run / "audit").iterdir()) == ["audit.json", "memorization.png", "roc.png", "scores.csv"]
    assert json.loads((run / "audit" / "audit.json").read_text()) == report
    assert set(report["attacks"]) == {*WHITE_BOX, "blind", *LATER_WHITE_BOX}
    assert set(report["skipped_attacks"]) == {"nn", "nn_domain", "lira", "lira_offline", "rmia", "rmia_offline"}
    assert "--reference-models" in report["skipped_attacks"]["lira"]
    assert "no synthetic images" in report["skipped_attacks"]["nn"]
    assert report["memorization"] is None and "no synthetic images" in report["memorization_skipped"]
    assert report["delta"] == 1e-3 and report["delta_source"] == "privacy.json"
    assert report["n_members"] == report["n_nonmembers"] == 8
    assert report["n_evaluation"] == {"members": 4, "nonmembers": 4}
    for name in (*WHITE_BOX, *LATER_WHITE_BOX):
        result = report["attacks"][name]
        # loss, pia, pian and sima choose t on the calibration half (half the images, at 7 or 6 candidates)
        assert result["nfe_per_image"] == {"loss": 4, "recon": 1, "secmi": 11, "pia": 5, "pian": 5, "sima": 3.5,
                                           "gsa": 5}[name]
        assert result["tpr_at_1pct_fpr"] is None and result["notes"]
    assert isinstance(report["verdict"], str) and "Blind check" in report["verdict"]
    with (run / "audit" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and list(rows[0]) == ["image_id", "patient_id", "split", "member", "half", "image_level", *WHITE_BOX, "blind", *LATER_WHITE_BOX]
    assert {row["split"] for row in rows} == {"member", "holdout"}
    assert all(row["member"] == ("1" if row["split"] == "member" else "0") for row in rows)
    assert (run / "audit" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert report["power"]["n_members"] == 4 and report["power"]["n_tests"] == 2 * len(WHITE_BOX + LATER_WHITE_BOX)
    assert report["power"]["text"] in report["verdict"]
    assert report["patient_ids"] == {"real": True, "understates_leakage": False, "note": None}

    # `audit stats` on the audit's own scores.csv follows the same code path and gives the same numbers.
    from cxrsynth.audit.scores import audit_stats

    stats = audit_stats(run / "audit" / "scores.csv", tmp_path / "stats.json", delta=1e-3)
    assert stats["unit"] == "patient" and stats["halves"] == "given"
    for name in WHITE_BOX:
        ours, theirs = report["attacks"][name], stats["attacks"][name]
        assert theirs["direction"] == ours["direction"]
        for key in ("tpr_at_zero_fpr", "eps_lower_bound", "p_value_auc", "p_value_tail", "balanced_accuracy"):
            assert theirs[key] == pytest.approx(ours[key]), (name, key)
        flipped = ours["published_direction"] != "higher"
        assert theirs["auc"] == pytest.approx(1 - ours["auc"] if flipped else ours["auc"])


def test_audit_refuses_a_folder_without_a_model(tmp_path: Path) -> None:
    data = make_prepared_folder(tmp_path / "data", n_patients=24, images_per_patient=1, size=16)
    (tmp_path / "run").mkdir()
    with pytest.raises(CxrsynthError, match="no trained model"):
        audit_run(tmp_path / "run", AuditOptions(data=data, attacks=("loss",), device="cpu"))
    assert not (tmp_path / "run" / "audit").exists()


@pytest.mark.slow
def test_untrained_model_shows_no_membership_signal(tmp_path: Path) -> None:
    """A random-weight model cannot know its members: every AUC near 0.5 on an exchangeable split."""
    # 8² images and a narrow UNet keep 1000 images × 20 NFE cheap; the property does not depend on size.
    data = make_prepared_folder(tmp_path / "data", n_patients=1000, images_per_patient=1, size=8,
                                split_cycle=("member", "holdout"), seed=5)
    run = write_untrained_run(tmp_path / "run", size=8, widths=(16, 32))
    report = audit_run(run, AuditOptions(data=data, num_members=500, noise_draws=2, batch_size=500, device="cpu"))
    assert report["n_evaluation"] == {"members": 250, "nonmembers": 250}
    for name in (*WHITE_BOX, "blind"):
        result = report["attacks"][name]
        assert abs(result["auc"] - 0.5) <= 0.1, (name, result["auc"])
        print(name, round(result["auc"], 3), result["auc_ci"], round(result["seconds"], 2))
    assert report["summary"]["blind_check_passed"] is True


def test_audit_of_data_without_patient_ids_says_it_understates_leakage(tmp_path: Path) -> None:
    data = make_prepared_folder(tmp_path / "data", n_patients=24, images_per_patient=1, size=16,
                                split_cycle=("member", "holdout", "test"))
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "patient_ids": "per-image"}))
    run = write_untrained_run(tmp_path / "run")
    report = audit_run(run, AuditOptions(data=data, attacks=("loss",), noise_draws=1, device="cpu"))
    assert report["patient_ids"]["real"] is False and report["patient_ids"]["understates_leakage"] is True
    assert "UNDERSTATES" in report["patient_ids"]["note"]
    assert report["patient_ids"]["note"] in report["warnings"] and report["patient_ids"]["note"] in report["verdict"]
