"""Benchmark of `cxrsynth audit`: seconds per 1,000 audited images for every attack, and its NFE.

Usage::

    .venv/bin/python bench/audit.py [--images 64] [--synthetic 1000] [--presets tiny:32,small:64] [--device cpu] [--threads N]

For each UNet preset and resolution, every white-box attack scores ``--images`` random audited
images (the cost of an attack does not depend on what the weights learned, so an untrained UNet is
used) and the time is scaled to 1,000 images; the other attacks score 1,000 images directly. The NFE column is the forward passes per image the
audit counted. Black-box attacks compare against ``--synthetic`` synthetic images; ``nn_domain``
uses an untrained domain classifier of the real architecture (same cost as a trained one). The
last rows time the memorization test of ``--synthetic`` samples against ``--synthetic`` members and
the training of the patient-verification network (default budget) at the preset's resolution.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cxrsynth.audit.memorization import flag_memorized
from cxrsynth.audit.reidentification import DEFAULT_STEPS, MAX_INPUT_SIZE, VerifierConfig, train_patient_verifier
from cxrsynth.audit.registry import NEEDS_MODEL, AttackContext, AttackSettings, registered_attacks
from cxrsynth.audit.whitebox import WhiteBoxModel
from cxrsynth.evaluate.domain import ClassifierConfig, CompactCxrNet, DomainClassifier
from cxrsynth.model.presets import build_unet, get_preset


def random_images(count: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size), dtype=np.uint8)


def bench_preset(preset: str, size: int, images: int, synthetic: int, device: torch.device) -> list[tuple[str, float, float]]:
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = build_unet(get_preset(preset), size).to(device).eval().requires_grad_(False)
    model = WhiteBoxModel(unet, DDPMScheduler(num_train_timesteps=1000), seed=0)
    classifier = DomainClassifier(CompactCxrNet((16, 32, 64, 128), 4).to(device).eval(), ClassifierConfig(size, task="rotation"))
    released = random_images(synthetic, size, 2)
    results = []
    for spec in registered_attacks():
        # White-box attacks cost the same per image at any N: time `images` and scale. The others have
        # per-call fixed costs (features of the released images, fitting), so they score 1,000 directly.
        count = images if NEEDS_MODEL in spec.needs else 1000
        rows = np.arange(0, count, 2)
        context = AttackContext(
            images=random_images(count, size, 1), calibration_rows=rows,
            calibration_is_member=np.arange(len(rows)) % 2 == 0, settings=AttackSettings(batch_size=64),
            model=model, synthetic=released, features=classifier.features,
        )
        spec.score(AttackContext(**{**vars(context), "images": context.images[:4], "calibration_rows": rows[:2],
                                    "calibration_is_member": np.array([True, False])}))  # warm-up: imports, allocations
        before = model.image_forwards
        started = time.perf_counter()
        spec.score(context)
        seconds = time.perf_counter() - started
        results.append((spec.name, (model.image_forwards - before) / count, seconds / count * 1000))
    started = time.perf_counter()
    flag_memorized(random_images(synthetic, size, 3), random_images(synthetic, size, 4))
    results.append((f"memorization ({synthetic} vs {synthetic})", 0.0, time.perf_counter() - started))
    config = VerifierConfig(input_size=min(MAX_INPUT_SIZE, size), steps=DEFAULT_STEPS)
    started = time.perf_counter()
    train_patient_verifier(random_images(120, size, 5), np.arange(120) // 3, config, device=device)
    results.append((f"re-identification net ({config.steps} steps)", 0.0, time.perf_counter() - started))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="audited images timed per attack (scaled to 1,000)")
    parser.add_argument("--synthetic", type=int, default=1000, help="synthetic images for nn, nn_domain, memorization")
    parser.add_argument("--presets", default="tiny:32,small:64", help="preset:size pairs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch threads {torch.get_num_threads()}, device {device}, {args.images} images per attack")
    for item in args.presets.split(","):
        preset, size = item.split(":")
        print(f"\n{preset} UNet at {size}²")
        print(f"{'attack':<32} {'NFE/image':>10} {'s per 1,000 images':>20}")
        for name, nfe, seconds in bench_preset(preset, int(size), args.images, args.synthetic, device):
            if name.startswith(("memorization", "re-identification")):
                print(f"{name:<32} {'':>10} {seconds:>12.1f} s in all")
            else:
                print(f"{name:<32} {nfe:>10g} {seconds:>20.1f}")


if __name__ == "__main__":
    main()
