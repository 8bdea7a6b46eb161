"""``cxrsynth demo``: the whole pipeline on the built-in phantom, with sensible CPU defaults.

phantom → prepare → train → sample → evaluate → audit → report, each stage through its public
Python function, into one folder::

    DIR/phantom/   the phantom dataset (NIH layout)
    DIR/data/      the prepared-data folder
    DIR/run/       the run folder (config.yaml, checkpoints/, pipeline/, samples/, eval/, audit/,
                   report.html, MODEL_CARD.md)

Re-running resumes: a stage whose output is complete is skipped, an interrupted training run
continues from its newest checkpoint, and sampling skips images already written. The report is
rewritten every time (it takes seconds and shows whatever the run holds).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cxrsynth.runfolder import audit_path, fidelity_path

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoPlan:
    """The settings of one demo.

    Attributes:
        patients: phantom patients.
        studies_per_patient: mean phantom studies per patient.
        phantom_size: side of the phantom source images.
        data_size: side of the prepared (training) images.
        preset: UNet preset.
        max_steps: training steps.
        batch_size: training batch size.
        lr: peak learning rate.
        warmup_steps: learning-rate warm-up.
        ema_decay: maximum EMA decay (short runs need a low one, or the EMA is still near init).
        checkpoint_every: steps between checkpoints (resume granularity).
        progress_every: steps between progress grids.
        conditional: train a label-conditional model (enables the utility check).
        num_samples: synthetic images generated.
        sampler: sampler used for the samples.
        sampler_steps: denoising steps of that sampler.
        eval_metrics: evaluation metric groups.
        classifier_steps: training steps of the evaluation's domain classifier.
        audit_members: patients per side audited (members and holdout); None: all available.
        reid_steps: training steps of the audit's patient re-identification network.
        seed: one seed for every stage.
        holdout_fraction: share of the non-test patients kept as holdout (the audit's non-members:
            the demo keeps many, so the audit can detect a moderate leak).
    """

    patients: int
    studies_per_patient: float
    phantom_size: int
    data_size: int
    preset: str
    max_steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    ema_decay: float
    checkpoint_every: int
    progress_every: int
    conditional: bool
    num_samples: int
    sampler: str
    sampler_steps: int
    eval_metrics: tuple[str, ...]
    classifier_steps: int
    audit_members: int | None
    reid_steps: int
    seed: int = 0
    holdout_fraction: float = 0.2


DEFAULT_PLAN = DemoPlan(
    patients=600,
    studies_per_patient=3.0,
    phantom_size=128,
    data_size=32,
    preset="tiny",
    max_steps=900,
    batch_size=32,
    lr=1e-3,
    warmup_steps=100,
    ema_decay=0.995,
    checkpoint_every=250,
    progress_every=500,
    conditional=True,
    num_samples=256,
    sampler="ddpm",
    sampler_steps=25,
    eval_metrics=("fid", "kid", "prc", "domain", "utility", "diversity", "pixel"),
    classifier_steps=300,
    audit_members=None,
    reid_steps=300,
    holdout_fraction=0.45,
)
"""Aimed at about 15 minutes on 2 CPU cores. Measured 2026-12-03 (one torch thread, another job beside it):
13.0 min. DDPM-25 sampling: 0 of 256 images speckled (DDIM-25 had 10%). The holdout is 45% of the non-test
patients, so the audit evaluates 108 vs 108 patients and its minimum detectable AUC is 0.64.
Domain FD 2.37 (real baseline 0.68), precision 0.61 against 0.85, recall 0.79 against 0.91, utility ratio 0.85.
Realism stays "not yet" at this compute; bench/RESULTS.md has the measured frontier."""

QUICK_PLAN = DemoPlan(
    patients=60,
    studies_per_patient=2.0,
    phantom_size=64,
    data_size=32,
    preset="tiny",
    max_steps=60,
    batch_size=16,
    lr=1e-3,
    warmup_steps=10,
    ema_decay=0.9,
    checkpoint_every=30,
    progress_every=0,
    conditional=True,
    num_samples=32,
    sampler="dpmsolver",
    sampler_steps=10,
    eval_metrics=("domain", "utility", "diversity", "pixel"),
    classifier_steps=60,
    audit_members=None,
    reid_steps=60,
)
"""Under 3 minutes on 2 CPU cores: checks the plumbing, not the quality."""


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, and how long each stage took.

    Attributes:
        out: the demo folder.
        run: the run folder.
        stage_seconds: seconds per stage (0 for a stage skipped because it was complete).
        fidelity: ``eval/fidelity.json`` (None when the stage did not run).
        audit: ``audit/audit.json`` (None when the stage did not run).
        report: what the report stage wrote (a :class:`cxrsynth.report.runner.ReportResult`), or None.
    """

    out: Path
    run: Path
    stage_seconds: dict[str, float]
    fidelity: dict | None
    audit: dict | None
    report: object | None = None


def _stage_phantom(out: Path, plan: DemoPlan, log: Log) -> None:
    from cxrsynth.data.phantom import generate_phantom

    if (out / "phantom").is_dir():
        log("phantom: already there, skipped")
        return
    summary = generate_phantom(
        out / "phantom",
        patients=plan.patients,
        studies_per_patient=plan.studies_per_patient,
        size=plan.phantom_size,
        seed=plan.seed,
        prevalence=None,
    )
    log(str(summary))


def _stage_prepare(out: Path, plan: DemoPlan, log: Log) -> None:
    from cxrsynth.data.prepare import prepare_dataset

    if (out / "data").is_dir():
        log("prepare: already there, skipped")
        return
    prepare_dataset(out / "phantom", out / "data", format="nih", size=plan.data_size, seed=plan.seed,
                    holdout_fraction=plan.holdout_fraction)
    log(f"prepared data: {out / 'data'}")


