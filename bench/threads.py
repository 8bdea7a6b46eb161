"""Training throughput at 1 and 2 torch threads, alone and beside a competing process, in one run.

Each measurement is a fresh process that trains the way ``cxrsynth train`` does
(:func:`cxrsynth.train.loop.build_parts` + ``optimisation_step``, via bench/train.py's ``OurLoop``)
with its threads set by ``cxrsynth.cli.common.torch_threads``, the helper behind ``--threads``:
a fixed workload (tiny UNet, 32², batch 32, 3 untimed then 30 timed steps on CPU). "Contended" runs
start a second process first, doing the same work at 1 thread without end, and stop it afterwards.
The script prints img/s per case and the ratios that choose ``--threads``'s default, and whether the
weights after the same steps are identical at 1 and 2 threads.

    python bench/threads.py                 # about 3-5 minutes on 2 busy cores
    python bench/threads.py --threads 1,2,4 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _workload(threads: int, steps: int, warmup: int, batch_size: int, resolution: int, preset: str,
              forever: bool) -> None:
    """Train ``steps`` timed steps at ``threads`` threads and print one JSON line (or, ``forever``, never stop)."""
    sys.path.insert(0, str(HERE))
    from train import OurLoop, configure_device, write_bench_data  # bench/train.py, beside this script

    configure_device("cpu", 0)
    import torch

    from cxrsynth.cli.common import torch_threads
    from cxrsynth.config import TrainConfig
    from cxrsynth.data.prepared import load_prepared

    with torch_threads(threads) as count, tempfile.TemporaryDirectory() as tmp:
        data = load_prepared(write_bench_data(Path(tmp) / "data", max(512, 8 * batch_size), resolution))
        config = TrainConfig(data=str(data.root), preset=preset, max_steps=10**6, batch_size=batch_size,
                             warmup_steps=10)
        loop = OurLoop(config, data)
        loop.run(warmup)
        if forever:
            print("ready", flush=True)
            while True:
                loop.run(1)
        started = time.perf_counter()
        loop.run(steps)
        seconds = time.perf_counter() - started
        weights = torch.cat([p.detach().flatten() for p in loop.parts.unet.parameters()]).double()
        print(json.dumps({"threads": count, "torch_threads": torch.get_num_threads(), "seconds": seconds,
                          "img_per_s": steps * batch_size / seconds, "weights": weights.tolist()[:4096]}),
              flush=True)


def _command(args: argparse.Namespace, threads: int, forever: bool = False) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--worker-threads", str(threads),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
               "--resolution", str(args.resolution), "--preset", args.preset]
    return command + (["--forever"] if forever else [])


def _environment() -> dict[str, str]:
    # --threads alone must decide: an inherited OMP_NUM_THREADS would size OpenMP's pool first.
    return {name: value for name, value in os.environ.items() if name not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def _measure(args: argparse.Namespace, threads: int, contended: bool) -> dict:
    """One fresh measuring process; with ``contended``, a 1-thread competitor runs beside it throughout."""
    competitor = None
    if contended:
        competitor = subprocess.Popen(_command(args, 1, forever=True), stdout=subprocess.PIPE, text=True,
                                      env=_environment())
        assert competitor.stdout is not None
        if competitor.stdout.readline().strip() != "ready":
            raise RuntimeError("the competing process did not start")
    try:
        done = subprocess.run(_command(args, threads), capture_output=True, text=True, env=_environment(), check=True)
    finally:
        if competitor is not None:
            competitor.terminate()
            competitor.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Parse options, measure every (threads, alone/contended) case, print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts to compare")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _workload(args.worker_threads, args.steps, args.warmup, args.batch_size, args.resolution, args.preset,
                  args.forever)
        return

    sys.path.insert(0, str(HERE.parent / "src"))
    from cxrsynth.cli.common import available_cores, default_threads

    counts = [int(item) for item in args.threads.split(",")]
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.machine()}, {available_cores()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} before starting; preset {args.preset}, "
          f"{args.resolution}², batch {args.batch_size}, {args.steps} timed steps; default --threads here: "
          f"{default_threads(environ=_environment())}")
    rates: dict[tuple[int, bool], float] = {}
    weights: dict[int, list[float]] = {}
    for contended in (False, True):
        for threads in counts:
            result = _measure(args, threads, contended)
            rates[threads, contended] = result["img_per_s"]
            weights.setdefault(threads, result["weights"])
            print(f"{threads} thread(s), {'beside a 1-thread competitor' if contended else 'alone':<28} "
                  f"{result['img_per_s']:7.1f} img/s  ({result['seconds']:.1f} s)", flush=True)
    base = counts[0]
    for threads in counts[1:]:
        print(f"{threads} vs {base} thread(s): alone {rates[threads, False] / rates[base, False]:.2f}x, "
              f"contended {rates[threads, True] / rates[base, True]:.2f}x")
    for threads in counts:
        print(f"{threads} thread(s): contended / alone {rates[threads, True] / rates[threads, False]:.2f}")
    for threads in counts[1:]:
        difference = max(abs(a - b) for a, b in zip(weights[base], weights[threads]))
        print(f"weights after the same steps, {base} vs {threads} thread(s): max |difference| {difference:.3g} "
              f"(first 4096 parameters)")


if __name__ == "__main__":
    main()
