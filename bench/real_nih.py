"""The whole pipeline on real chest X-rays: the 1,000 shared NIH ChestX-ray14 images, end to end.

prepare (``--format nih``) → train (conditional) → sample → evaluate → audit → report, at each
requested size, with presets and steps that fit a 2-core CPU; prints one table of fidelity (domain
FD at matched N with its real baseline, precision/recall, MS-SSIM, artefact rate), utility
(TSTR/TRTR), audit (power, leak flag, worst ε lower bound) and seconds per stage, and writes
``OUT/summary.json``.

    .venv/bin/python bench/real_nih.py                                # 32² tiny, 1,200 steps (~25 min idle)
    .venv/bin/python bench/real_nih.py --plans 32:tiny:1200,64:small:600 --out /tmp/real_nih

The images are read from ``../shared/data/nih-cxr14-1000-64px`` (``--source``); nothing is copied
into the repository. Without the folder the script exits with a message saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr14-1000-64px"


def _cxrsynth(*args: str) -> float:
    """Run one ``cxrsynth`` command (1 torch thread); returns its wall-clock seconds."""
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cxrsynth", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"cxrsynth {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def run_plan(source: Path, out: Path, size: int, preset: str, steps: int, samples: int, batch: int) -> dict:
    """One size: every stage, timed; returns the numbers of its JSON outputs."""
    data, run = out / f"nih{size}", out / f"run{size}"
    seconds = {}
    if not (data / "meta.json").is_file():
        seconds["prepare"] = _cxrsynth("data", "prepare", str(source), "--format", "nih", "--size", str(size),
                                       "--out", str(data))
    seconds["train"] = _cxrsynth("train", "--data", str(data), "--run", str(run), "--preset", preset, "--max-steps",
                                 str(steps), "--batch-size", str(batch), "--lr", "1e-3", "--warmup-steps", "100",
                                 "--ema-decay", "0.995", "--conditional", "--progress-every", "0",
                                 "--checkpoint-every", str(max(steps // 2, 1)), *(["--resume"] if run.exists() else []))
    seconds["sample"] = _cxrsynth("sample", "--run", str(run), "--num-images", str(samples), "--sampler", "ddpm",
                                  "--steps", "25", "--out", str(run / "samples"))
    seconds["evaluate"] = _cxrsynth("evaluate", "--run", str(run), "--metrics", "domain,utility,diversity,pixel")
    seconds["audit"] = _cxrsynth("audit", "--run", str(run))
    seconds["report"] = _cxrsynth("report", "--run", str(run))
    fidelity = json.loads((run / "eval" / "fidelity.json").read_text())
    audit = json.loads((run / "audit" / "audit.json").read_text())
    meta = json.loads((data / "meta.json").read_text())
    utility = fidelity.get("utility") or {}
    return {
        "size": size, "preset": preset, "steps": steps, "batch_size": batch, "samples": samples,
        "counts": meta.get("counts"), "matched_n": fidelity.get("matched_n"),
        "fd_domain": fidelity["fd_domain"], "fd_domain_ci": fidelity["fd_domain_ci"],
        "fd_domain_real_baseline": fidelity["fd_domain_real_baseline"],
        "precision_domain": fidelity["precision_domain"], "precision_real": fidelity["precision_domain_real_baseline"],
        "recall_domain": fidelity["recall_domain"], "recall_real": fidelity["recall_domain_real_baseline"],
        "ms_ssim": (fidelity.get("diversity") or {}).get("ms_ssim_synthetic"),
        "ms_ssim_real": (fidelity.get("diversity") or {}).get("ms_ssim_real"),
        "artefact_rate": fidelity.get("artefact_rate"), "artefact_rate_real": fidelity.get("artefact_rate_real_baseline"),
        "tstr_auroc": utility.get("tstr_auroc"), "trtr_auroc": utility.get("trtr_auroc"),
        "per_finding": [(row["finding"], row["tstr_auroc"], row["trtr_auroc"], row["n_positive_test"])
                        for row in utility.get("per_finding") or []],
        "audit_patients": audit["n_evaluation"], "min_detectable_auc": audit["power"]["min_detectable_auc"],
        "leak_detected": audit["summary"]["leak_detected"],
        "worst_eps_lower_bound": audit["summary"].get("worst_eps_lower_bound"),
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
    }


def main() -> None:
    """Run every plan and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cxrsynth-real-nih"))
    parser.add_argument("--plans", default="32:tiny:1200", help="size:preset:steps, comma-separated")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if not (args.source / "Data_Entry_2017_v2020.csv").is_file():
        sys.exit(f"the shared NIH images are not at {args.source}: pass --source DIR (a ChestX-ray14 folder with "
                 "Data_Entry_2017_v2020.csv and images/)")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for plan in args.plans.split(","):
        size, preset, steps = plan.split(":")
        print(f"== {size}² {preset}, {steps} steps", flush=True)
        results.append(run_plan(args.source, args.out, int(size), preset, int(steps), args.samples, args.batch_size))
        print(json.dumps(results[-1], indent=1), flush=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    print("| size | preset, steps | FD domain [95%] vs real (matched N) | precision / real | recall / real | "
          "artefacts / real | TSTR / TRTR AUROC | audit min. AUC | leak | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lo, hi = r["fd_domain_ci"]
        print(f"| {r['size']}² | {r['preset']}, {r['steps']} | {r['fd_domain']:.3g} [{lo:.3g}, {hi:.3g}] vs "
              f"{r['fd_domain_real_baseline']:.3g} ({r['matched_n']}) | {r['precision_domain']:.2f} / "
              f"{r['precision_real']:.2f} | {r['recall_domain']:.2f} / {r['recall_real']:.2f} | "
              f"{r['artefact_rate']:.1%} / {r['artefact_rate_real']:.1%} | "
              f"{(r['tstr_auroc'] or float('nan')):.3f} / {(r['trtr_auroc'] or float('nan')):.3f} | "
              f"{r['min_detectable_auc']:.2f} | {r['leak_detected']} | {r['seconds']['train']:.0f} |")


if __name__ == "__main__":
    main()
