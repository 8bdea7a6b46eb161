"""The pipeline on the shared real NIH ChestX-ray14 images (1,000 at 64², RGB/RGBA PNGs of gray content),
when present beside the repository (``../shared/data``): prepare → train → sample → evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrsynth.cli import main

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-cxr14-1000-64px"


def _run(*args: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code in (0, None), f"cxrsynth {' '.join(args)} exited with {exited.value.code}"


@pytest.mark.slow
@pytest.mark.skipif(not (SOURCE / "Data_Entry_2017_v2020.csv").is_file(), reason=f"no shared NIH images at {SOURCE}")
def test_real_nih_images_go_through_prepare_train_sample_evaluate(tmp_path: Path) -> None:
    data, run = tmp_path / "nih32", tmp_path / "run"
    _run("data", "prepare", str(SOURCE), "--format", "nih", "--size", "32", "--out", str(data))
    meta = json.loads((data / "meta.json").read_text())
    assert meta["images"] == 1000 and meta["patient_ids"] == "real"
    assert sum(split["patients"] for split in meta["counts"].values()) == 264, "patients with 1–66 follow-ups"
    assert "Hernia" in meta["labels"], "a finding with 9 images is kept"
    _run("train", "--data", str(data), "--run", str(run), "--preset", "tiny", "--max-steps", "6", "--batch-size", "8",
         "--conditional", "--progress-every", "0", "--warmup-steps", "2")
    _run("sample", "--run", str(run), "--num-images", "12", "--sampler", "ddpm", "--steps", "4")
    _run("evaluate", "--run", str(run), "--metrics", "domain,utility,pixel", "--classifier-steps", "20")
    fidelity = json.loads((run / "eval" / "fidelity.json").read_text())
    assert fidelity["n_synthetic"] == 12 and fidelity["fd_domain"] > 0
    assert fidelity["artefacts"]["n_synthetic"] == 12 and 0 <= fidelity["artefact_rate_real_baseline"] <= 0.05
    assert fidelity["utility"] is not None or fidelity["utility_skipped"]