def _stage_train(out: Path, plan: DemoPlan, log: Log) -> None:
    from cxrsynth.config import TrainConfig
    from cxrsynth.train import train

    run = out / "run"
    if (run / "pipeline" / "model_index.json").is_file():
        log("train: finished model already there, skipped")
        return
    config = TrainConfig(
        data=str(out / "data"),
        preset=plan.preset,
        max_steps=plan.max_steps,
        batch_size=plan.batch_size,
        lr=plan.lr,
        seed=plan.seed,
        conditional=plan.conditional,
        warmup_steps=plan.warmup_steps,
        ema_decay=plan.ema_decay,
        # The phantom's recipe table chose ε + min-SNR-5 for the demo (recall 0.79 vs 0.69 for v);
        # `train` defaults to v, chosen on real radiographs (bench/RESULTS.md).
        prediction_type="epsilon",
        snr_gamma=5.0,
        checkpoint_every=plan.checkpoint_every,
        keep_checkpoints=2,
        progress_every=plan.progress_every,
    )
    resume = (run / "config.yaml").is_file()
    log(f"train: {plan.preset} UNet, {plan.max_steps} steps" + (" (resuming)" if resume else ""))
    train(config, run, resume=resume)


def _stage_sample(out: Path, plan: DemoPlan, log: Log) -> None:
    from cxrsynth.sample import generate_samples

    report = generate_samples(
        out / "run",
        plan.num_samples,
        sampler=plan.sampler,
        steps=plan.sampler_steps,
        batch_size=32,
        seed=plan.seed,
        progress=True,
    )
    log(f"samples: {len(report.written)} written, {len(report.skipped)} already there, in {report.out}")


def _stage_evaluate(out: Path, plan: DemoPlan, log: Log) -> None:
    from cxrsynth.evaluate.runner import EvaluateOptions, evaluate_run

    if fidelity_path(out / "run").is_file():
        log("evaluate: fidelity.json already there, skipped")
        return
    options = EvaluateOptions(
        metrics=plan.eval_metrics,
        seed=plan.seed,
        classifier_steps=plan.classifier_steps,
        progress=True,
    )
    evaluate_run(out / "run", options, log=log)


def _stage_audit(out: Path, plan: DemoPlan, log: Log) -> None:
    from cxrsynth.audit.runner import AuditOptions, audit_run

    if audit_path(out / "run").is_file():
        log("audit: audit.json already there, skipped")
        return
    options = AuditOptions(
        num_members=plan.audit_members,
        seed=plan.seed,
        classifier_steps=plan.classifier_steps,
        reid_steps=plan.reid_steps,
        progress=True,
    )
    audit_run(out / "run", options, log=log)


def _stage_report(out: Path, plan: DemoPlan, log: Log):
    """Write report.html and MODEL_CARD.md; returns the ReportResult (its verdict feeds the demo's summary)."""
    from cxrsynth.report.runner import write_report

    result = write_report(out / "run", log=log)
    log(f"report: {result.html}")
    return result


def available_stages() -> list[tuple[str, Callable[[Path, DemoPlan, Log], object]]]:
    """The demo's stages in pipeline order, limited to those this installation has."""
    stages: list[tuple[str, Callable[[Path, DemoPlan, Log], object]]] = [
        ("phantom", _stage_phantom),
        ("prepare", _stage_prepare),
        ("train", _stage_train),
        ("sample", _stage_sample),
        ("evaluate", _stage_evaluate),
    ]
    try:
        has_audit = importlib.util.find_spec("cxrsynth.audit.runner") is not None
    except ModuleNotFoundError:
        has_audit = False
    if has_audit:
        stages.append(("audit", _stage_audit))
    stages.append(("report", _stage_report))
    return stages


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_demo(out: str | Path = "demo", quick: bool = False, log: Log = print, plan: DemoPlan | None = None) -> DemoResult:
    """Run every available stage on the built-in phantom into ``out`` (resuming what exists).

    Args:
        out: the demo folder (created; reused when it exists).
        quick: use :data:`QUICK_PLAN` (under 3 minutes) instead of :data:`DEFAULT_PLAN`.
        log: where progress lines go.
        plan: explicit settings, overriding ``quick``.

    Returns:
        The :class:`DemoResult`.

    Raises:
        CxrsynthError: from any stage, with that stage's message; outputs of completed stages stay.
    """
    chosen = plan or (QUICK_PLAN if quick else DEFAULT_PLAN)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    plan_file = root / "demo_plan.json"
    recorded = _read_json(plan_file)
    wanted = dataclasses.asdict(chosen)
    wanted["eval_metrics"] = list(chosen.eval_metrics)
    if recorded is not None and recorded != wanted:
        from cxrsynth.errors import CxrsynthError

        raise CxrsynthError(
            f"{root} holds a demo made with other settings (see {plan_file})",
            "use another --out folder, or remove this one",
        )
    plan_file.write_text(json.dumps(wanted, indent=2) + "\n")
    seconds: dict[str, float] = {}
    outputs: dict[str, object] = {}
    for name, stage in available_stages():
        log(f"── {name} ──")
        start = time.perf_counter()
        outputs[name] = stage(root, chosen, log)
        seconds[name] = round(time.perf_counter() - start, 1)
    run = root / "run"
    return DemoResult(
        out=root,
        run=run,
        stage_seconds=seconds,
        fidelity=_read_json(fidelity_path(run)),
        audit=_read_json(audit_path(run)),
        report=outputs.get("report"),
    )
