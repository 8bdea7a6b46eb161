"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run.

Both runs are real ``python -m cxrsynth train`` processes (conditional, so label dropout's random
stream is covered too), started together with one thread each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel
from safetensors import safe_open
from safetensors.torch import load_file

from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.train.run_log import read_train_log
from tests.factories import make_prepared_folder

STEPS = 25
KILL_AFTER_LOGGED_STEP = 15  # past the step-10 checkpoint, before the step-20 one; a grid is due at 15
TIMEOUT_S = 600


def _command(data: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cxrsynth", "train", "--data", str(data), "--run", str(run), "--preset", "tiny",
        "--max-steps", str(STEPS), "--batch-size", "4", "--checkpoint-every", "10", "--keep-checkpoints", "2",
        "--progress-every", "15", "--log-every", "5", "--warmup-steps", "5", "--seed", "3", "--conditional", *extra,
    ]


def _environment() -> dict[str, str]:
    # Two trainings share the machine; one thread each avoids OpenMP oversubscription.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _wait_for_logged_step(process: subprocess.Popen, run: Path, step: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if any(record["step"] >= step for record in read_train_log(run)):
            return
        if process.poll() is not None:
            pytest.fail(f"training exited with {process.returncode} before logging step {step}: "
                        f"{process.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"no log record for step {step} within {TIMEOUT_S} s")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def _assert_same_tensors(left: Path, right: Path) -> None:
    a, b = _tensors(left), _tensors(right)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{left.name}: {name} differs"


@pytest.mark.slow
def test_sigkill_and_resume_gives_bit_identical_weights(tmp_path: Path) -> None:
    data = make_prepared_folder(tmp_path / "data", seed=5)
    reference_run, killed_run = tmp_path / "reference", tmp_path / "killed"
    reference = subprocess.Popen(_command(data, reference_run), env=_environment(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_command(data, killed_run), env=_environment(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_logged_step(victim, killed_run, KILL_AFTER_LOGGED_STEP)
        assert victim.poll() is None, "the run finished before it could be killed"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_run / "pipeline").exists()
    assert (killed_run / "checkpoints" / "step_0000010" / "state.json").is_file()

    resumed = subprocess.run(_command(data, killed_run, "--resume"), env=_environment(),
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    assert reference.wait(timeout=TIMEOUT_S) == 0, reference.stderr.read().decode()[-3000:]

    final = f"checkpoints/step_{STEPS:07d}"
    for name in ("unet.safetensors", "ema.safetensors", "optimizer.safetensors", "rng_rank0.safetensors"):
        _assert_same_tensors(reference_run / final / name, killed_run / final / name)
    with safe_open(str(killed_run / final / "rng_rank0.safetensors"), "pt") as a, \
            safe_open(str(reference_run / final / "rng_rank0.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata()  # Python and numpy RNG states
    states = [json.loads((run / final / "state.json").read_text()) for run in (reference_run, killed_run)]
    assert states[0] == states[1]
    weights = "pipeline/unet/diffusion_pytorch_model.safetensors"
    _assert_same_tensors(reference_run / weights, killed_run / weights)

    # The resumed log replaces the steps redone after the checkpoint instead of repeating them.
    def trajectory(run: Path) -> list[tuple]:
        return [(r["step"], r["loss"], r["lr"], r["epoch"]) for r in read_train_log(run)]

    assert trajectory(killed_run) == trajectory(reference_run)
    assert [step for step, *_ in trajectory(killed_run)] == list(range(5, STEPS + 1, 5))
    assert sorted(p.name for p in (killed_run / "progress").iterdir()) == ["step_0000015.png"]
    assert (killed_run / "progress" / "step_0000015.png").read_bytes() == \
        (reference_run / "progress" / "step_0000015.png").read_bytes()

    # Conditional model: vocabulary beside the run and the pipeline; the label changes the prediction.
    vocabulary = LabelVocabulary.load(killed_run / "pipeline")
    assert vocabulary is not None and vocabulary == LabelVocabulary.load(killed_run)
    unet = UNet2DModel.from_pretrained(killed_run / "pipeline" / "unet").eval()
    assert unet.config.num_class_embeds == vocabulary.num_class_embeds
    noisy = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predictions = [unet(noisy, torch.tensor([500]), class_labels=torch.tensor([label])).sample
                       for label in (0, vocabulary.null_class)]
    assert not torch.allclose(predictions[0], predictions[1])
