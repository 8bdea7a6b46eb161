"""`cxrsynth audit stats SCORES.csv --out OUT.json`: the audit's statistics on scores from any tool."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cxrsynth.audit.scores import audit_stats, read_scores
from cxrsynth.cli import main
from cxrsynth.errors import CxrsynthError


def write_scores(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def leaky_scores(path: Path, n: int = 300, seed: int = 0) -> Path:
    """Two columns: ``loss`` where members score lower, ``noise`` that knows nothing."""
    rng = np.random.default_rng(seed)
    member = np.repeat([1, 0], n)
    loss = rng.normal(size=2 * n) - 0.8 * member
    noise = rng.normal(size=2 * n)
    return write_scores(path, ["member", "loss", "noise"], [[m, l, z] for m, l, z in zip(member, loss, noise)])


def test_stats_of_a_csv_from_another_tool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores = leaky_scores(tmp_path / "scores.csv")
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "stats", str(scores), "--out", str(tmp_path / "out.json"), "--direction", "loss=lower",
              "--delta", "1e-4", "--seed", "3", "--independent-rows"])
    assert exit_info.value.code == 0
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["format"] == 1 and report["unit"] == "row" and report["halves"] == "random"
    assert report["independent_rows"] is True
    assert report["n_members"] == report["n_nonmembers"] == 300 and report["delta"] == 1e-4
    assert report["n_evaluation"] == {"members": 150, "nonmembers": 150}
    loss, noise = report["attacks"]["loss"], report["attacks"]["noise"]
    assert loss["direction"] == "lower" and loss["published_direction"] == "lower" and loss["auc"] > 0.65
    for key in ("auc_ci", "p_value_auc", "p_value_tail", "tpr_at_1pct_fpr", "tpr_at_zero_fpr", "low_fpr",
                "eps_lower_bound", "eps_bound", "balanced_accuracy", "threshold", "notes"):
        assert key in loss
    assert report["summary"]["leak_detected"] is True and "loss" in report["summary"]["attacks_beating_chance"]
    assert "noise" not in report["summary"]["attacks_beating_chance"]
    assert {test["name"] for test in report["summary"]["tests"]} == {"loss:auc", "loss:tail", "noise:auc", "noise:tail"}
    assert report["power"]["n_members"] == 150 and report["power"]["n_tests"] == 4
    assert "Holm p" in capsys.readouterr().out


def test_default_direction_is_chosen_on_calibration_and_halves_are_seeded(tmp_path: Path) -> None:
    scores = leaky_scores(tmp_path / "scores.csv")
    first = audit_stats(scores, tmp_path / "a.json", seed=1, independent_rows=True)
    again = audit_stats(scores, tmp_path / "b.json", seed=1, independent_rows=True)
    other = audit_stats(scores, tmp_path / "c.json", seed=2, independent_rows=True)
    assert first["attacks"]["loss"]["direction"] == "lower"  # members score lower: flipped on calibration
    assert first["attacks"] == again["attacks"] and first["attacks"] != other["attacks"]


def test_given_halves_and_patients_make_one_unit_per_patient(tmp_path: Path) -> None:
    rows = []
    for patient in range(40):
        member, half = patient % 2, "calibration" if patient < 20 else "evaluation"
        for study in range(1 + patient % 3):  # 1–3 rows per patient
            rows.append([f"P{patient}", member, half, float(patient % 2) + 0.01 * study])
    scores = write_scores(tmp_path / "scores.csv", ["patient_id", "member", "half", "score"], rows)
    table = read_scores(scores)
    assert table.unit == "patient" and table.rows == len(rows) and len(table.is_member) == 40
    assert table.halves == "given" and table.is_calibration.sum() == 20
    report = audit_stats(scores, tmp_path / "out.json")
    assert report["unit"] == "patient" and report["n_members"] == 20
    assert report["attacks"]["score"]["auc"] == 1.0
    assert "patients" in report["power"]["text"]


@pytest.mark.parametrize("header,rows,message", [
    (["loss"], [[0.1], [0.2]], "no 'member' column"),
    (["member", "loss"], [[1, 0.1], [1, 0.2]], "only members"),
    (["member", "loss"], [[1, 0.1], [0, "nan"]], "row 3: column 'loss' holds 'nan'"),
    (["member", "loss"], [[1, 0.1], [0, "high"]], "row 3: column 'loss' holds 'high', not a number"),
    (["member", "loss"], [[1, 0.1], ["maybe", 0.3]], "row 3: column 'member' holds 'maybe'"),
    (["member", "half", "loss"], [[1, "train", 0.1], [0, "evaluation", 0.3]], "row 2: column 'half' holds 'train'"),
    (["member"], [[1], [0]], "no score column"),
    (["patient_id", "member", "loss"], [["A", 1, 0.1], ["A", 0, 0.2], ["B", 0, 0.3]], "patient 'A' has rows with different 'member'"),
])
def test_bad_csv_is_a_clear_error_and_writes_nothing(tmp_path: Path, header: list[str], rows: list, message: str) -> None:
    scores = write_scores(tmp_path / "scores.csv", header, rows)
    with pytest.raises(CxrsynthError) as error:
        audit_stats(scores, tmp_path / "out.json", independent_rows=True)
    assert message in str(error.value)
    assert not (tmp_path / "out.json").exists()


def test_bad_direction_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores = leaky_scores(tmp_path / "scores.csv", n=20)
    with pytest.raises(CxrsynthError, match="not a score column"):
        audit_stats(scores, tmp_path / "out.json", ["magic=lower"], independent_rows=True)
    with pytest.raises(CxrsynthError, match="NAME=lower or NAME=higher"):
        audit_stats(scores, tmp_path / "out.json", ["loss=down"], independent_rows=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "stats", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "out.json")])
    assert exit_info.value.code == 2 and "does not exist" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "out.json").exists()


def test_audit_without_run_or_subcommand_says_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit"])
    assert exit_info.value.code == 2 and "needs --run RUN" in " ".join(capsys.readouterr().err.split())


def clustered_null_scores(path: Path, seed: int, with_patients: bool) -> Path:
    """No leak: membership is assigned per patient at random; 1–30 images per patient share a patient effect."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(120):
        member, effect = int(rng.random() < 0.5), rng.normal()
        for _ in range(int(rng.integers(1, 31))):
            score = effect + 0.3 * rng.normal()
            rows.append([f"P{patient}", member, score] if with_patients else [member, score])
    header = ["patient_id", "member", "loss"] if with_patients else ["member", "loss"]
    return write_scores(path, header, rows)


