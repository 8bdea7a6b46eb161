"""DP-SGD training throughput vs non-DP training of the same config, in one run, with each speed candidate.

Ours-DP is the DP-SGD plan's step (:meth:`cxrsynth.dp.training.PrivacySettings.optimisation_step`:
Poisson-sampled records, ``torch.func`` per-record gradients, Opacus' DP optimizer: clip, noise,
AdamW), built through the loop's privacy interface as ``cxrsynth train --dp`` builds it; the
reference is :func:`cxrsynth.train.loop.optimisation_step`, the non-DP step. Same UNet preset,
resolution, batch (the DP expected logical batch = the non-DP batch) and data. Rounds alternate the
loops (and their order). Throughput counts training images per second; with noise multiplicity K
each DP record costs K forward/backward rows, so every variant runs at K = 1 (same work per image
as non-DP: the cost of DP itself) and at the chosen K.

Speed candidates, each measured on and off (exactness: tests/dp/test_per_record.py, test_clipping.py):

- ``fused-clip``: clip and sum all records' gradients in one R×P matrix (:mod:`cxrsynth.dp.clipping`);
- ``physical-2x``: physical batch = 2 × the logical batch, so a Poisson step (which exceeds its
  expectation half the time) is one per-record-gradient call instead of two;
- ``compile`` (``--compile``): ``torch.compile`` of the per-record gradient function on batches
  padded to the physical size (CUDA graphs on a GPU). Its first step compiles; that time is
  printed separately and kept out of the rates;
- ``all``: every candidate above at once.

    python bench/dp.py --threads 1                   # tiny UNet, 32², batch 32, CPU, K = 1 and 4
    python bench/dp.py --device cuda --preset small --resolution 64 --batch-size 64 --compile
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from train import _synchronise, configure_device, write_bench_data  # bench/train.py, beside this script

CANDIDATES = ("baseline", "fused-clip", "physical-2x", "compile", "all")


class Loop:
    """One training step function on parts built as ``cxrsynth train`` builds them."""

    def __init__(self, name: str, config, data, fused_clip: bool = False, compile_gradients: bool = False) -> None:
        from cxrsynth.train.components import make_accelerator
        from cxrsynth.train.loop import TRAIN_SPLIT, build_parts, optimisation_step
        from cxrsynth.train.privacy import privacy_plugin

        self.name = name
        accelerator = make_accelerator(config, tempfile.mkdtemp())
        plan = None
        self.step = optimisation_step
        if config.dp:
            plan = privacy_plugin()(config, data, TRAIN_SPLIT, 1)
            plan = dataclasses.replace(plan, fused_clip=fused_clip, compile_gradients=compile_gradients)
            self.step = plan.optimisation_step
        self.parts = build_parts(config, data, accelerator, None, plan)
        if plan is not None:
            plan.attach_ledger(self.parts, config, planned_steps=1000, print_fn=lambda *_: None)
        self.parts.unet.train()

    def run(self, steps: int) -> int:
        """Train ``steps`` steps; returns the images trained on."""
        images = torch.zeros((), device=self.parts.accelerator.device)
        for _ in range(steps):
            images += self.step(self.parts)[1]
        return int(images.item())


def _dp_loops(common: dict, data, multiplicities: list[int], candidates: list[str]) -> list[Loop]:
    """One DP loop per (K, candidate)."""
    from cxrsynth.config import TrainConfig

    loops = []
    for draws in multiplicities:
        for candidate in candidates:
            everything = candidate == "all"
            physical = 2 * common["batch_size"] if everything or candidate == "physical-2x" else None
            config = TrainConfig(**common, dp=True, epsilon=10.0, noise_multiplicity=draws,
                                 physical_batch_size=physical)
            loops.append(Loop(f"DP K={draws} {candidate}", config, data,
                              fused_clip=everything or candidate == "fused-clip",
                              compile_gradients=candidate == "compile" or (everything and "compile" in candidates)))
    return loops


def main(argv: list[str] | None = None) -> None:
    """Parse options, run the alternating measurement, print each round, the medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--multiplicity", type=int, default=4, help="noise multiplicity K of the second DP set")
    parser.add_argument("--compile", action="store_true",
                        help="also measure torch.compile of the per-record gradients (minutes to compile on a CPU)")
    parser.add_argument("--candidates", default=",".join(c for c in CANDIDATES if c != "compile"),
                        help=f"comma-separated, of {', '.join(CANDIDATES)} (--compile adds compile)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per loop per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per loop first (compilation among them)")
    args = parser.parse_args(argv)
    candidates = [c for c in args.candidates.split(",") if c]
    unknown = sorted(set(candidates) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}: choose from {', '.join(CANDIDATES)}")
    if args.compile and "compile" not in candidates:
        candidates.insert(-1 if "all" in candidates else len(candidates), "compile")

    configure_device(args.device, args.threads)

    from cxrsynth.config import TrainConfig
    from cxrsynth.data.prepared import load_prepared

    with tempfile.TemporaryDirectory() as tmp:
        count = max(512, 8 * args.batch_size)
        data = load_prepared(write_bench_data(Path(tmp) / "data", count, args.resolution))
        common = dict(data=str(data.root), preset=args.preset, max_steps=10**6, batch_size=args.batch_size,
                      warmup_steps=10)
        multiplicities = sorted({1, args.multiplicity})
        loops = [Loop("non-DP", TrainConfig(**common), data), *_dp_loops(common, data, multiplicities, candidates)]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, preset "
              f"{args.preset}, {args.resolution}², batch {args.batch_size} (DP: expected logical batch, Poisson)")
        for loop in loops:
            started = time.perf_counter()
            loop.run(args.warmup)
            _synchronise(args.device)
            print(f"warm-up {loop.name}: {args.warmup} steps in {time.perf_counter() - started:.1f} s"
                  + (" (includes compiling)" if "compile" in loop.name or "all" in loop.name and args.compile else ""))
        rates: dict[str, list[float]] = {loop.name: [] for loop in loops}
        for round_index in range(args.rounds):
            order = loops if round_index % 2 == 0 else loops[::-1]
            for loop in order:
                started = time.perf_counter()
                images = loop.run(args.steps)
                _synchronise(args.device)
                rates[loop.name].append(images / (time.perf_counter() - started))
            print(f"round {round_index}: " + ", ".join(f"{name} {r[-1]:.1f}" for name, r in rates.items()) + " img/s")
        medians = {name: statistics.median(values) for name, values in rates.items()}
        reference = medians["non-DP"]
        print(f"median non-DP: {reference:.1f} img/s")
        for name, value in medians.items():
            if name != "non-DP":
                goal = "0.5" if name.startswith("DP K=1 ") else "0.4"
                print(f"{name:<28} {value:8.1f} img/s   ratio to non-DP {value / reference:.2f}  (goal >= {goal})")


if __name__ == "__main__":
    main()
