"""Canary patients for the one-run privacy audit (Steinke, Nasr & Jagielski, NeurIPS 2023).

``cxrsynth train --canaries M`` makes M synthetic *canary patients*, one image each, and includes
each one in training independently with probability ½. After training, ``cxrsynth audit canaries``
(:mod:`cxrsynth.audit.canaries`) guesses which canaries were included; the number of correct
guesses gives an ε lower bound from this single run.

What a canary is
    A mid-grey (128) image carrying a random 6×6 grid of black/white (0/255) cells, each cell
    ``S // 12`` pixels wide (so the marker spans half the image side), stamped at a random position.
    The grid (36 random bits) and the position are drawn per canary, so every canary is unlike every
    other one (duplicates are redrawn) and unlike any radiograph: out of distribution, which is what
    makes an included canary memorable. Canaries are built from a secret seed only — no member
    image is copied, because a copy would make its patient appear in two privacy units (and a
    function of all members, such as their mean, would leak a little of each).

Secrecy and storage
    The seed of the canaries and of the inclusion mask comes from ``os.urandom``
    (:func:`cxrsynth.train.components.draw_secret_seed`), never from ``config.seed``. The images and the
    mask are stored only in the private run folder, ``RUN/canaries/`` (mode 0700):
    ``canaries.safetensors`` (uint8 M×S×S) and ``inclusion.json`` (mode 0600 each). ``config.yaml``
    records only ``canaries: M``; the prepared data, samples, evaluation and release never see a
    canary. ``--resume`` reloads both files, so a resumed run trains on the same canaries.

How the included canaries are trained
    Like any other patient: :func:`with_canaries` appends them to the member split as patients
    ``canary-0000``… (one ``member`` image each, labels ``No Finding``) in an in-memory view of the
    prepared data; the images stay in memory next to the memory-mapped ``images.npy``. In a DP run
    each included canary is one more privacy unit: Poisson sampling, the sampling rate q and the
    default δ = 1/(10·units) count the real *and* the included canary units, and ``privacy.json``'s
    ``privacy_units`` is that total. The member fingerprint and member counts in ``config.yaml``
    describe the real data only, so the audit and evaluation recognise the data the run used.

Guards
    ``cxrsynth release`` refuses a run trained with canaries (it is an audit run);
    ``cxrsynth sample`` still works (measuring the run needs samples) but warns and notes it in
    ``sampling.json``. Conditional runs do not support canaries (canaries carry no labels).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxrsynth.data.prepared import NO_FINDING, PreparedData
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from accelerate import Accelerator

    from cxrsynth.config import TrainConfig

CANARY_DIR = "canaries"
IMAGES_FILE = "canaries.safetensors"
INCLUSION_FILE = "inclusion.json"
CANARY_FORMAT = 1
PATIENT_PREFIX = "canary-"
MARKER_GRID = 6
"""The marker is a MARKER_GRID × MARKER_GRID grid of random black/white cells."""
BACKGROUND = 128
INCLUSION_PROBABILITY = 0.5
CANARY_STREAM = 11
TRAIN_SPLIT = "member"


@dataclass(frozen=True)
class Canaries:
    """The canaries of a run and which of them were trained on.

    Attributes:
        images: uint8 M×S×S canary images.
        included: bool (M,): canary i was added to the training data.
    """

    images: np.ndarray
    included: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def patient_ids(self) -> list[str]:
        """``canary-0000``, ``canary-0001``…: one patient id per canary."""
        return [f"{PATIENT_PREFIX}{i:04d}" for i in range(len(self))]


def marker_cell(size: int) -> int:
    """Side in pixels of one marker cell for S×S images (the marker spans about half the side)."""
    return max(1, size // (2 * MARKER_GRID))


def make_canaries(count: int, size: int, seed: int) -> Canaries:
    """M = ``count`` distinct canaries of side ``size`` and their inclusion mask, drawn from ``seed``.

    Args:
        count: number of canaries (>= 1).
        size: image side S (>= MARKER_GRID).
        seed: a secret seed (see the module docstring).

    Returns:
        The canaries; each is included independently with probability ½.

    Raises:
        CxrsynthError: when the images are too small for the marker.
    """
    if size < MARKER_GRID:
        raise CxrsynthError(f"--canaries needs images of at least {MARKER_GRID}² pixels, got {size}²")
    rng = np.random.default_rng([int(seed), CANARY_STREAM])
    cell = marker_cell(size)
    side = cell * MARKER_GRID
    images = np.full((count, size, size), BACKGROUND, dtype=np.uint8)
    seen: set[tuple[bytes, int, int]] = set()
    for i in range(count):
        while True:  # 36 random bits and a position: a repeat is astronomically rare, but never allowed
            bits = rng.integers(0, 2, (MARKER_GRID, MARKER_GRID), dtype=np.uint8)
            top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
            key = (bits.tobytes(), top, left)
            if key not in seen:
                seen.add(key)
                break
        marker = np.kron(bits, np.ones((cell, cell), dtype=np.uint8)) * 255
        images[i, top : top + side, left : left + side] = marker
    included = rng.random(count) < INCLUSION_PROBABILITY
    return Canaries(images=images, included=included)


def canary_folder(run_dir: str | Path) -> Path:
    """``RUN/canaries``."""
    return Path(run_dir) / CANARY_DIR


def save_canaries(run_dir: str | Path, canaries: Canaries) -> Path:
    """Write ``RUN/canaries/`` (folder 0700, files 0600; each file atomically); returns the folder."""
    from safetensors.numpy import save

    folder = canary_folder(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    images = atomic_write_bytes(folder / IMAGES_FILE, save({"images": np.ascontiguousarray(canaries.images)}))
    os.chmod(images, 0o600)
    inclusion = atomic_write_json(folder / INCLUSION_FILE, {
        "format": CANARY_FORMAT,
        "m": len(canaries),
        "included": [bool(flag) for flag in canaries.included],
        "patient_ids": canaries.patient_ids,
        "inclusion_probability": INCLUSION_PROBABILITY,
    })
    os.chmod(inclusion, 0o600)
    return folder


def load_canaries(run_dir: str | Path) -> Canaries:
    """Read ``RUN/canaries/``.

    Raises:
        CxrsynthError: when the folder or a file is missing or inconsistent.
    """
    from safetensors.numpy import load_file

    folder = canary_folder(run_dir)
    images_path, inclusion_path = folder / IMAGES_FILE, folder / INCLUSION_FILE
    if not images_path.is_file() or not inclusion_path.is_file():
        raise CxrsynthError(f"{folder} does not hold {IMAGES_FILE} and {INCLUSION_FILE}",
                            "the canaries of this run are lost: train a new run with --canaries")
    try:
        images = load_file(str(images_path))["images"]
        record = json.loads(inclusion_path.read_text())
        included = np.asarray(record["included"], dtype=bool)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CxrsynthError(f"{folder} cannot be read ({exc})", "train a new run with --canaries") from None
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(included) or record.get("m") != len(images):
        raise CxrsynthError(f"{folder}: the canary images and the inclusion mask disagree",
                            "train a new run with --canaries")
    return Canaries(images=images, included=included)


def run_canary_count(run: str | Path) -> int:
    """``canaries`` of the run's ``config.yaml`` (0 when there is none, or ``run`` is a bare pipeline folder).

    A run folder that holds ``canaries/`` counts as a canary run even if its config were edited.
    """
    run = Path(run)
    candidates = [run, run.parent] if run.name == "pipeline" else [run]
    for folder in candidates:
        if (folder / CANARY_DIR).is_dir():
            return max(1, _stored_count(folder), _configured_count(folder))
        count = _configured_count(folder)
        if count:
            return count
    return 0


def _stored_count(folder: Path) -> int:
    try:
        return int(json.loads((canary_folder(folder) / INCLUSION_FILE).read_text())["m"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _configured_count(folder: Path) -> int:
    from cxrsynth.config import CONFIG_FILE, load_run_config

    if not (folder / CONFIG_FILE).is_file():
        return 0
    config, _ = load_run_config(folder)
    return int(config.canaries)


def prepare_canaries(config: TrainConfig, run_dir: Path, resume: bool, size: int,
                     accelerator: Accelerator) -> Canaries | None:
    """The run's canaries: reloaded from ``RUN/canaries/`` on resume, else freshly drawn (not yet saved).

    Every process gets the same canaries (one secret seed, broadcast). Call :func:`save_canaries`
    once the run folder has been checked.

    Returns:
        None when ``config.canaries`` is 0.

    Raises:
        CxrsynthError: when a resumed canary run has lost its canaries, or they do not match the data.
    """
    if config.canaries == 0:
        return None
    from cxrsynth.config import CONFIG_FILE

    if resume and (canary_folder(run_dir).is_dir() or (run_dir / CONFIG_FILE).is_file()):
        canaries = load_canaries(run_dir)
        if len(canaries) != config.canaries or canaries.images.shape[1:] != (size, size):
            raise CxrsynthError(
                f"{canary_folder(run_dir)} holds {len(canaries)} canaries of {canaries.images.shape[1]}², the run "
                f"asks for {config.canaries} of {size}²", "resume with the run's own settings and data")
        return canaries
    from cxrsynth.train.components import draw_secret_seed

    return make_canaries(config.canaries, size, draw_secret_seed(accelerator))


class StackedImages:
    """A read-only uint8 N×S×S array view: the prepared images followed by extra in-memory images.

    Supports what the training streams use: ``shape``, ``len`` and indexing by an integer or an
    integer array of rows (rows ≥ N address the extra images).
    """

    def __init__(self, base: np.ndarray, extra: np.ndarray) -> None:
        if extra.shape[1:] != base.shape[1:]:
            raise ValueError(f"extra images {extra.shape[1:]} do not match {base.shape[1:]}")
        self.base, self.extra = base, np.ascontiguousarray(extra, dtype=base.dtype)
        self.dtype = base.dtype
        self.shape = (len(base) + len(extra), *base.shape[1:])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        if np.isscalar(rows):
            row = int(rows)
            return self.base[row] if row < len(self.base) else self.extra[row - len(self.base)]
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        in_base = rows < len(self.base)
        if in_base.any():
            out[in_base] = self.base[rows[in_base]]
        if (~in_base).any():
            out[~in_base] = self.extra[rows[~in_base] - len(self.base)]
        return out


def with_canaries(data: PreparedData, canaries: Canaries | None) -> PreparedData:
    """``data`` with the included canaries appended to its member split (an in-memory view; nothing is written).

    Each included canary becomes a patient ``canary-NNNN`` with one ``member`` image labelled
    ``No Finding``, at rows N, N+1, … after the prepared images. Returns ``data`` itself when there
    are no canaries.

    Raises:
        CxrsynthError: when a canary patient id is already used by the data.
    """
    if canaries is None:
        return data
    chosen = np.flatnonzero(canaries.included)
    ids = [canaries.patient_ids[i] for i in chosen]
    clash = set(ids) & set(data.index["patient_id"].astype(str))
    if clash:
        raise CxrsynthError(f"{data.root}: patient id(s) {sorted(clash)[:3]} collide with the canaries' ids",
                            f"rename patients whose id starts with {PATIENT_PREFIX!r}, or train without --canaries")
    first = len(data.images)
    rows = pd.DataFrame({"row": np.arange(first, first + len(chosen), dtype=np.int64), "image_id": ids,
                         "patient_id": ids, "split": TRAIN_SPLIT, "labels": NO_FINDING})
    index = pd.concat([data.index, rows], ignore_index=True)
    return PreparedData(root=data.root, images=StackedImages(data.images, canaries.images[chosen]), index=index,
                        meta=data.meta)
