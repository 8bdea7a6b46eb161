"""Training recipes measured for quality per compute, side by side in one run.

For each recipe, train the same UNet on the same data (seed, batch, preset), and at every
``--checkpoints`` step count (resuming, so one trajectory per recipe) sample ``--samples`` images
(``--sampler``, 25 steps; DDPM by default, DDIM shows how accurate ε̂ already is) and measure: domain precision / recall and FD at matched N with their real baselines
(``cxrsynth evaluate --metrics domain,pixel``), and the artefact rate. Recipes:

* ``eps`` — ε-prediction MSE, lr 1e-3, 100 warm-up steps, EMA ≤ 0.995 (the default until 2026-12-03);
* ``eps-minsnr5`` — the same, min-SNR-γ weighting with γ = 5 (the default now);
* ``v`` — v-prediction;
* ``v-minsnr5`` — v-prediction with min-SNR-5;
* ``diffusers`` — the diffusers ``train_unconditional.py`` example's recipe on our UNet: ε-prediction,
  lr 1e-4, 500 warm-up steps, AdamW weight decay 1e-6, EMA ≤ 0.9999 (power 3/4).

    .venv/bin/python bench/recipe.py --data demo/data --checkpoints 300,600,900 --jobs 2

Each recipe trains in its own process with one torch thread (``--jobs`` at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RECIPES: dict[str, dict] = {
    "eps": {"prediction_type": "epsilon", "snr_gamma": 0.0},
    "eps-minsnr5": {"prediction_type": "epsilon", "snr_gamma": 5.0},
    "v": {"prediction_type": "v_prediction", "snr_gamma": 0.0},
    "v-minsnr5": {"prediction_type": "v_prediction", "snr_gamma": 5.0},
    "diffusers": {"prediction_type": "epsilon", "snr_gamma": 0.0, "lr": 1e-4, "warmup_steps": 500,
                  "weight_decay": 1e-6, "ema_decay": 0.9999},
}
"""Every recipe names its prediction type and weighting, so the table does not move with the defaults."""
BASE: dict = {"preset": "tiny", "batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.995, "seed": 0,
              "conditional": False, "progress_every": 0, "log_every": 50}


def measure(run: Path, samples: int, classifier_steps: int, sampler: str) -> dict:
    """Sample with ``sampler`` (25 steps) and evaluate domain and pixel metrics; returns the numbers."""
    import shutil

    from cxrsynth.evaluate.runner import EvaluateOptions, evaluate_run
    from cxrsynth.sample import generate_samples

    folder = run / "samples"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(run / "eval", ignore_errors=True)
    started = time.perf_counter()
    generate_samples(run, samples, sampler=sampler, steps=25, seed=0, out=folder, progress=False, device="cpu")
    sample_seconds = time.perf_counter() - started
    report = evaluate_run(run, EvaluateOptions(metrics=("domain", "pixel"), classifier_steps=classifier_steps))
    return {"fd": report["fd_domain"], "fd_ci": report["fd_domain_ci"], "fd_real": report["fd_domain_real_baseline"],
            "matched_n": report["matched_n"], "precision": report["precision_domain"],
            "precision_real": report["precision_domain_real_baseline"], "recall": report["recall_domain"],
            "recall_real": report["recall_domain_real_baseline"], "artefact_rate": report["artefact_rate"],
            "artefact_rate_real": report["artefact_rate_real_baseline"], "sample_seconds": round(sample_seconds, 1)}


def run_recipe(name: str, data: str, out: str, checkpoints: list[int], samples: int, classifier_steps: int,
               sampler: str = "ddpm") -> list[dict]:
    """Train recipe ``name`` up to each checkpoint in turn and measure there."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from cxrsynth.config import TrainConfig
    from cxrsynth.train import train

    torch.set_num_threads(1)
    run = Path(out) / name
    rows, trained = [], 0.0
    for steps in checkpoints:
        config = TrainConfig(data=data, max_steps=steps, checkpoint_every=checkpoints[0], **{**BASE, **RECIPES[name]})
        started = time.perf_counter()
        train(config, run, resume=run.exists())
        trained += time.perf_counter() - started
        rows.append({"recipe": name, "steps": steps, "train_seconds": round(trained, 1),
                     "sampler": sampler, **measure(run, samples, classifier_steps, sampler)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    """Run the recipes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared-data folder (e.g. demo/data)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cxrsynth-recipes"))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--checkpoints", default="300,600,900")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--classifier-steps", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim", "dpmsolver"))
    args = parser.parse_args()
    if not (args.data / "meta.json").is_file():
        sys.exit(f"{args.data} is not a prepared-data folder: run `make demo` (demo/data) or `cxrsynth data prepare`")
    names = args.recipes.split(",")
    checkpoints = [int(step) for step in args.checkpoints.split(",")]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_recipe, names, [str(args.data.resolve())] * len(names),
                                [str(args.out)] * len(names), [checkpoints] * len(names),
                                [args.samples] * len(names), [args.classifier_steps] * len(names),
                                [args.sampler] * len(names)))
    rows = [row for recipe in results for row in recipe]
    (args.out / "recipes.json").write_text(json.dumps(rows, indent=1))
    print("| recipe | steps | train s | FD domain [95%] vs real (N) | precision / real | recall / real | artefacts / real |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['steps']} | {r['train_seconds']:.0f} | {r['fd']:.3g} [{r['fd_ci'][0]:.3g}, "
              f"{r['fd_ci'][1]:.3g}] vs {r['fd_real']:.3g} ({r['matched_n']}) | {r['precision']:.2f} / "
              f"{r['precision_real']:.2f} | {r['recall']:.2f} / {r['recall_real']:.2f} | {r['artefact_rate']:.1%} / "
              f"{r['artefact_rate_real']:.1%} |")


if __name__ == "__main__":
    main()
