"""``cxrsynth release`` options and the release folder's fixed names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cxrsynth.audit.memorization import CARLINI_RATIO_THRESHOLD
from cxrsynth.errors import CxrsynthError
from cxrsynth.sample import FORMATS

RELEASE_FORMAT = 2
"""2: no seed or candidate index anywhere; ``privacy`` object; ``dropped``/``screens`` null when unscreened."""
RELEASE_FILE = "release.json"
MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("file", "sampler", "steps", "label", "guidance")
"""No ``seed`` or ``index``: with them and the model, anyone could regenerate the dropped candidates."""
CANDIDATES_FOLDER = ".candidates"
"""Scratch folder (inside the temporary output) where candidates are generated; removed before the rename."""
DEFAULT_REID_QUANTILE = 0.99
"""Quantile of new patients' similarity to their most similar member above which a candidate is dropped."""
DEFAULT_CANDIDATE_FACTOR = 4
"""Default ``--max-candidates``: this many times ``--num-images``."""
HIGH_DROP_WARNING = 0.2

Log = Callable[[str], None]


def quiet_log(_: str) -> None:
    """Default log: discard."""


@dataclass(frozen=True)
class ReleaseOptions:
    """Settings of one release (``cxrsynth release`` options).

    Attributes:
        num_images: images to release (all of them pass the screen).
        image_format: ``png`` or ``dicom``.
        sampler, steps, batch_size: sampling settings (as ``cxrsynth sample``).
        seed: seed of the screen (calibration patients, verification network) — never of the
            candidates, whose seed is a fresh secret per release (:func:`secret_seed`).
        label, label_mix, guidance_scale: label options of conditional runs (as ``cxrsynth sample``).
        copy_ratio: near-copy threshold of the copy ratio.
        reid_quantile: quantile of new patients' similarity that sets the re-identification threshold.
        reid_steps: training steps of the patient-verification network.
        max_candidates: most candidates generated before giving up (default 4 × ``num_images``).
        screen: screen the candidates. None (the default): screened unless the run was trained with
            DP (a screen looks at the member images, which the DP guarantee does not cover); True on
            a DP run: screened, and release.json says the release is not covered by (ε, δ); False
            on a run without DP: refused.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data: prepared-data folder (default: the one in ``RUN/config.yaml``).
        overwrite: replace an existing output folder that is a previous release (only once the new one is complete).
        progress: show progress bars.
    """

    num_images: int = 100
    image_format: str = "png"
    sampler: str = "ddpm"
    steps: int | None = 25
    seed: int = 0
    batch_size: int = 16
    label: str | None = None
    label_mix: str | None = None
    guidance_scale: float | None = None
    copy_ratio: float = CARLINI_RATIO_THRESHOLD
    reid_quantile: float = DEFAULT_REID_QUANTILE
    reid_steps: int = 300
    max_candidates: int | None = None
    screen: bool | None = None
    device: str = "auto"
    data: Path | None = None
    overwrite: bool = False
    progress: bool = False

    def candidate_limit(self) -> int:
        """``max_candidates``, or its default."""
        return self.max_candidates if self.max_candidates is not None else DEFAULT_CANDIDATE_FACTOR * self.num_images

    def validate(self) -> None:
        """Check ranges and choices.

        Raises:
            CxrsynthError: naming the first invalid option.
        """
        if self.num_images < 1:
            raise CxrsynthError(f"--num-images must be >= 1, got {self.num_images}")
        if self.image_format not in FORMATS:
            raise CxrsynthError(f"unknown --format {self.image_format!r}", f"use one of: {', '.join(FORMATS)}")
        if not 0.0 < self.copy_ratio < 1.0:
            raise CxrsynthError(f"--copy-ratio must be in (0, 1), got {self.copy_ratio}", "the audit's value is 1/6 ≈ 0.167")
        if not 0.5 <= self.reid_quantile < 1.0:
            raise CxrsynthError(f"--reid-quantile must be in [0.5, 1), got {self.reid_quantile}", "the default is 0.99")
        if self.candidate_limit() < self.num_images:
            raise CxrsynthError(f"--max-candidates {self.candidate_limit()} is below --num-images {self.num_images}")
