"""Benchmark: how fast the built-in phantom dataset is written (not a test).

Generates the default dataset (400 patients x 3 studies on average, about 1,200 images) at 128²
into a temporary folder and prints the time and images per second. The goal from the issue is
"well under a minute" for 1,200 images at 128².

Run: ``.venv/bin/python bench/phantom.py [--patients N] [--size S]``
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from cxrsynth.data.phantom import generate_phantom


def main() -> None:
    """Parse options, generate once, print seconds and images/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=400, help="number of patients (default 400)")
    parser.add_argument("--studies-per-patient", type=float, default=3.0, help="mean studies per patient (default 3)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxrsynth-bench-phantom-") as tmp:
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = generate_phantom(
            Path(tmp) / "phantom",
            patients=args.patients,
            studies_per_patient=args.studies_per_patient,
            size=args.size,
            seed=args.seed,
            prevalence=None,
        )
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    print(f"phantom: {summary.n_images} images of {args.size}x{args.size} from {args.patients} patients")
    print(f"  {seconds:.1f} s, {summary.n_images / seconds:.0f} images/s "
          f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.1f})")
    # CPU time does not grow when other processes share the cores: compare it across runs.
    print(f"  process CPU time {cpu_seconds:.1f} s ({summary.n_images / cpu_seconds:.0f} images per CPU-second)")
    print(f"  goal: 1,200 images at 128² well under 60 s -> {'met' if seconds < 60 else 'NOT met'} "
          f"(scaled to 1,200 images: {seconds * 1200 / summary.n_images:.1f} s)")


if __name__ == "__main__":
    main()
