"""``cxrsynth train --dp``: the guarantee is reported, survives resume, and is never exceeded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from diffusers import DDPMPipeline
from safetensors.torch import load_file

from cxrsynth.cli import main
from cxrsynth.config import load_run_config
from cxrsynth.train.checkpoint import list_checkpoints
from cxrsynth.train.run_log import read_train_log
from tests.dp.test_accounting import independent_epsilon
from tests.factories import make_prepared_folder

STEPS = 6


@pytest.fixture
def patient_data(tmp_path: Path) -> Path:
    """12 patients × 3 images at 16²: 8 member patients (24 images)."""
    return make_prepared_folder(tmp_path / "prepared", n_patients=12, images_per_patient=3, size=16,
                                split_cycle=("member", "member", "holdout"))


def _train(data: Path | None, run: Path, *extra: str) -> None:
    arguments = ["train", "--run", str(run), *extra]
    if data is not None:
        arguments += ["--data", str(data), "--preset", "tiny", "--max-steps", str(STEPS), "--checkpoint-every", "3",
                      "--log-every", "2", "--progress-every", "0", "--warmup-steps", "2", "--dp", "--epsilon", "4",
                      "--logical-batch-size", "4", "--physical-batch-size", "3", "--noise-multiplicity", "2"]
    try:
        main(arguments)
    except SystemExit as exited:
        assert exited.code in (0, None), f"cxrsynth train exited with {exited.code}"


def _privacy(run: Path) -> dict:
    return json.loads((run / "privacy.json").read_text())


def test_a_dp_run_reports_its_patient_level_guarantee(tmp_path: Path, patient_data: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    _train(patient_data, run)
    printed = " ".join(capsys.readouterr().out.split())
    assert "δ = 0.0125 = 1/(10·units)" in printed, "the default δ is printed"
    privacy = _privacy(run)
    assert privacy["unit"] == "patient" and privacy["privacy_units"] == 8
    assert privacy["delta"] == pytest.approx(1 / 80) and privacy["sample_rate"] == pytest.approx(0.5)
    assert privacy["steps"] == STEPS and privacy["noise_multiplicity"] == 2 and not privacy["stopped_early"]
    assert privacy["epsilon"] <= privacy["target_epsilon"] == 4.0
    assert privacy["epsilon"] == pytest.approx(
        independent_epsilon(privacy["noise_multiplier"], privacy["sample_rate"], STEPS, privacy["delta"], "prv"),
        rel=0.05)
    epsilons = [record["epsilon"] for record in read_train_log(run)]
    assert len(epsilons) == 3 and epsilons == sorted(epsilons) and epsilons[-1] == privacy["epsilon"]
    _, facts = load_run_config(run)
    assert (facts.privacy_unit, facts.privacy_units, facts.global_batch_size) == ("patient", 8, 4)
    pipeline = DDPMPipeline.from_pretrained(run / "pipeline")  # EMA export works unchanged on DP runs
    assert pipeline.unet.config.sample_size == 16


def test_resume_continues_the_budget_and_the_trajectory(tmp_path: Path, patient_data: Path) -> None:
    whole = tmp_path / "whole"
    _train(patient_data, whole)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(whole, interrupted)
    for step, folder in list_checkpoints(interrupted):
        if step > 3:
            shutil.rmtree(folder)
    for leftover in ("pipeline", "privacy.json"):
        path = interrupted / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _train(None, interrupted, "--resume")
    assert _privacy(interrupted) == _privacy(whole), "the resumed run spent the budget of the whole run, not half"
    assert _privacy(interrupted)["steps"] == STEPS
    final = f"checkpoints/step_{STEPS:07d}/unet.safetensors"
    ours, theirs = load_file(interrupted / final), load_file(whole / final)
    assert all((ours[name] == theirs[name]).all() for name in theirs), "resume is bit-identical"


def test_noise_and_sampling_come_from_os_entropy_not_the_published_seed(tmp_path: Path, patient_data: Path) -> None:
    runs = [tmp_path / "first", tmp_path / "second"]
    for run in runs:
        _train(patient_data, run, "--seed", "0")
    assert all(_privacy(run)["noise_source"] == "os-entropy" for run in runs)
    final = f"checkpoints/step_{STEPS:07d}"
    secrets = [json.loads((run / final / "state.json").read_text())["draw_seed"] for run in runs]
    assert secrets[0] != secrets[1] and 0 not in secrets, "each DP run draws its own secret seed"
    assert [json.loads((run / final / "state.json").read_text())["stream"]["seed"] for run in runs] == secrets
    ours, theirs = (load_file(run / final / "unet.safetensors") for run in runs)
    assert any((ours[name] != theirs[name]).any() for name in theirs), \
        "two DP runs with the same --seed must not share their noise (it would be replayable from the seed)"
    for run, secret in zip(runs, secrets):
        shared = [run / "privacy.json", run / "config.yaml", run / "train_log.jsonl",
                  *(path for path in (run / "pipeline").rglob("*") if path.is_file())]
        for path in shared:
            assert str(secret).encode() not in path.read_bytes(), f"{path} names the secret noise seed"


def _conditional_data(root: Path, findings: tuple[str, ...], seed: int, source_format: str) -> Path:
    folder = make_prepared_folder(root, n_patients=12, images_per_patient=3, size=16, findings=findings, seed=seed,
                                  split_cycle=("member", "member", "holdout"))
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "format": source_format}))
    return folder


def test_conditional_dp_runs_on_different_label_distributions_ship_identical_vocabularies(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = _conditional_data(tmp_path / "a", ("Cardiomegaly", "Nodule"), seed=1, source_format="nih")
    second = _conditional_data(tmp_path / "b", ("Effusion", "Hernia", "Mass"), seed=2, source_format="nih")
    runs = [tmp_path / "run_a", tmp_path / "run_b"]
    for data, run in zip((first, second), runs):
        _train(data, run, "--conditional")
    vocabularies = [(run / "pipeline" / "label_vocabulary.json").read_bytes() for run in runs]
    assert vocabularies[0] == vocabularies[1], "the released label sets must not depend on the member labels"
    assert json.loads(vocabularies[0])["counts"] is None and json.loads(vocabularies[0])["source"] == "schema"
    configs = [json.loads((run / "pipeline" / "unet" / "config.json").read_text()) for run in runs]
    assert configs[0] == configs[1] and configs[0]["num_class_embeds"] == 1 + 14 + 91 + 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["sample", "--run", str(runs[0]), "--num-images", "2", "--sampler", "ddim", "--steps", "2",
              "--label-mix", "from-data", "--out", str(tmp_path / "refused")])
    assert exited.value.code == 2
    assert "stores none" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "refused" / "manifest.csv").exists()
    with pytest.raises(SystemExit) as exited:
        main(["sample", "--run", str(runs[0]), "--num-images", "3", "--sampler", "ddim", "--steps", "2",
              "--out", str(tmp_path / "uniform")])
    assert exited.value.code in (0, None)
    assert json.loads((tmp_path / "uniform" / "sampling.json").read_text())["labels"] == "uniform"


def test_a_conditional_dp_run_on_a_source_without_a_public_schema_needs_findings(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _conditional_data(tmp_path / "prepared", ("Cardiomegaly", "Nodule"), seed=1, source_format="folder")
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", str(data), "--run", str(tmp_path / "run"), "--preset", "tiny", "--max-steps", "2",
              "--dp", "--epsilon", "4", "--logical-batch-size", "4", "--conditional"])
    assert exited.value.code == 2
    assert "pass --findings" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_that_would_exceed_the_target_stops_at_it(tmp_path: Path, patient_data: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    _train(patient_data, run)
    spent = _privacy(run)["epsilon"]
    capsys.readouterr()
    _train(None, run, "--resume", "--max-steps", str(3 * STEPS))
    printed = " ".join(capsys.readouterr().out.split())
    assert "would spend more than the target ε = 4.0" in printed and f"training stops at step {STEPS}" in printed
    privacy = _privacy(run)
    assert privacy["stopped_early"] and privacy["steps"] == STEPS and privacy["epsilon"] == spent <= 4.0


@pytest.mark.parametrize(("options", "message"), [
    (["--epsilon", "3"], "only apply to differentially private training"),
    (["--dp"], "--dp needs a target --epsilon"),
    (["--dp", "--epsilon", "3", "--logical-batch-size", "9"], "exceeds the 8 patients"),
    (["--dp", "--epsilon", "3", "--accountant", "gdp"], "invalid --accountant"),
    (["--dp", "--epsilon", "-1"], "invalid --epsilon"),
])
def test_bad_dp_options_are_clear_errors(tmp_path: Path, patient_data: Path, capsys: pytest.CaptureFixture,
                                         options: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", str(patient_data), "--run", str(tmp_path / "run"), "--preset", "tiny",
              "--max-steps", "2", *options])
    assert exited.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_patient_unit_needs_patient_ids(tmp_path: Path, patient_data: Path, capsys: pytest.CaptureFixture) -> None:
    meta_path = patient_data / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "patient_ids": "per-image"}))
    with pytest.raises(SystemExit):
        main(["train", "--data", str(patient_data), "--run", str(tmp_path / "run"), "--preset", "tiny",
              "--max-steps", "2", "--dp", "--epsilon", "3", "--privacy-unit", "patient"])
    assert "--privacy-unit image" in " ".join(capsys.readouterr().err.split())


def test_help_explains_the_patient_unit(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "guarantee covers a patient and all their images" in text
