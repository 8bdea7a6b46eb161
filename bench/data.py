"""Benchmark of the data stage (a script, not a test): ``python bench/data.py [--quick]``.

1. Epoch throughput: iterating the memory-mapped ``PreparedImageDataset`` versus a dataset that
   decodes and resizes the source PNGs (1024² → 128²) on every access, both through the same
   ``DataLoader``; printed as a ratio measured in this one run (goal ≥ 20×).
2. ``prepare``'s peak resident memory on 5,000 source images versus 500, to show it is flat in the
   number of images: prepare runs in a child process; the bench samples the summed RSS of that
   process and its decoding workers, and the child reports its own high-water mark (VmHWM) and its
   workers' ``ru_maxrss``.
   To keep this part to a few minutes the sources are 600×520 PNGs (hard links to a few hundred
   distinct files) prepared at 512², so ``images.npy`` is 1.3 GB for 5,000 images: if written pages
   stayed resident, peak memory would grow by that much.

Generated data lives under ``/tmp/cxrsynth-bench-data`` (removed at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

WORK = Path("/tmp/cxrsynth-bench-data")
SOURCE_SIDE = 1024
PREPARED_SIDE = 128
MEMORY_SOURCE_SHAPE = (600, 520)  # height, width: centre crop to 520², Lanczos to 512²
MEMORY_PREPARED_SIDE = 512


# ---------------------------------------------------------------- source images


def base_radiographs(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` distinct 128² chest-like images: the phantom when present, else smooth blobs."""
    try:
        from cxrsynth.data.phantom import generate_phantom
    except ImportError:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:128, 0:128] / 128
        images = []
        for _ in range(count):
            blobs = sum(
                rng.uniform(0.3, 1.0) * np.exp(-((yy - rng.uniform(0.2, 0.8)) ** 2 + (xx - rng.uniform(0.2, 0.8)) ** 2) / 0.02)
                for _ in range(4)
            )
            images.append((blobs / blobs.max() * 255).astype(np.uint8))
        return images
    folder = WORK / "phantom128"
    if not folder.exists():
        generate_phantom(folder, patients=count, studies_per_patient=1.0, size=128, seed=seed)
    return [np.asarray(Image.open(path).convert("L")) for path in sorted((folder / "images").glob("*.png"))[:count]]


def write_sources(bases: list[np.ndarray], folder: Path, shape: tuple[int, int], seed: int) -> list[Path]:
    """Enlarge each base image to ``shape`` (Lanczos) with film-like noise, as 8-bit PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, base in enumerate(bases):
        enlarged = np.asarray(Image.fromarray(base).resize((shape[1], shape[0]), Image.Resampling.LANCZOS), dtype=np.float32)
        noisy = np.clip(enlarged + rng.normal(0.0, 2.0, size=shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.png"
        Image.fromarray(noisy).save(path)
        paths.append(path)
    return paths


def link_copies(distinct: list[Path], folder: Path, count: int) -> None:
    """``count`` files in ``folder``, hard links cycling through ``distinct`` (disk stays small)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        os.link(distinct[i % len(distinct)], folder / f"img_{i:05d}.png")


# ---------------------------------------------------------------- part 1: epoch throughput


class DecodeEachEpochDataset:
    """The baseline: decode the PNG, centre-crop and resize it on every access (prepare's own code)."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = [str(p) for p in paths], size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int):
        from cxrsynth.data.dataset import to_model_range
        from cxrsynth.data.sources.imaging import crop_and_resize, decode_image_file

        return {"image": to_model_range(crop_and_resize(decode_image_file(self.paths[item]), self.size))[None]}


def images_per_second(dataset, epochs: int) -> float:
    """Images per second over ``epochs`` passes of a ``DataLoader`` (batch 32, no worker processes)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=0)
    started, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - started)


def throughput(count: int) -> dict:
    from cxrsynth.data.dataset import PreparedImageDataset
    from cxrsynth.data.prepare import prepare_dataset

    sources = write_sources(base_radiographs(count), WORK / "sources1024", (SOURCE_SIDE, SOURCE_SIDE), seed=1)
    mean_kb = np.mean([p.stat().st_size for p in sources]) / 1024
    prepared = prepare_dataset(WORK / "sources1024", WORK / "prepared128", "folder", PREPARED_SIDE, workers=2,
                               test_fraction=0.0, holdout_fraction=0.0, progress=False)  # fmt: skip
    decoding = images_per_second(DecodeEachEpochDataset(sources, PREPARED_SIDE), epochs=1)
    mapped = images_per_second(PreparedImageDataset(prepared, split="member"), epochs=20)
    return {"images": count, "source_png_kb": round(mean_kb), "decode_img_s": decoding, "memmap_img_s": mapped}


