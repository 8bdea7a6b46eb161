"""Candidates for a release: images of the sample stage from a secret seed, screened in growing batches."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from cxrsynth.errors import CxrsynthError
from cxrsynth.release.options import Log, ReleaseOptions, quiet_log
from cxrsynth.release.screen import ReleaseScreen, ScreenResult
from cxrsynth.runfolder import SAMPLE_SETTINGS, manifest_rows, read_sample_image, read_sample_settings
from cxrsynth.sample import generate_samples

GROWTH_MARGIN = 1.1
"""Candidates generated per round: what the observed pass rate says is needed, plus 10%."""


@dataclass(frozen=True)
class Candidates:
    """A batch of candidate images.

    Attributes:
        indices: image ids (the ``i`` of ``(seed, i)``).
        images: uint8 M×S×S pixels.
        rows: each image's manifest row (``file, index, seed, sampler, steps, label, guidance``).
    """

    indices: np.ndarray
    images: np.ndarray
    rows: list[dict[str, str]]


PUBLIC_SAMPLING_KEYS: tuple[str, ...] = ("sampler", "steps", "labels", "guidance", "model_sha256")
"""The sampling settings release.json copies: everything but the (secret) seed."""


def secret_seed() -> int:
    """A fresh seed for one release's candidates, from the OS's cryptographic random source.

    Never written to the release folder (nor logged): with it and the model, anyone could
    regenerate the candidates the screen dropped.
    """
    return secrets.randbits(63)


class CandidateSource(Protocol):
    """Produces candidates ``start .. start+count-1``."""

    def __call__(self, start: int, count: int) -> Candidates: ...


class SampledCandidates:
    """Candidates from the sample stage, generated into a scratch folder (PNG, lossless).

    The scratch folder (its manifest and ``sampling.json`` name the seed) is deleted before the
    release folder appears.

    Args:
        run: the run folder.
        folder: scratch folder (created).
        options: sampling settings of the release.
        seed: the candidates' seed (:func:`secret_seed`; never written outside the scratch folder).
    """

    def __init__(self, run: Path, folder: Path, options: ReleaseOptions, seed: int) -> None:
        self.run, self.folder, self.options, self.seed = Path(run), Path(folder), options, int(seed)

    def __call__(self, start: int, count: int) -> Candidates:
        """Generate images ``0 .. start+count-1`` (those present are skipped) and read ``start ..``."""
        options = self.options
        generate_samples(self.run, start + count, sampler=options.sampler, steps=options.steps,
                         batch_size=options.batch_size, seed=self.seed, out=self.folder, image_format="png",
                         label=options.label, label_mix=options.label_mix, guidance_scale=options.guidance_scale,
                         device=options.device, progress=options.progress)
        rows = manifest_rows(self.folder)
        if rows is None:  # the sample stage always writes one: its absence means the scratch folder was disturbed
            raise CxrsynthError(f"{self.folder} has no manifest.csv after sampling", "run the release again")
        rows = rows[start : start + count]
        images = [read_sample_image(self.folder / row["file"]) for row in rows]
        return Candidates(np.array([int(row["index"]) for row in rows]), np.stack(images), rows)

    def settings(self) -> dict:
        """The sample stage's ``sampling.json`` of the scratch folder (empty before the first batch).

        It holds the secret seed: :data:`PUBLIC_SAMPLING_KEYS` is what release.json copies.
        """
        path = self.folder / SAMPLE_SETTINGS
        return read_sample_settings(path) if path.is_file() else {}


@dataclass
class Selection:
    """What the top-up loop kept and dropped.

    Attributes:
        images: released pixels (uint8 N×S×S), in index order.
        rows: their manifest rows.
        generated: candidates generated; screened: candidates screened (equal).
        passed: screened candidates that passed (some of the last batch may be unused).
        near_copy, linked_to_member, both: dropped candidates flagged only by the copy test, only by
            re-identification, and by both (exclusive counts).
        rounds: generation rounds.
    """

    images: list[np.ndarray] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    generated: int = 0
    passed: int = 0
    near_copy: int = 0
    linked_to_member: int = 0
    both: int = 0
    rounds: int = 0

    @property
    def dropped(self) -> int:
        """Candidates dropped for any reason."""
        return self.near_copy + self.linked_to_member + self.both

    def add(self, candidates: Candidates, result: ScreenResult, wanted: int) -> None:
        """Count a screened batch and keep its first passing candidates, up to ``wanted`` in all."""
        self.generated += len(candidates.indices)
        self.passed += int(result.passed.sum())
        self.both += int((result.near_copy & result.linked_to_member).sum())
        self.near_copy += int((result.near_copy & ~result.linked_to_member).sum())
        self.linked_to_member += int((result.linked_to_member & ~result.near_copy).sum())
        for position in np.flatnonzero(result.passed):
            if len(self.rows) == wanted:
                break
            self.images.append(candidates.images[position])
            self.rows.append(candidates.rows[position])


def next_batch_size(selection: Selection, wanted: int, limit: int) -> int:
    """Candidates to generate next: what the pass rate so far says is needed, plus 10%, within ``limit``."""
    needed = wanted - len(selection.rows)
    rate = selection.passed / selection.generated if selection.generated else 1.0
    estimate = math.ceil(needed / max(rate, 0.05) * GROWTH_MARGIN) + (0 if selection.generated else 1)
    return max(0, min(estimate, limit - selection.generated))


def select_release(screen: ReleaseScreen, source: CandidateSource, wanted: int, limit: int, log: Log = quiet_log) -> Selection:
    """Generate, screen and keep candidates in index order until ``wanted`` have passed.

    Args:
        screen: the privacy screen.
        source: produces candidates by index.
        wanted: images to release.
        limit: most candidates to generate.
        log: receives one line per round.

    Returns:
        The :class:`Selection` (exactly ``wanted`` images).

    Raises:
        CxrsynthError: when ``limit`` candidates were generated before ``wanted`` passed.
    """
    selection = Selection()
    while len(selection.rows) < wanted:
        count = next_batch_size(selection, wanted, limit)
        if count == 0:
            raise CxrsynthError(
                f"only {len(selection.rows)} of {wanted} wanted images passed the privacy screen after {selection.generated} "
                f"candidates ({selection.near_copy + selection.both} near-copies of training images, "
                f"{selection.linked_to_member + selection.both} linked to training patients)",
                "raise --max-candidates or lower --num-images; a high drop rate means the model reproduces its "
                "training patients: read its audit (cxrsynth audit / cxrsynth report) before sharing anything",
            )
        candidates = source(selection.generated, count)
        result = screen.screen(candidates.images)
        selection.add(candidates, result, wanted)
        selection.rounds += 1
        log(f"round {selection.rounds}: screened {len(candidates.indices)} candidates, {int(result.passed.sum())} passed "
            f"({len(selection.rows)}/{wanted} kept)")
    return selection
