"""Every membership-inference attack side by side on overfit and moderately trained checkpoints, in one run.

Checkpoints (all 16², the ``tiny`` UNet, unconditional, ε-prediction + min-SNR-5, one torch thread):

* ``phantom-overfit`` — 32 phantom patients (≈3 studies each), half held out; full-batch training
  for ``--overfit-steps`` steps: a model that memorised its members;
* ``phantom-moderate`` — 400 phantom patients, batch 32, ``--moderate-steps`` steps;
* ``phantom-untrained`` — the same data, one training step: every attack should stay at AUC 0.5 ± 0.1;
* ``nih-overfit`` / ``nih-moderate`` — the same on the shared NIH ChestX-ray14 images (``--nih``;
  the first 160 images for the overfit run, all 1,000 for the moderate one). Skipped with a message
  when the folder is absent.

Each checkpoint gets ``--samples`` synthetic images (DDPM, 25 steps) for the black-box attacks and is
audited once with every attack (``cxrsynth audit``, ``--unit patient``, the
timestep chosen on calibration; ``--reference-models K`` reference models on the overfit runs for
LiRA/RMIA). The table lists, per attack and level (image: one image per patient; patient: every
image of the patient, aggregated), the evaluation-half AUC [95% CI], TPR at 1% and 0.1% FPR
(thresholds fixed on calibration; ``n/a`` when the evaluation half has fewer than 100 / 1000
non-members, then TPR at the calibration zero-FPR threshold is shown), NFE per image and seconds
per 1,000 images.

    .venv/bin/python bench/audit_power.py --out /tmp/audit-power

Results go to ``OUT/audit_power.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

DEFAULT_NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr14-1000-64px"
SIZE = 16


def build_data(out: Path, name: str, nih: Path | None) -> Path | None:
    """The prepared-data folder of checkpoint ``name`` (built once), or None when its source is absent."""
    from cxrsynth.data.phantom import generate_phantom
    from cxrsynth.data.prepare import prepare_dataset

    if name.endswith("untrained"):
        return build_data(out, name.replace("untrained", "moderate"), nih)
    data = out / name / "data"
    if (data / "meta.json").is_file():
        return data
    source, limit = None, None
    if name.startswith("phantom"):
        source = out / name / "phantom"
        if not source.is_dir():
            generate_phantom(source, patients=32 if name.endswith("overfit") else 400, studies_per_patient=3.0,
                             size=64, seed=0)
    else:
        if nih is None or not (nih / "Data_Entry_2017_v2020.csv").is_file():
            return None
        source, limit = nih, 160 if name.endswith("overfit") else None
    prepare_dataset(source, data, format="nih", size=SIZE, holdout_fraction=0.5, test_fraction=0.15, seed=0,
                    limit=limit, progress=False)
    return data


def build_run(out: Path, name: str, data: Path, steps: int) -> tuple[Path, float]:
    """Train checkpoint ``name`` (resuming a finished one costs nothing); returns the run and train seconds."""
    from cxrsynth.config import TrainConfig
    from cxrsynth.data.prepared import load_prepared
    from cxrsynth.train import train

    run = out / name / "run"
    if (run / "pipeline" / "model_index.json").is_file():
        return run, float(json.loads((out / name / "train_seconds.json").read_text())["seconds"])
    members = len(load_prepared(data).rows("member"))
    overfit = name.endswith("overfit")
    config = TrainConfig(data=str(data), preset="tiny", max_steps=steps, batch_size=members if overfit else 32,
                         lr=1e-3, warmup_steps=20 if overfit else 100, ema_decay=0.99 if overfit else 0.995,
                         conditional=False, seed=0, checkpoint_every=steps, progress_every=0, log_every=100,
                         prediction_type="epsilon", snr_gamma=5.0)
    started = time.perf_counter()
    train(config, run, resume=(run / "config.yaml").is_file())
    seconds = time.perf_counter() - started
    (out / name / "train_seconds.json").write_text(json.dumps({"seconds": seconds}))
    return run, seconds


def sample(run: Path, count: int) -> None:
    """``count`` synthetic images (DDPM, 25 steps) for the black-box attacks; resuming a finished folder costs nothing."""
    from cxrsynth.sample import generate_samples

    generate_samples(run, count, sampler="ddpm", steps=25, batch_size=64, seed=0, device="cpu", progress=False)


def audit(run: Path, reference_models: int, reference_steps: int | None) -> dict:
    """``cxrsynth audit`` with every attack at the patient unit; returns audit.json."""
    from cxrsynth.audit.runner import AuditOptions, audit_run

    options = AuditOptions(device="cpu", unit="patient", reference_models=reference_models,
                           reference_steps=reference_steps, noise_draws=4, classifier_steps=100, reid_steps=50)
    return audit_run(run, options, log=lambda line: print(f"  {line}", file=sys.stderr, flush=True))


def rows_of(name: str, report: dict, train_seconds: float) -> list[dict]:
    """One row per attack and level."""
    rows = []
    for level, results in (("image", report["attacks"]), ("patient", report.get("patient_attacks") or {})):
        for attack, result in results.items():
            image_level = report["attacks"][attack]
            rows.append({
                "checkpoint": name, "attack": attack, "level": level, "auc": result["auc"], "auc_ci": result["auc_ci"],
                "direction": result["direction"], "published_direction": result["published_direction"],
                "tpr_at_1pct_fpr": result["tpr_at_1pct_fpr"], "tpr_at_0.1pct_fpr": result["tpr_at_0.1pct_fpr"],
                "tpr_at_zero_fpr": result["tpr_at_zero_fpr"], "nfe_per_image": image_level["nfe_per_image"],
                "seconds_per_1000_images": image_level["seconds_per_1000_images"],
                "selected": image_level.get("selected"), "aggregation": result.get("aggregation"),
                "tail_aggregation": result.get("tail_aggregation"), "tail_direction": result.get("tail_direction"),
                "low_fpr": result.get("low_fpr"),
                "n_eval": result["n_eval_members"], "train_seconds": train_seconds,
            })
    return rows


def tpr_with_interval(row: dict, key: str) -> str:
    """TPR at a calibration threshold with its exact 95% Clopper–Pearson interval over the evaluated members."""
    from scipy.stats import binomtest

    measured = (row.get("low_fpr") or {}).get(key)
    if row.get(key) is None or not measured:
        return "n/a"
    interval = binomtest(int(measured["true_positives"]), int(row["n_eval"])).proportion_ci(method="exact")
    return f"{row[key]:.3f} [{interval.low:.2f}, {interval.high:.2f}]"


def oriented_auc(row: dict) -> float:
    """AUC in the direction chosen on calibration (what an attacker with calibration data gets)."""
    return row["auc"] if row["direction"] == row["published_direction"] else 1.0 - row["auc"]


def markdown(rows: list[dict], reports: dict) -> str:
    """The side-by-side table, one block per checkpoint."""
    lines = ["| checkpoint | attack | level | AUC [95% CI] | TPR@1%FPR [95% CI] | TPR@0.1%FPR [95% CI] | TPR@0FPR (cal. thr.) [95% CI] | NFE | s / 1000 img |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        low, high = row["auc_ci"] or (None, None)
        flipped = row["direction"] != row["published_direction"]
        auc = f"{oriented_auc(row):.3f}" + (f" [{(1 - high) if flipped else low:.3f}, {(1 - low) if flipped else high:.3f}]"
                                            if low is not None else "") + (" (inv.)" if flipped else "")
        tail = row["tail_aggregation"] or row["aggregation"]
        level = row["level"] + (f" ({row['aggregation']}" + (f"; tail: {tail}" if tail != row["aggregation"] else "") + ")"
                                if row["aggregation"] else "")
        lines.append(f"| {row['checkpoint']} (n={row['n_eval']}) | {row['attack']} | {level} | {auc} | "
                     f"{tpr_with_interval(row, 'tpr_at_1pct_fpr')} | {tpr_with_interval(row, 'tpr_at_0.1pct_fpr')} | "
                     f"{tpr_with_interval(row, 'tpr_at_zero_fpr')} | {row['nfe_per_image']:.1f} | {row['seconds_per_1000_images']:.0f} |")
    lines.append("")
    for name, report in reports.items():
        best = {level: max((r for r in rows if r["checkpoint"] == name and r["level"] == level
                            and r["attack"] != "blind"), key=oriented_auc, default=None) for level in ("image", "patient")}
        text = ", ".join(f"best {level}: {row['attack']} {oriented_auc(row):.3f}" for level, row in best.items() if row)
        reference = report.get("reference_models")
        compute = (f"{reference['count']} × {reference['steps']} steps, {reference['train_seconds_per_model']:.0f} s each"
                   if reference else "none")
        eps = report["summary"].get("worst_eps_lower_bound") or {}
        lines.append(f"- {name}: {text}; leak flag {report['summary']['leak_detected']}; headline ε_lb "
                     f"{eps.get('value', 0.0):.2f} ({eps.get('attack', '-')}); minimum detectable AUC "
                     f"{report['power']['min_detectable_auc'] or float('nan'):.2f}; reference models: {compute}")
    return "\n".join(lines)


def main() -> None:
    """Build the checkpoints, audit each, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/cxrsynth-audit-power"))
    parser.add_argument("--nih", type=Path, default=DEFAULT_NIH, help="the shared NIH ChestX-ray14 folder")
    parser.add_argument("--checkpoints",
                        default="phantom-untrained,phantom-overfit,phantom-moderate,nih-overfit,nih-moderate")
    parser.add_argument("--overfit-steps", type=int, default=500)
    parser.add_argument("--moderate-steps", type=int, default=600)
    parser.add_argument("--reference-models", type=int, default=4, help="K reference models on the overfit checkpoints")
    parser.add_argument("--from-audits", action="store_true",
                        help="only print the table of the checkpoints' existing RUN/audit/audit.json (no training or audit)")
    parser.add_argument("--samples", type=int, default=256, help="synthetic images per checkpoint (nn, nn_domain)")
    parser.add_argument("--reference-steps", type=int, default=None, help="steps per reference model (default: the run's)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, reports = [], {}
    if args.from_audits:
        for name in args.checkpoints.split(","):
            report_path = args.out / name / "run" / "audit" / "audit.json"
            if not report_path.is_file():
                print(f"{name}: no {report_path}", file=sys.stderr)
                continue
            reports[name] = json.loads(report_path.read_text())
            seconds = json.loads((args.out / name / "train_seconds.json").read_text())["seconds"]
            rows += rows_of(name, reports[name], seconds)
        print(markdown(rows, reports))
        return
    for name in args.checkpoints.split(","):
        data = build_data(args.out, name, args.nih if args.nih.is_dir() else None)
        if data is None:
            print(f"{name}: skipped ({args.nih} is absent: the shared NIH images are needed)", file=sys.stderr)
            continue
        overfit = name.endswith("overfit")
        print(f"{name}: training", file=sys.stderr, flush=True)
        steps = args.overfit_steps if overfit else 1 if name.endswith("untrained") else args.moderate_steps
        run, seconds = build_run(args.out, name, data, steps)
        print(f"{name}: sampling", file=sys.stderr, flush=True)
        sample(run, args.samples)
        print(f"{name}: auditing", file=sys.stderr, flush=True)
        report = audit(run, args.reference_models if overfit else 0, args.reference_steps)
        reports[name] = report
        rows += rows_of(name, report, seconds)
        (args.out / "audit_power.json").write_text(json.dumps({"rows": rows}, indent=1))
    print(markdown(rows, reports))


if __name__ == "__main__":
    main()