# ---------------------------------------------------------------- part 2: prepare's peak memory


def _tree_rss(process) -> int:
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure_prepare(src: Path, out: Path, workers: int) -> dict:
    """Run prepare in a child process; peak summed RSS of it and its workers, and their ru_maxrss."""
    import psutil

    command = [sys.executable, __file__, "_prepare", str(src), str(out), str(workers)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watched, peak, started = psutil.Process(child.pid), 0, time.perf_counter()
    while child.poll() is None:
        try:
            peak = max(peak, _tree_rss(watched))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    report = json.loads(child.stdout.read().strip().splitlines()[-1])
    if child.returncode != 0:
        raise SystemExit(f"prepare failed with status {child.returncode}")
    return {**report, "tree_rss_peak_mb": peak / 2**20, "wall_s": time.perf_counter() - started}


def _prepare_child(src: str, out: str, workers: str) -> None:
    from cxrsynth.data.prepare import prepare_dataset

    prepare_dataset(src, out, "folder", MEMORY_PREPARED_SIDE, workers=int(workers), progress=False)
    # VmHWM, not RUSAGE_SELF: Linux carries ru_maxrss over exec, so it would include the bench's own size
    status = Path("/proc/self/status").read_text()
    own = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    workers_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    size = (Path(out) / "images.npy").stat().st_size / 2**20
    print(json.dumps({"self_vmhwm_mb": own, "worker_maxrss_mb": workers_max, "images_npy_mb": size}))


def memory(counts: tuple[int, ...], distinct: int, workers: int) -> list[dict]:
    bases = base_radiographs(distinct, seed=2)
    pool = write_sources(bases, WORK / "distinct", MEMORY_SOURCE_SHAPE, seed=3)
    results = []
    for count in counts:
        src, out = WORK / f"memory_src_{count}", WORK / f"memory_out_{count}"
        link_copies(pool, src, count)
        results.append({"images": count, **measure_prepare(src, out, workers)})
        shutil.rmtree(out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run, numbers not meaningful)")
    parser.add_argument("--keep", action="store_true", help=f"keep the generated data under {WORK}")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    try:
        print(f"cxrsynth data bench — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores")
        part1 = throughput(24 if args.quick else 96)
        ratio = part1["memmap_img_s"] / part1["decode_img_s"]
        print(
            f"\n1. epoch throughput, {part1['images']} source PNGs {SOURCE_SIDE}² (mean {part1['source_png_kb']} KB) → "
            f"{PREPARED_SIDE}², DataLoader batch 32, 0 workers:\n"
            f"   decode + crop + resize each epoch: {part1['decode_img_s']:8.1f} img/s\n"
            f"   memory-mapped PreparedImageDataset: {part1['memmap_img_s']:8.1f} img/s\n"
            f"   ratio: {ratio:.0f}× (goal ≥ 20×)"
        )
        counts = (50, 500) if args.quick else (500, 5000)
        rows = memory(counts, distinct=24 if args.quick else 200, workers=2)
        print(
            f"\n2. prepare peak memory, sources {MEMORY_SOURCE_SHAPE[1]}×{MEMORY_SOURCE_SHAPE[0]} PNG (smaller than 1024² "
            f"to keep the bench short) → {MEMORY_PREPARED_SIDE}², 2 workers:"
        )
        print("   images  images.npy MB  tree RSS peak MB  main VmHWM MB  worker maxrss MB  wall s")
        for row in rows:
            print(
                f"   {row['images']:6d}  {row['images_npy_mb']:13.0f}  {row['tree_rss_peak_mb']:16.0f}  "
                f"{row['self_vmhwm_mb']:14.0f}  {row['worker_maxrss_mb']:16.0f}  {row['wall_s']:6.1f}"
            )
        growth = rows[-1]["tree_rss_peak_mb"] - rows[0]["tree_rss_peak_mb"]
        added = rows[-1]["images_npy_mb"] - rows[0]["images_npy_mb"]
        print(f"   peak grows by {growth:.0f} MB while images.npy grows by {added:.0f} MB (limit: 2048 MB for any size)")
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "_prepare":
        _prepare_child(*sys.argv[2:])
    else:
        main()
