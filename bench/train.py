"""Training throughput: cxrsynth's training step vs a plain diffusers training loop, in one run.

The baseline is the loop of diffusers' ``examples/unconditional_image_generation/
train_unconditional.py``: a DataLoader over a map-style dataset, AdamW, ``DDPMScheduler.add_noise``,
``F.mse_loss``, ``accelerator.backward``, gradient clipping, optimizer and LR-scheduler steps, an EMA
step, and ``loss.item()`` for the progress bar. Ours is :func:`cxrsynth.train.loop.optimisation_step`
on the parts :func:`cxrsynth.train.loop.build_parts` builds for ``cxrsynth train``. Both use the
identical UNet preset, batch size, mixed precision and prepared data (one temporary folder).

Rounds alternate between the two loops (and which goes first), so machine noise hits both alike;
the script prints each round, the median images/s of each, and their ratio (goal: ≥ 1.0 on CPU).
With ``--mfu`` it also prints each loop's model FLOP utilisation: the FLOPs of one training step
(counted once, before the timed rounds) times the median images/s, over a matmul peak measured in
the same process afterwards, in the training's dtype (bench/mfu.py).

    python bench/train.py                        # tiny UNet, 32², batch 32, CPU
    python bench/train.py --device cuda --resolution 128 --preset nih128 --batch-size 64 \
        --mixed-precision bf16 --compile --mfu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def write_bench_data(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """A prepared-data folder of ``count`` random member images (content does not affect speed)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "images.npy", rng.integers(0, 256, size=(count, size, size), dtype=np.uint8))
    pd.DataFrame({
        "row": range(count),
        "image_id": [f"img{i:06d}.png" for i in range(count)],
        "patient_id": [f"p{i:06d}" for i in range(count)],
        "split": "member",
        "labels": "No Finding",
    }).to_csv(root / "index.csv", index=False)
    meta = {"source": "bench", "format": "synthetic", "size": size, "labels": [], "counts": {"member": count}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


class OurLoop:
    """cxrsynth's training step, built exactly as ``cxrsynth train`` builds it."""

    name = "cxrsynth"

    def __init__(self, config, data) -> None:
        from cxrsynth.train.components import make_accelerator
        from cxrsynth.train.loop import build_parts

        self.parts = build_parts(config, data, make_accelerator(config, tempfile.mkdtemp()), None)
        self.parts.unet.train()

    def run(self, steps: int) -> None:
        from cxrsynth.train.loop import optimisation_step

        total = torch.zeros((), device=self.parts.accelerator.device)
        for _ in range(steps):
            total += optimisation_step(self.parts)[0]
        total.item()  # our loop reads the loss once per log window


class DiffusersExampleLoop:
    """The training loop of diffusers' unconditional example, on the same data and UNet."""

    name = "diffusers example"

    def __init__(self, config, data) -> None:
        from accelerate import Accelerator
        from diffusers import UNet2DModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel
        from torch.utils.data import DataLoader

        from cxrsynth.data.dataset import PreparedImageDataset
        from cxrsynth.model.presets import get_preset
        from cxrsynth.train.components import build_noise_scheduler

        torch.manual_seed(config.seed)
        self.config = config
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision)
        model = UNet2DModel(**get_preset(config.preset).unet_kwargs(data.size))
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                      weight_decay=config.weight_decay, eps=config.adam_epsilon)
        loader = DataLoader(PreparedImageDataset(data), batch_size=config.batch_size, shuffle=True, drop_last=True)
        lr_scheduler = get_scheduler("constant_with_warmup", optimizer=optimizer, num_warmup_steps=config.warmup_steps)
        self.model, self.optimizer, self.loader, self.lr_scheduler = self.accelerator.prepare(
            model, optimizer, loader, lr_scheduler)
        self.ema = EMAModel(self.model.parameters(), decay=config.ema_decay, use_ema_warmup=True, inv_gamma=1.0,
                            power=config.ema_power, model_cls=UNet2DModel, model_config=model.config)
        self.ema.to(self.accelerator.device)
        self.noise_scheduler = build_noise_scheduler(config)
        self.batches = iter(self.loader)
        self.model.train()

    def _next(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self, steps: int) -> None:
        accelerator, model = self.accelerator, self.model
        for _ in range(steps):
            clean_images = self._next()["image"].to(accelerator.device)
            noise = torch.randn(clean_images.shape, device=clean_images.device)
            bsz = clean_images.shape[0]
            timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,),
                                      device=clean_images.device).long()
            noisy_images = self.noise_scheduler.add_noise(clean_images, noise, timesteps)
            with accelerator.accumulate(model):
                model_output = model(noisy_images, timesteps).sample
                loss = F.mse_loss(model_output.float(), noise.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad()
            if accelerator.sync_gradients:
                self.ema.step(model.parameters())
            loss.detach().item()


def configure_device(device: str, threads: int) -> None:
    """Set torch's CPU threads (0: leave torch's default) and make Accelerate use ``device``; exits without CUDA."""
    if threads:
        torch.set_num_threads(threads)
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    elif not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    """Parse options, run the alternating measurement, print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (Accelerate dynamo, inductor)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per loop per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loop first")
    parser.add_argument("--mfu", action="store_true",
                        help="also print MFU against a matmul peak measured in this run (bench/mfu.py)")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the square matmul for --mfu's peak (default: 1024 on CPU, 4096 on CUDA)")
    args = parser.parse_args(argv)

    configure_device(args.device, args.threads)
    if args.compile:
        os.environ["ACCELERATE_DYNAMO_BACKEND"] = "INDUCTOR"

    from cxrsynth.config import TrainConfig
    from cxrsynth.data.prepared import load_prepared
    from mfu import format_mfu, matmul_peak_flops, peak_precision, training_flops_per_image  # bench/mfu.py, beside this script

    with tempfile.TemporaryDirectory() as tmp:
        count = max(512, 8 * args.batch_size)
        data = load_prepared(write_bench_data(Path(tmp) / "data", count, args.resolution))
        config = TrainConfig(data=str(data.root), preset=args.preset, max_steps=10**6, batch_size=args.batch_size,
                             mixed_precision=args.mixed_precision, warmup_steps=10)
        loops = [OurLoop(config, data), DiffusersExampleLoop(config, data)]
        for loop in loops:
            loop.run(args.warmup)
        flops_per_image = training_flops_per_image(loops[0].parts, args.batch_size) if args.mfu else 0.0
        _synchronise(args.device)
        rates: dict[str, list[float]] = {loop.name: [] for loop in loops}
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
              f"preset {args.preset}, {args.resolution}², batch {args.batch_size}, mixed precision "
              f"{args.mixed_precision}, compile {args.compile}")
        for round_index in range(args.rounds):
            order = loops if round_index % 2 == 0 else loops[::-1]
            for loop in order:
                started = time.perf_counter()
                loop.run(args.steps)
                _synchronise(args.device)
                rates[loop.name].append(args.steps * args.batch_size / (time.perf_counter() - started))
            print(f"round {round_index}: " + ", ".join(f"{name} {r[-1]:.1f} img/s" for name, r in rates.items()))
        ours, theirs = (statistics.median(rates[loop.name]) for loop in loops)
        print(f"median img/s: cxrsynth {ours:.1f}, diffusers example {theirs:.1f}")
        print(f"ratio cxrsynth / diffusers example: {ours / theirs:.2f}  (goal >= 1.0)")
        if args.mfu:
            dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32
            peak = matmul_peak_flops(args.device, dtype, args.matmul_size)
            print(f"matmul peak: {peak / 1e9:.2f} GFLOP/s ({peak_precision(args.device, dtype)}, measured in this run)")
            for name, rate in (("cxrsynth", ours), ("diffusers example", theirs)):
                print(format_mfu(name, flops_per_image, rate, peak))


if __name__ == "__main__":
    main()
