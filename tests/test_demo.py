"""``cxrsynth demo --quick`` runs every stage end to end on the phantom (report included) and resumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cxrsynth.cli import main
from cxrsynth.demo import QUICK_PLAN, available_stages, run_demo
from cxrsynth.errors import CxrsynthError
from cxrsynth.report.html import SECTION_IDS


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--out", str(out)])
    assert exit_info.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "key numbers" in printed and "Realistic?" in printed and "Safe to share?" in printed
    assert f"report: {out / 'run' / 'report.html'}" in printed

    run = out / "run"
    assert (out / "phantom" / "Data_Entry_2017.csv").is_file()
    assert json.loads((out / "data" / "meta.json").read_text())["size"] == QUICK_PLAN.data_size
    assert (run / "pipeline" / "model_index.json").is_file()
    with open(run / "samples" / "manifest.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == QUICK_PLAN.num_samples
    fidelity = json.loads((run / "eval" / "fidelity.json").read_text())
    assert fidelity["fd_domain"] is not None and fidelity["fd_domain"] >= 0
    assert fidelity["fid"] is None and "not requested" in fidelity["fid_skipped"]
    assert fidelity["utility"]["tstr_auroc"] is not None
    if "audit" in dict(available_stages()):
        audit = json.loads((run / "audit" / "audit.json").read_text())
        assert audit["n_members"] == audit["n_nonmembers"] > 0
        assert "loss" in audit["attacks"] and audit["verdict"]

    page = (run / "report.html").read_text(encoding="utf-8")
    for section_id in SECTION_IDS:
        assert f'id="{section_id}"' in page
    assert "Not run." not in page and "http://" not in page and "https://" not in page
    assert (run / "MODEL_CARD.md").is_file()

    log_before = (run / "train_log.jsonl").read_text()
    lines: list[str] = []
    result = run_demo(out, quick=True, log=lines.append)
    assert (run / "train_log.jsonl").read_text() == log_before
    assert any("already there, skipped" in line for line in lines)
    assert result.fidelity == fidelity
    assert result.report is not None and result.report.html == run / "report.html"


def test_demo_refuses_a_folder_made_with_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo_plan.json").write_text(json.dumps({"max_steps": 1}))
    with pytest.raises(CxrsynthError, match="other settings"):
        run_demo(out, quick=True, log=lambda _: None)
    assert sorted(p.name for p in out.iterdir()) == ["demo_plan.json"]