def test_rows_without_patient_ids_are_refused_unless_declared_independent(tmp_path: Path) -> None:
    scores = clustered_null_scores(tmp_path / "scores.csv", seed=0, with_patients=False)
    with pytest.raises(CxrsynthError, match="no 'patient_id' column") as error:
        audit_stats(scores, tmp_path / "out.json")
    assert "--independent-rows" in error.value.fix and not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_clustered_rows_with_patient_ids_hold_the_level_where_rows_alone_would_not(tmp_path: Path) -> None:
    """The reason for the refusal, measured: with correlated follow-ups, row-level tests cry wolf."""
    flagged = {True: 0, False: 0}
    for seed in range(30):
        for with_patients in (True, False):
            scores = clustered_null_scores(tmp_path / f"{seed}{with_patients}.csv", seed, with_patients)
            report = audit_stats(scores, tmp_path / "out.json", seed=seed, independent_rows=not with_patients)
            flagged[with_patients] += report["summary"]["leak_detected"]
    assert flagged[True] <= 4, "with patient ids the flag stays near its 5% level"
    assert flagged[False] >= 8, "treating the rows as independent would raise false alarms"


def test_a_blind_column_is_reported_but_cannot_raise_the_flag(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    member = np.repeat([1, 0], 200)
    rows = [[f"P{i}", m, rng.normal() + 2 * m, rng.normal()] for i, m in enumerate(member)]
    scores = write_scores(tmp_path / "scores.csv", ["patient_id", "member", "blind", "loss"], rows)
    report = audit_stats(scores, tmp_path / "out.json")
    assert report["attacks"]["blind"]["access"] == "none" and report["attacks"]["blind"]["auc"] > 0.8
    assert {test["name"] for test in report["summary"]["tests"]} == {"loss:auc", "loss:tail"}
    assert report["summary"]["leak_detected"] is False
