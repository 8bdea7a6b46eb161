"""Benchmark: domain-feature extraction speed, and the cost of a whole ``evaluate`` on N real vs N synthetic.

Builds a phantom dataset at ``--size`` (enough patients for about ``--images`` test images: the
reference is the whole test split, so N real is close to, not exactly, ``--images``), a run folder
whose ``samples/`` holds ``--images`` stand-in synthetic images (member images plus a little noise:
the cost of evaluation does not depend on where the images came from), then measures:

1. images/s of :meth:`DomainClassifier.features` (batch 256) on ``--images`` images;
2. wall-clock seconds of :func:`cxrsynth.evaluate.runner.evaluate_run` with every metric — first
   with the domain classifier trained from scratch, then again with it cached — and the seconds of
   each metric group. Without ``--inception-weights`` FID/KID/precision/recall are skipped (as on an
   offline machine); with them, their cost is included.

    .venv/bin/python bench/evaluate.py                         # 1,000 vs 1,000 at 64², CPU
    .venv/bin/python bench/evaluate.py --inception-weights weights-inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxrsynth.cli import main as cli_main
from cxrsynth.config import RunFacts, TrainConfig, save_run_config
from cxrsynth.data.phantom import generate_phantom
from cxrsynth.data.prepared import PreparedData, load_prepared
from cxrsynth.evaluate.domain import domain_classifier_for_run
from cxrsynth.evaluate.runner import EvaluateOptions, evaluate_run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="real (test) and synthetic images each (default 1000)")
    parser.add_argument("--size", type=int, default=64, help="image side (default 64)")
    parser.add_argument("--inception-weights", type=Path, help="Inception weights file (default: FID etc. skipped)")
    parser.add_argument("--workdir", type=Path, help="folder for the data and run (default: a temporary folder)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    return parser.parse_args()


def build_data(workdir: Path, images: int, size: int) -> PreparedData:
    """A prepared phantom with at least ``images`` test images (the phantom puts ~20% of patients in test)."""
    data_dir = workdir / "data"
    if not data_dir.is_dir():
        # ~20% of phantom patients go to test, with ~3.3 studies each on average.
        patients = int(np.ceil(images / 0.2 / 3.3 * 1.08))
        generate_phantom(workdir / "phantom", patients=patients, studies_per_patient=3.0, size=size, seed=0)
        try:
            cli_main(["data", "prepare", str(workdir / "phantom"), "--format", "nih", "--size", str(size), "--out", str(data_dir)])
        except SystemExit as exited:
            if exited.code != 0:
                raise
    data = load_prepared(data_dir)
    if len(data.rows("test")) < images:
        raise SystemExit(f"only {len(data.rows('test'))} test images; use a smaller --images")
    return data


def build_run(workdir: Path, data: PreparedData, images: int) -> Path:
    """A run folder with config.yaml and ``images`` stand-in samples (member images + noise, their labels)."""
    run = workdir / "run"
    shutil.rmtree(run, ignore_errors=True)
    facts = RunFacts(image_size=data.size, channels=1, member_images=0, member_patients=0, member_fingerprint="bench",
                     label_sets=0, num_processes=1, global_batch_size=1, total_steps=1, unet_parameters=0)
    save_run_config(run, TrainConfig(data=str(data.root), max_steps=1, conditional=True), facts)
    rows = np.sort(data.rows("member"))[:images]
    noisy = np.asarray(data.images[rows], dtype=float) + np.random.default_rng(0).normal(0, 3, (len(rows), data.size, data.size))
    samples = run / "samples"
    samples.mkdir()
    with (samples / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "index", "seed", "sampler", "steps", "label", "guidance"])
        for index, (row, image) in enumerate(zip(rows, np.clip(noisy, 0, 255).astype(np.uint8))):
            name = f"sample_{index:06d}.png"
            Image.fromarray(image).save(samples / name)
            writer.writerow([name, index, 0, "dpmsolver", 25, data.index.loc[row, "labels"], 2])
    return run


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cxrsynth-bench-evaluate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = build_data(workdir, args.images, args.size)
    run = build_run(workdir, data, args.images)
    print(f"data and run ready in {time.perf_counter() - started:.1f} s: {workdir}", flush=True)

    options = EvaluateOptions(inception_weights=args.inception_weights, num_samples=args.images)
    timings = []
    for label in ("classifier trained", "classifier cached"):
        began = time.perf_counter()
        report = evaluate_run(run, options)
        timings.append((label, time.perf_counter() - began, report))
        print(f"evaluate ({label}): {timings[-1][1]:.1f} s; groups: {report['seconds']}", flush=True)

    classifier, _ = domain_classifier_for_run(run, data)
    test_images = np.asarray(data.images[np.sort(data.rows("test"))[: args.images]])
    classifier.features(test_images[:256])  # warm-up
    began = time.perf_counter()
    classifier.features(test_images)
    features_per_second = len(test_images) / (time.perf_counter() - began)

    report = timings[0][2]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        "size": args.size,
        "n_real": report["n_real"],
        "n_synthetic": report["n_synthetic"],
        "domain_features_images_per_s": round(features_per_second, 1),
        "evaluate_seconds_classifier_trained": round(timings[0][1], 1),
        "evaluate_seconds_classifier_cached": round(timings[1][1], 1),
        "groups_seconds_first_run": report["seconds"],
        "inception": "skipped (no weights)" if report["fid"] is None else "included",
        "fd_domain": report["fd_domain"],
        "fd_domain_real_baseline": report["fd_domain_real_baseline"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
