"""DP-SGD training throughput vs non-DP training of the same config, in one run.

Ours-DP is :func:`cxrsynth.dp.training.private_optimisation_step` (Poisson-sampled records,
``torch.func`` per-record gradients, Opacus' DP optimizer: clip, noise, AdamW); the reference is
:func:`cxrsynth.train.loop.optimisation_step`, the non-DP step of ``cxrsynth train``. Same UNet
preset, resolution, batch (the DP logical batch = the non-DP batch, one physical batch per step)
and data. Rounds alternate the loops. Throughput counts training images per second; with noise
multiplicity K each DP record costs K forward/backward rows, so the script reports K = 1 (same
work per image as non-DP: the cost of DP itself) and the chosen K.

    python bench/dp.py                         # tiny UNet, 32², batch 32, CPU, K = 1 and 4
    python bench/dp.py --device cuda --preset small --resolution 64 --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from train import _synchronise, configure_device, write_bench_data  # bench/train.py, beside this script


class Loop:
    """One training step function on parts built as ``cxrsynth train`` builds them."""

    def __init__(self, name: str, config, data) -> None:
        from cxrsynth.train.components import make_accelerator
        from cxrsynth.train.loop import TRAIN_SPLIT, build_parts, optimisation_step

        self.name = name
        accelerator = make_accelerator(config, tempfile.mkdtemp())
        privacy = None
        self.step = optimisation_step
        if config.dp:
            from cxrsynth.dp.training import attach_ledger, private_optimisation_step, resolve_privacy

            privacy = resolve_privacy(config, data, TRAIN_SPLIT, 1)
            self.step = private_optimisation_step
        self.parts = build_parts(config, data, accelerator, None, privacy)
        if privacy is not None:
            attach_ledger(self.parts, config, privacy, planned_steps=1000, print_fn=lambda *_: None)
        self.parts.unet.train()

    def run(self, steps: int) -> int:
        """Train ``steps`` steps; returns the images trained on."""
        images = torch.zeros((), device=self.parts.accelerator.device)
        for _ in range(steps):
            images += self.step(self.parts)[1]
        return int(images.item())


def main(argv: list[str] | None = None) -> None:
    """Parse options, run the alternating measurement, print each round, the medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--multiplicity", type=int, default=4, help="noise multiplicity K of the second DP loop")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per loop per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per loop first")
    args = parser.parse_args(argv)

    configure_device(args.device, args.threads)

    from cxrsynth.config import TrainConfig
    from cxrsynth.data.prepared import load_prepared

    with tempfile.TemporaryDirectory() as tmp:
        count = max(512, 8 * args.batch_size)
        data = load_prepared(write_bench_data(Path(tmp) / "data", count, args.resolution))
        common = dict(data=str(data.root), preset=args.preset, max_steps=10**6, batch_size=args.batch_size,
                      warmup_steps=10)
        configs = {
            "non-DP": TrainConfig(**common),
            "DP K=1": TrainConfig(**common, dp=True, epsilon=10.0, noise_multiplicity=1),
            f"DP K={args.multiplicity}": TrainConfig(**common, dp=True, epsilon=10.0,
                                                     noise_multiplicity=args.multiplicity),
        }
        loops = [Loop(name, config, data) for name, config in configs.items()]
        for loop in loops:
            loop.run(args.warmup)
        _synchronise(args.device)
        rates: dict[str, list[float]] = {loop.name: [] for loop in loops}
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, preset "
              f"{args.preset}, {args.resolution}², batch {args.batch_size} (DP: expected logical batch, Poisson)")
        for round_index in range(args.rounds):
            order = loops if round_index % 2 == 0 else loops[::-1]
            for loop in order:
                started = time.perf_counter()
                images = loop.run(args.steps)
                _synchronise(args.device)
                rates[loop.name].append(images / (time.perf_counter() - started))
            print(f"round {round_index}: " + ", ".join(f"{name} {r[-1]:.1f} img/s" for name, r in rates.items()))
        medians = {name: statistics.median(values) for name, values in rates.items()}
        print("median img/s: " + ", ".join(f"{name} {value:.1f}" for name, value in medians.items()))
        reference = medians["non-DP"]
        for name, value in medians.items():
            if name != "non-DP":
                print(f"ratio {name} / non-DP: {value / reference:.2f}" + ("  (goal >= 0.5)" if name == "DP K=1" else
                      f"  (each image costs {args.multiplicity} rows)"))


if __name__ == "__main__":
    main()
