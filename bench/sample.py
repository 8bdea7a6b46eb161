"""Benchmark: seconds per image of DDPM-1000, DDIM-50 and DPM-Solver++-25 on one model, as ratios.

Sampling speed depends on the architecture, not on the weights, so without ``--run`` a randomly
initialised UNet of ``--preset`` (default ``tiny``) at ``--resolution`` is used. All samplers run
through :func:`cxrsynth.model.samplers.sample_batch` (the code ``cxrsynth sample`` runs) with the
same batch size; each is warmed up first (one short call, which also triggers ``--compile``), then
timed over whole batches until ``--min-seconds`` have passed (DDPM-1000: one batch only, to keep
the CPU cost small).

    .venv/bin/python bench/sample.py                      # CPU, tiny at 32², batch 4
    .venv/bin/python bench/sample.py --device cuda --resolution 64 --batch-size 64 --mixed-precision bf16 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from cxrsynth.model.presets import build_unet, get_preset
from cxrsynth.model.samplers import sample_batch
from cxrsynth.sample import load_sampling_model

CASES: tuple[tuple[str, str, int], ...] = (
    ("DDPM-1000", "ddpm", 1000),
    ("DDIM-50", "ddim", 50),
    ("DPM-Solver++-25", "dpmsolver", 25),
)


@dataclass
class Timing:
    """One sampler's measurement."""

    name: str
    sampler: str
    steps: int
    images: int
    seconds: float

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="trained run folder to load (default: random-init UNet of --preset)")
    parser.add_argument("--preset", default="tiny", help="UNet preset when --run is not given (default tiny)")
    parser.add_argument("--resolution", type=int, default=32, help="image side when --run is not given (default 32)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per sampler call (default 4)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                        help="run the UNet under bf16 autocast (scheduler math stays float32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (compile time is excluded)")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="time the fast samplers over whole batches until this long (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser.parse_args()


def load_model(args: argparse.Namespace, device: torch.device) -> tuple[UNet2DModel, DDPMScheduler, str]:
    """The UNet (on ``device``) and training scheduler to benchmark, with a description."""
    if args.run is not None:
        model = load_sampling_model(args.run, device)
        if model.vocabulary is not None:
            raise SystemExit("bench/sample.py times unconditional sampling; pass an unconditional run")
        return model.unet, model.scheduler, f"run {args.run}"
    torch.manual_seed(0)
    unet = build_unet(get_preset(args.preset), args.resolution).to(device).eval().requires_grad_(False)
    return unet, DDPMScheduler(num_train_timesteps=1000), f"random-init preset {args.preset}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(
    unet: UNet2DModel, scheduler: DDPMScheduler, case: tuple[str, str, int], args: argparse.Namespace,
    device: torch.device,
) -> Timing:
    """Warm up, then time whole batches of one sampler."""
    name, sampler, steps = case
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.mixed_precision == "bf16"
                else contextlib.nullcontext())
    batch = list(range(args.batch_size))
    with autocast:
        sample_batch(unet, scheduler, sampler, min(steps, 3), batch, seed=1)
        synchronize(device)
        images, start, seed = 0, time.perf_counter(), 2
        while True:
            sample_batch(unet, scheduler, sampler, steps, batch, seed=seed)
            synchronize(device)
            images, seed = images + len(batch), seed + 1
            elapsed = time.perf_counter() - start
            if sampler == "ddpm" or elapsed >= args.min_seconds:
                return Timing(name, sampler, steps, images, elapsed)


def main() -> None:
    args = parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    unet, scheduler, description = load_model(args, device)
    if args.compile:
        unet.compile()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"# bench/sample.py  {datetime.date.today()}  {card}  {platform.machine()}")
    print(f"# model: {description}, {params:.2f}M params, {unet.config.sample_size}² images; batch {args.batch_size}; "
          f"precision {args.mixed_precision}; compile {args.compile}; torch {torch.__version__}")

    timings = [time_case(unet, scheduler, case, args, device) for case in CASES]
    reference = timings[0].seconds_per_image
    print(f"{'sampler':<17}{'steps':>6}{'images':>8}{'s/img':>10}{'img/s':>9}{'s/img vs DDPM-1000':>20}{'speed-up':>10}")
    for timing in timings:
        ratio = timing.seconds_per_image / reference
        print(f"{timing.name:<17}{timing.steps:>6}{timing.images:>8}{timing.seconds_per_image:>10.4f}"
              f"{1 / timing.seconds_per_image:>9.2f}{ratio:>20.4f}{1 / ratio:>9.1f}x")
    if args.json is not None:
        record = {
            "date": str(datetime.date.today()), "device": card, "model": description, "params_millions": params,
            "resolution": unet.config.sample_size, "batch_size": args.batch_size,
            "mixed_precision": args.mixed_precision, "compile": args.compile,
            "results": [{**asdict(t), "seconds_per_image": t.seconds_per_image,
                         "ratio_to_ddpm1000": t.seconds_per_image / reference} for t in timings],
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
