"""``cxrsynth evaluate`` end to end on a minimal run folder (no model, no Inception weights, no download)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from cxrsynth.cli import main
from cxrsynth.evaluate import runner
from tests.evaluate.helpers import add_tiny_pipeline, make_run, write_png_folder


@pytest.fixture(autouse=True)
def empty_torch_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Inception weights anywhere: torch-fidelity's cache is an empty folder."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


def _evaluate(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", *args])
    return int(exited.value.code)


def test_offline_run_succeeds_with_fid_null_and_every_other_metric(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path)
    assert _evaluate("--run", str(run), "--classifier-steps", "20") == 0
    report = json.loads((run / "eval" / "fidelity.json").read_text())

    assert set(report) == set(runner.REPORT_KEYS)
    for key in ("fid", "kid", "kid_std", "precision", "recall"):
        assert report[key] is None
    for key in ("fid_skipped", "kid_skipped", "precision_skipped", "recall_skipped"):
        assert "weights-inception-2015-12-05-6726825d.pth" in report[key] and "--inception-weights" in report[key]
    assert report["n_real"] == 12 and report["n_synthetic"] == 12
    assert report["fd_domain"] > 0 and report["fd_domain_ci"][0] <= report["fd_domain"] <= report["fd_domain_ci"][1]
    assert report["fd_domain_real_baseline"] > 0 and report["baseline_split"] in {"holdout", "member"}
    low, high = report["fd_domain_real_baseline_ci"]
    assert low <= report["fd_domain_real_baseline"] <= high
    assert report["matched_n"] == 12 and report["fd_domain_sampling"]["n"] == 6
    assert report["fd_domain_sampling"]["n_reference"] == 6
    for key in ("precision_domain", "recall_domain", "precision_domain_real_baseline", "recall_domain_real_baseline"):
        assert 0.0 <= report[key] <= 1.0
    utility = report["utility"]
    assert report["utility_skipped"] is None and 0.0 <= utility["tstr_auroc"] <= 1.0 and utility["per_finding"]
    assert utility["n_train_synthetic"] == utility["n_train_real"] == utility["matched_n_train"] == 12
    assert utility["n_real_available"] == report["domain_classifier"]["n_train"] > 12 and utility["trtr_retrained"]
    assert utility["bootstrap_unit"] == "patient" and utility["n_test_patients"] == 6 and utility["n_test"] == 12
    assert 0 < report["diversity"]["ms_ssim_synthetic"] <= 1 and 0 < report["diversity"]["ms_ssim_real"] <= 1
    assert report["pixel"]["histogram_wasserstein"] >= 0 and report["pixel"]["power_spectrum_distance_real_baseline"] >= 0
    found = report["artefacts"]
    assert found["n_synthetic"] == 12 and 0 <= found["count"] <= 12 and found["quantile"] == 0.995
    assert report["artefact_rate"] == found["rate"] and report["artefact_rate_real_baseline"] == found["real_baseline"]
    assert any("10,000" in warning for warning in report["warnings"])
    assert report["domain_classifier"]["reused"] is False
    for name in report["plots"].values():
        assert (run / "eval" / name).stat().st_size > 1000
    assert set(report["plots"]) == {"pixel_stats", "domain_features", "utility_auroc"}
    table = capsys.readouterr().out
    assert "FD (domain)" in table and "skipped" in table and "real baseline" in table
    assert "matched N=12" in " ".join(table.split())
    assert "artefact rate" in table

    # A second evaluation reuses the cached classifier; groups not requested are null with the reason.
    assert _evaluate("--run", str(run), "--classifier-steps", "20", "--metrics", "domain") == 0
    again = json.loads((run / "eval" / "fidelity.json").read_text())
    assert again["domain_classifier"]["reused"] is True and again["fd_domain"] == pytest.approx(report["fd_domain"])
    assert again["pixel"] is None and again["pixel_skipped"] == "not requested (--metrics)"
    assert again["fid"] is None and again["fid_skipped"] == "not requested (--metrics)"


def test_unconditional_run_reports_no_utility_with_the_reason(tmp_path: Path) -> None:
    run = make_run(tmp_path, conditional=False)
    assert _evaluate("--run", str(run), "--classifier-steps", "5", "--metrics", "utility,pixel", "--seed", "3") == 0
    report = json.loads((run / "eval" / "fidelity.json").read_text())
    assert report["utility"] is None and "unconditional" in report["utility_skipped"]
    assert report["pixel"] is not None and report["seed"] == 3

    # A plain folder of PNGs (no manifest) given with --samples: used as is, labels unknown.
    images = np.stack([np.full((32, 32), 40 * i, np.uint8) for i in range(5)])
    folder = write_png_folder(tmp_path / "plain", images)
    assert _evaluate("--run", str(run), "--samples", str(folder), "--metrics", "utility,pixel") == 0
    report = json.loads((run / "eval" / "fidelity.json").read_text())
    assert report["n_synthetic"] == 5 and report["samples"] == str(folder) and report["utility"] is None


@pytest.fixture
def reset_accelerate() -> Iterator[None]:
    """The sample stage sets accelerate's process-wide state; forget it afterwards."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_missing_samples_are_generated_with_the_fast_sampler(tmp_path: Path, reset_accelerate: None) -> None:
    run = make_run(tmp_path)
    shutil.rmtree(run / "samples")
    add_tiny_pipeline(run, tmp_path / "prepared", conditional=True)
    assert _evaluate("--run", str(run), "--num-samples", "2", "--metrics", "pixel") == 0
    from cxrsynth.runfolder import SAMPLE_SETTINGS as SETTINGS_FILE

    settings = json.loads((run / "samples" / SETTINGS_FILE).read_text())
    assert (settings["sampler"], settings["steps"], settings["labels"]) == ("ddpm", 25, "from-data")
    with (run / "samples" / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["label"] for row in rows)
    # More samples later: the folder is continued with its own recorded settings.
    assert _evaluate("--run", str(run), "--num-samples", "3", "--metrics", "pixel", "--seed", "1") == 0
    report = json.loads((run / "eval" / "fidelity.json").read_text())
    assert report["n_synthetic"] == 3 and len(list((run / "samples").glob("*.png"))) == 3
    # Fewer than present: the first N by index are used.
    assert _evaluate("--run", str(run), "--num-samples", "2", "--metrics", "pixel") == 0
    assert json.loads((run / "eval" / "fidelity.json").read_text())["n_synthetic"] == 2


def test_every_report_key_is_documented() -> None:
    for key in runner.REPORT_KEYS:
        assert f"``{key}``" in runner.__doc__, key


def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def error_text() -> str:
        return " ".join(capsys.readouterr().err.split())  # rich wraps long lines

    assert _evaluate("--run", str(tmp_path / "missing")) == 2
    assert "does not exist" in error_text()
    run = make_run(tmp_path)
    assert _evaluate("--run", str(run), "--metrics", "fid,bogus") == 2
    assert "bogus" in error_text()
    assert _evaluate("--run", str(run), "--reference", "holdout") == 2
    # Asking for more samples than exist calls the sample stage, which needs a trained model.
    assert _evaluate("--run", str(run), "--num-samples", "50", "--metrics", "pixel") == 2
    assert "pipeline" in error_text().lower()
    assert not (run / "eval" / "fidelity.json").exists()
