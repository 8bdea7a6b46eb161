"""A tiny but real run folder through every stage (train, sample, evaluate, audit), for report and release tests.

Small enough to build in well under a minute on one CPU thread; every file is written by the
stage's own public function, so the tests read exactly what a user's run would hold.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate.state import AcceleratorState

from tests.factories import make_prepared_folder

NUM_SAMPLES = 8


def build_tiny_run(root: Path, *, evaluate: bool = True, audit: bool = True) -> Path:
    """Prepare 24 patients × 2 images at 32², train a conditional ``tiny`` UNet for 8 steps, sample, evaluate, audit.

    Args:
        root: folder for ``data/`` and ``run/`` (created).
        evaluate: run the evaluate stage (cheap metric groups only).
        audit: run the audit (loss, nn and blind attacks; a 10-step re-identification network).

    Returns:
        The run folder ``root/run``.
    """
    from cxrsynth.audit.runner import AuditOptions, audit_run
    from cxrsynth.config import TrainConfig
    from cxrsynth.evaluate.runner import EvaluateOptions, evaluate_run
    from cxrsynth.sample import generate_samples
    from cxrsynth.train import train

    data = make_prepared_folder(root / "data", n_patients=24, images_per_patient=2, size=32)
    run = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread degrades far less than two on a busy shared CPU
    try:
        train(TrainConfig(data=str(data), preset="tiny", max_steps=8, batch_size=4, lr=1e-3, warmup_steps=2,
                          conditional=True, checkpoint_every=8, keep_checkpoints=1, progress_every=0, log_every=2), run)
        generate_samples(run, NUM_SAMPLES, sampler="dpmsolver", steps=2, batch_size=NUM_SAMPLES, device="cpu", progress=False)
        AcceleratorState._reset_state(reset_partial_state=True)  # generate_samples pinned accelerate to the CPU
        if evaluate:
            evaluate_run(run, EvaluateOptions(metrics=("domain", "utility", "diversity", "pixel"), classifier_steps=5,
                                              bootstrap_resamples=20))
        if audit:
            audit_run(run, AuditOptions(attacks=("loss", "nn", "blind"), noise_draws=1, classifier_steps=5,
                                        reid_steps=10, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    return run


_BUILT: dict[str, Path] = {}


def shared_tiny_run(factory) -> Path:
    """One :func:`build_tiny_run` per test session, shared by every test folder that asks (read it, or copy it).

    Args:
        factory: pytest's ``tmp_path_factory``.
    """
    if "run" not in _BUILT:
        _BUILT["run"] = build_tiny_run(factory.mktemp("tiny_run"))
    return _BUILT["run"]


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of ``run`` (without its checkpoints) at ``dest``, to change without touching the shared one."""
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest
