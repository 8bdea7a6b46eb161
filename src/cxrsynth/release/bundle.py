"""``cxrsynth release``: export synthetic images for sharing, screened for privacy.

Privacy-enhancing sampling after Packhäuser et al. ("Generation of anonymous chest radiographs
using latent diffusion models for training thoracic abnormality classification systems", ISBI
2023): generate candidates, drop every candidate that a privacy screen flags, and generate more
until ``--num-images`` candidates have passed.

The screen (:class:`ReleaseScreen`)
-----------------------------------
A candidate is dropped when either test flags it:

* **near-copy** — Carlini et al.'s copy test against every training (``member``) image
  (:func:`cxrsynth.audit.memorization.flag_memorized`): nearest-member distance / mean distance
  to the 50 nearest member *patients* (each by their nearest image) below ``--copy-ratio``
  (default 1/6, the audit's threshold);
* **linked to a member patient** — the audit's patient-verification network
  (:func:`cxrsynth.audit.reidentification.member_gallery`) gives the cosine similarity of the
  candidate to its most similar member image. The threshold is calibrated on real images of
  patients that neither the generator nor the network ever saw (a seeded
  :data:`CALIBRATION_FRACTION` of the ``holdout`` and ``test`` patients, kept out of the network's
  training): it is the ``--reid-quantile`` quantile (default 0.99) of *their* similarity to their
  most similar member image. A candidate more similar to some training patient than 99% of truly
  new patients are is dropped: a generator that leaks nothing loses about 1% of its images.

Candidates are images ``i = 0, 1, 2, …`` of the sample stage (:func:`cxrsynth.sample.generate_samples`,
image ``i`` fixed by ``(seed, i)``), screened in index order; the first ``--num-images`` that pass
are released.

No way back to the dropped candidates
-------------------------------------
A dropped candidate is a near-copy of a training image, or linked to a training patient: whoever
could regenerate it from the (shared) model would get what the screen withheld. So the candidates'
seed is a fresh secret for every release (:func:`secret_seed`, from the OS's cryptographic source):
it is never written to the release folder, nor anywhere else, and neither is any candidate index.
Released files are numbered contiguously (``synthetic_000000`` …), whatever was dropped in between.
A release therefore cannot be regenerated, by design; ``--seed`` seeds only the screen.

A run trained with canaries (``cxrsynth train --canaries``) is an audit run and is refused:
its model was trained on synthetic canary patients, which it may reproduce.

Differentially private runs (``RUN/privacy.json`` exists)
--------------------------------------------------------
The (ε, δ) guarantee covers the model and whatever is computed from the model alone. The screen
looks at the member images, so a screened release is *not* post-processing of the DP model: which
candidates survive depends on the training patients beyond what (ε, δ) bounds. Hence, for a DP
run, the default is an **unscreened** release (``covered_by_dp`` true: every file in it is
covered by the guarantee; no member-dependent number — screen thresholds, drop counts, the audit's
verdict — is written); ``--screen`` screens anyway, and release.json then states that the release
is no longer covered by (ε, δ). Runs without DP are always screened (``--no-screen`` is refused).

Output folder (built under a temporary name, renamed only when complete)
-------------------------------------------------------------------------
* ``synthetic_000000.png`` … (or ``.dcm``: DICOM Secondary Capture marked SYNTHETIC, no patient data,
  no seed or candidate index in its comment);
* ``manifest.csv`` — ``file, sampler, steps, label, guidance``: no seed, no candidate index, no
  patient or source image id;
* ``release.json`` (format 2) — counts and thresholds, never which patients were matched:

  - ``format`` (int), ``created`` (str, UTC ISO time), ``run`` (str), ``num_images`` (int),
    ``image_format`` (``png``|``dicom``);
  - ``sampling`` (object) — the sample stage's settings: ``sampler``, ``steps``, ``labels``,
    ``guidance``, ``model_sha256`` (never the secret seed);
  - ``privacy`` (object) — ``dp`` (bool: the run was trained with DP), ``screened`` (bool),
    ``covered_by_dp`` (bool: every file of the release is covered by the run's (ε, δ)),
    ``epsilon``, ``delta``, ``unit`` (null without DP), ``statement`` (str: what the release's
    privacy rests on, in plain words), ``caveats`` (list of str);
  - ``candidates`` (object) — ``generated`` (int), ``screened`` (int), ``passed`` (int),
    ``released`` (int), ``dropped`` (int), ``rounds`` (int), ``max_candidates`` (int);
  - ``dropped`` (object, null when not screened) — counts by reason: ``near_copy`` (flagged by the
    copy test), ``linked_to_member`` (flagged by re-identification), ``both`` (by both), ``total`` (either);
  - ``screens`` (object, null when not screened) — ``near_copy``: ``test``, ``ratio_threshold``,
    ``neighbours``, ``member_images``; ``linked_to_member``: ``test``, ``similarity_threshold``,
    ``quantile``, ``calibration_patients``, ``calibration_images``, ``calibration_similarity``
    (``median``, ``max``), ``member_images``, ``member_patients``, ``network`` (``steps``,
    ``input_size``, ``embedding_dim``, ``train_patients``, ``seed``);
  - ``audit`` (object) — the run's audit at release time: ``path``, ``leak_detected``, ``verdict``
    (both null in a release covered by DP: the audit is computed from the member images), ``note``;
  - ``warnings`` (list of str); ``seconds`` (object): ``screen_setup``, ``total``.

Nothing else leaves the run folder: no training log, no loss, no classifier or network weights.
"""

from __future__ import annotations

import csv
import io
import json
import math
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from PIL import Image

from cxrsynth.audit.memorization import CARLINI_NEIGHBOURS, CARLINI_RATIO_THRESHOLD
from cxrsynth.data.prepared import PreparedData
from cxrsynth.config import PRIVACY_FILE
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import (atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text,
                             check_output_parent)

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
CALIBRATION_FRACTION = 0.2
"""Share of holdout+test patients kept out of the network's training to calibrate its threshold."""
MIN_CALIBRATION_PATIENTS = 2
DEFAULT_CANDIDATE_FACTOR = 4
"""Default ``--max-candidates``: this many times ``--num-images``."""
GROWTH_MARGIN = 1.1
"""Candidates generated per round: what the observed pass rate says is needed, plus 10%."""
HIGH_DROP_WARNING = 0.2

Log = Callable[[str], None]


def _quiet(_: str) -> None:
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
        from cxrsynth.sample import FORMATS

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


# ---------------------------------------------------------------------------------------------
# The screen
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScreenResult:
    """The screen's decision for a batch of candidates (boolean arrays, one entry per candidate).

    Attributes:
        near_copy: flagged by the copy test.
        linked_to_member: flagged by re-identification.
    """

    near_copy: np.ndarray
    linked_to_member: np.ndarray

    @property
    def passed(self) -> np.ndarray:
        """True where neither test flagged the candidate: it may be released."""
        return ~(self.near_copy | self.linked_to_member)


@dataclass
class ReleaseScreen:
    """Decides which candidate images may be released (see the module docstring).

    Attributes:
        data: the run's prepared data (its ``member`` images are the training images).
        copy_ratio: copy-test threshold.
        gallery: member images embedded by the verification network
            (:class:`cxrsynth.audit.reidentification.MemberGallery`).
        similarity_threshold: re-identification threshold on the cosine similarity.
        calibration: how the threshold was set (``quantile``, ``calibration_patients``,
            ``calibration_images``, ``calibration_similarity``).
    """

    data: PreparedData
    copy_ratio: float
    gallery: object
    similarity_threshold: float
    calibration: dict = field(default_factory=dict)

    def screen(self, images: np.ndarray) -> ScreenResult:
        """Run both tests on uint8 M×S×S candidate images.

        Raises:
            CxrsynthError: for malformed images, or images of another size than the training images.
        """
        from cxrsynth.audit.memorization import flag_memorized

        rows = self._member_rows()
        # One image per patient in the denominator: a copy of a patient with many follow-ups is still flagged.
        flags = flag_memorized(images, self.data.images, rows, threshold=self.copy_ratio,
                               patients=self.data.index["patient_id"].to_numpy()[rows])
        matches = self.gallery.match(images)
        return ScreenResult(near_copy=np.asarray(flags.flagged, bool),
                            linked_to_member=np.asarray(matches.similarity > self.similarity_threshold, bool))

    def _member_rows(self) -> np.ndarray:
        """The training images' rows, sorted (``index.csv``'s ``row`` is the position in ``images.npy``)."""
        return np.sort(self.data.rows("member"))

    def describe(self) -> dict:
        """The ``screens`` object of release.json."""
        verifier = self.gallery.verifier
        rows = self._member_rows()
        member_patients = len(set(self.data.index["patient_id"].to_numpy()[rows]))
        return {
            "near_copy": {
                "test": "Carlini et al. copy ratio: distance to the nearest training image / mean distance to the "
                        f"nearest image of each of the {CARLINI_NEIGHBOURS} nearest training patients (per-image "
                        "standardised pixels; one image per patient)",
                "ratio_threshold": self.copy_ratio,
                "neighbours": min(CARLINI_NEIGHBOURS, member_patients),
                "member_images": int(len(rows)),
            },
            "linked_to_member": {
                "test": "cosine similarity of the patient-verification embedding to the most similar training image",
                "similarity_threshold": self.similarity_threshold,
                **self.calibration,
                "member_images": int(len(self.gallery.embeddings)),
                "member_patients": int(len(set(self.gallery.patient_ids))),
                "network": {
                    "steps": verifier.config.steps, "input_size": verifier.config.input_size,
                    "embedding_dim": verifier.config.embedding_dim, "train_patients": len(self.gallery.train_patients),
                    "seed": verifier.config.seed,
                },
            },
        }


class NoScreen:
    """Passes every candidate: the release of a DP run that is not screened (see the module docstring)."""

    def screen(self, images: np.ndarray) -> ScreenResult:
        """Nothing flagged."""
        nothing = np.zeros(len(images), bool)
        return ScreenResult(near_copy=nothing, linked_to_member=nothing.copy())


def calibration_patients(data: PreparedData, seed: int, fraction: float = CALIBRATION_FRACTION) -> list[str]:
    """A seeded share of the holdout and test patients, kept out of the network to calibrate its threshold.

    Raises:
        CxrsynthError: when the data has fewer than :data:`MIN_CALIBRATION_PATIENTS` such patients.
    """
    pool = sorted(set(data.patient_rows("holdout")) | set(data.patient_rows("test")))
    count = max(MIN_CALIBRATION_PATIENTS, int(round(fraction * len(pool))))
    if len(pool) < count:
        raise CxrsynthError(
            f"the release screen needs at least {MIN_CALIBRATION_PATIENTS} holdout or test patients to calibrate "
            f"its re-identification threshold; {data.root} has {len(pool)}",
            "prepare the data with holdout and test splits (--holdout-fraction, --test-fraction)",
        )
    rng = np.random.default_rng([seed, 61])
    return sorted(rng.choice(pool, size=count, replace=False).tolist())


def build_screen(data: PreparedData, options: ReleaseOptions, device=None, log: Log = _quiet) -> ReleaseScreen:
    """Train the verification network (never on members or calibration patients) and calibrate the screen.

    Args:
        data: the run's prepared data.
        options: ``copy_ratio``, ``reid_quantile``, ``reid_steps`` and ``seed`` are used.
        device: where the network trains.
        log: receives one line per step.

    Returns:
        The :class:`ReleaseScreen`.

    Raises:
        CxrsynthError: when the data has no members, too few patients to calibrate, or too few
            patients with two images to train the network.
    """
    from cxrsynth.audit.reidentification import member_gallery

    held_out = calibration_patients(data, options.seed)
    log(f"re-identification screen: training the verification network ({options.reid_steps} steps) on "
        f"holdout+test patients, {len(held_out)} kept out for calibration")
    try:
        gallery = member_gallery(data, seed=options.seed, steps=options.reid_steps, device=device,
                                 exclude_patients=held_out, progress=options.progress)
    except CxrsynthError as exc:
        raise CxrsynthError(f"cannot build the release screen: {exc.problem}",
                            "prepare the data with more holdout and test patients (two or more images each)") from None
    rows = data.index.loc[data.index["patient_id"].isin(held_out), "row"].to_numpy(dtype=np.int64)
    null = gallery.match(np.asarray(data.images[np.sort(rows)])).similarity
    threshold = float(np.quantile(null, options.reid_quantile))
    calibration = {
        "quantile": options.reid_quantile,
        "calibration_patients": len(held_out),
        "calibration_images": int(len(rows)),
        "calibration_similarity": {"median": float(np.median(null)), "max": float(np.max(null))},
    }
    log(f"re-identification threshold: cosine similarity {threshold:.4f} (quantile {options.reid_quantile:g} of "
        f"{len(rows)} images of {len(held_out)} unseen patients)")
    return ReleaseScreen(data=data, copy_ratio=options.copy_ratio, gallery=gallery, similarity_threshold=threshold,
                         calibration=calibration)


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------


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
        from cxrsynth.sample import MANIFEST_FILE as SAMPLE_MANIFEST
        from cxrsynth.sample import generate_samples

        options = self.options
        generate_samples(self.run, start + count, sampler=options.sampler, steps=options.steps,
                         batch_size=options.batch_size, seed=self.seed, out=self.folder, image_format="png",
                         label=options.label, label_mix=options.label_mix, guidance_scale=options.guidance_scale,
                         device=options.device, progress=options.progress)
        with (self.folder / SAMPLE_MANIFEST).open(newline="") as handle:
            rows = sorted(csv.DictReader(handle), key=lambda row: int(row["index"]))[start : start + count]
        images = []
        for row in rows:
            with Image.open(self.folder / row["file"]) as image:
                images.append(np.asarray(image.convert("L")))
        return Candidates(np.array([int(row["index"]) for row in rows]), np.stack(images), rows)

    def settings(self) -> dict:
        """The sample stage's ``sampling.json`` of the scratch folder (empty before the first batch).

        It holds the secret seed: :data:`PUBLIC_SAMPLING_KEYS` is what release.json copies.
        """
        from cxrsynth.sample import SETTINGS_FILE

        path = self.folder / SETTINGS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}


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


def select_release(screen: ReleaseScreen, source: CandidateSource, wanted: int, limit: int, log: Log = _quiet) -> Selection:
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


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def release_file_name(position: int, image_format: str) -> str:
    """File name of the ``position``-th released image (``synthetic_000000.png`` / ``.dcm``)."""
    return f"synthetic_{position:06d}{'.dcm' if image_format == 'dicom' else '.png'}"


def write_images(folder: Path, selection: Selection, image_format: str) -> list[dict[str, str]]:
    """Write the released images into ``folder``; returns their manifest rows (``file`` renamed)."""
    from cxrsynth.dicom_export import new_synthetic_series, write_synthetic_dicom

    series = new_synthetic_series() if image_format == "dicom" else None
    rows = []
    for position, (pixels, row) in enumerate(zip(selection.images, selection.rows)):
        name = release_file_name(position, image_format)
        if series is None:
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
            atomic_write_bytes(folder / name, buffer.getvalue())
        else:
            # No seed or candidate index: they would let a reader regenerate the dropped candidates.
            comment = f"sampler={row['sampler']} steps={row['steps']} label={row.get('label') or '-'}"
            write_synthetic_dicom(folder / name, pixels, series, instance_number=position + 1, comment=comment)
        rows.append({column: (name if column == "file" else row.get(column, "")) for column in MANIFEST_COLUMNS})
    return rows


def manifest_text(rows: list[dict[str, str]]) -> str:
    """``manifest.csv`` text (:data:`MANIFEST_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_audit(run: Path) -> dict:
    """The run's ``audit/audit.json``.

    Raises:
        CxrsynthError: when the run has not been audited (or the file is unreadable).
    """
    path = run / "audit" / "audit.json"
    if not path.is_file():
        raise CxrsynthError(
            f"{run} has no audit ({path} is missing): images of a model nobody audited should not be shared",
            f"run `cxrsynth audit --run {run}` first",
        )
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CxrsynthError(f"{path} cannot be read ({exc})", f"re-run `cxrsynth audit --run {run}`") from None


@dataclass(frozen=True)
class ReleasePrivacy:
    """What a release's privacy rests on: the run's DP guarantee, the screen, or both.

    Attributes:
        dp: the run was trained with differential privacy (``RUN/privacy.json`` exists).
        screened: the candidates are screened against the member images.
        epsilon, delta, unit: the run's guarantee (None without DP).
        data_vocabulary: the model is label-conditional with label sets (and counts) taken from the
            member split, not from a public schema.
    """

    dp: bool
    screened: bool
    epsilon: float | None = None
    delta: float | None = None
    unit: str | None = None
    data_vocabulary: bool = False

    @property
    def covered_by_dp(self) -> bool:
        """True when every file of the release is a function of the DP model alone."""
        return self.dp and not self.screened

    def statement(self) -> str:
        """The release's privacy in plain words (release.json ``privacy.statement``)."""
        if not self.dp:
            return ("Not trained with differential privacy: there is no formal guarantee. Every image passed the "
                    "screen (no near-copy of a training image, not linked to a training patient), which removes "
                    "the visible leaks but proves nothing.")
        guarantee = f"(ε = {self.epsilon:.3g}, δ = {self.delta:.3g}) per {self.unit}"
        if self.screened:
            return (f"NOT covered by the run's differential-privacy guarantee {guarantee}: the images were screened "
                    "against the member images (--screen), a step that is not differentially private, so which "
                    "candidates were released depends on the training patients beyond what (ε, δ) bounds.")
        return (f"Covered by the run's differential-privacy guarantee {guarantee}: the images come from the DP-trained "
                "model alone and were not screened against the training images (a screen would look at the member "
                "images, which (ε, δ) does not cover).")

    def caveats(self) -> list[str]:
        """What the statement does not cover (release.json ``privacy.caveats``)."""
        caveats = []
        if self.dp and self.unit != "patient":
            caveats.append(f"the unit is one {self.unit}: a patient with k {self.unit}s is protected only at about k·ε")
        if self.dp and self.data_vocabulary:
            caveats.append("labels: the model's label sets and their counts were taken from the member split and are "
                           "stored with the model (pipeline/label_vocabulary.json); (ε, δ) does not cover them "
                           "(retrain with this cxrsynth, which fixes a DP run's label sets from the public schema)")
        return caveats

    def to_json(self) -> dict:
        """The ``privacy`` object of release.json."""
        return {"dp": self.dp, "screened": self.screened, "covered_by_dp": self.covered_by_dp,
                "epsilon": self.epsilon, "delta": self.delta, "unit": self.unit,
                "statement": self.statement(), "caveats": self.caveats()}


def read_privacy(run: Path) -> dict | None:
    """The run's ``privacy.json`` (DP runs only), or None for a run trained without DP.

    Raises:
        CxrsynthError: when privacy.json exists but cannot be read or holds no valid ``epsilon`` and
            ``delta`` — such a run is neither safely DP nor safely non-DP.
    """
    path = run / PRIVACY_FILE
    if not path.exists():
        return None
    fix = "re-run the DP training that writes it (`cxrsynth train --run RUN --resume`)"
    try:
        privacy = json.loads(path.read_text())
        epsilon, delta = float(privacy["epsilon"]), float(privacy["delta"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CxrsynthError(f"{path} holds no valid epsilon and delta ({exc})", fix) from None
    if not (math.isfinite(epsilon) and epsilon >= 0 and 0 <= delta < 1):
        raise CxrsynthError(f"{path}: epsilon {epsilon} / delta {delta} are not a valid guarantee", fix)
    return privacy


def release_privacy(privacy: dict | None, screen: bool | None, data_vocabulary: bool) -> ReleasePrivacy:
    """Decide whether to screen (see :attr:`ReleaseOptions.screen`) and describe the release's privacy.

    Raises:
        CxrsynthError: for ``screen=False`` on a run trained without DP.
    """
    if privacy is None:
        if screen is False:
            raise CxrsynthError(
                "--no-screen was given, but the run was trained without differential privacy: its images are "
                "released only screened",
                "drop --no-screen (unscreened releases are for DP runs, whose guarantee covers them)",
            )
        return ReleasePrivacy(dp=False, screened=True, data_vocabulary=data_vocabulary)
    return ReleasePrivacy(dp=True, screened=bool(screen), epsilon=float(privacy["epsilon"]),
                          delta=float(privacy["delta"]), unit=str(privacy.get("unit", "record")),
                          data_vocabulary=data_vocabulary)


def _warnings(audit: dict, selection: Selection, privacy: ReleasePrivacy) -> list[str]:
    """Warnings for the user; only those that depend on no member data go into a release covered by DP."""
    warnings = []
    if privacy.screened and selection.generated and selection.dropped / selection.generated > HIGH_DROP_WARNING:
        warnings.append(f"{selection.dropped} of {selection.generated} candidates were dropped: the model often "
                        "reproduces its training patients")
    if audit.get("summary", {}).get("leak_detected"):
        warnings.append("the run's audit detected a privacy leak: " + (
            "the screen removes near-copies and images linked to training patients, but it cannot remove every leak"
            if privacy.screened else "these images are not screened; the DP guarantee bounds the leak, but the audit "
            "found one: check that training and accounting are correct") + "; read the audit before sharing")
    if privacy.screened and privacy.dp:
        warnings.append("screened release of a DP run: it is not covered by the run's (ε, δ) guarantee")
    return warnings


def _audit_summary(run: Path, audit: dict, privacy: ReleasePrivacy) -> dict:
    """The ``audit`` object of release.json; a release covered by DP carries none of the audit's findings."""
    path = str(run / "audit" / "audit.json")
    if privacy.covered_by_dp:
        return {"path": path, "leak_detected": None, "verdict": None,
                "note": "left out: the audit is computed from the member images, which the DP guarantee does not cover; "
                        "read it in the run folder"}
    return {"path": path, "leak_detected": audit.get("summary", {}).get("leak_detected"),
            "verdict": audit.get("verdict"), "note": None}


def _has_data_vocabulary(run: Path) -> bool:
    """True when the run's model is label-conditional with label sets taken from the member data."""
    from cxrsynth.model.conditioning import LabelVocabulary
    from cxrsynth.sample import resolve_pipeline_dir

    vocabulary = LabelVocabulary.load(resolve_pipeline_dir(run))
    return vocabulary is not None and not vocabulary.from_schema_only


def refuse_canary_run(run: Path) -> None:
    """Refuse to release images of a run trained with canaries (``cxrsynth train --canaries``).

    Raises:
        CxrsynthError: when the run's config.yaml has ``canaries`` > 0 or the run holds ``canaries/``.
    """
    from cxrsynth.train.canaries import run_canary_count

    count = run_canary_count(run)
    if count:
        raise CxrsynthError(
            f"{run} was trained with {count} canary patients (--canaries): it is an audit run, and its model may "
            "reproduce the canaries",
            "release from a run trained without --canaries (same recipe); use this one for `cxrsynth audit canaries`",
        )


def _overlaps(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b``, lies inside it, or contains it (both resolved, links followed)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_release_target(out: Path, run: Path, options: ReleaseOptions) -> None:
    """Refuse an output folder whose replacement would destroy anything but a previous release.

    ``--overwrite`` deletes the old folder once the new one is complete, so it may only ever
    replace a folder that is itself a release (holds ``release.json``); and the output may never
    be, contain, or lie inside the run folder or its prepared-data folder.

    Args:
        out: the requested ``--out``.
        run: the run folder.
        options: the release options (``data``, ``overwrite``).

    Raises:
        CxrsynthError: when ``out`` is a file, overlaps the run or data folder, or exists and is
            not a previous release (or ``--overwrite`` was not given).
    """
    from cxrsynth.runfolder import run_data_path

    check_output_parent(out)
    protected = [("run", run)]
    try:
        protected.append(("prepared-data", options.data if options.data is not None else run_data_path(run)))
    except CxrsynthError:
        pass  # no readable config.yaml: the run folder itself is still protected
    for what, folder in protected:
        if _overlaps(out, folder):
            raise CxrsynthError(
                f"--out {out} is, contains or lies inside the {what} folder {folder}; a release there would "
                "mix with (or, with --overwrite, delete) that folder",
                "choose an --out outside the run and data folders, e.g. a new folder next to the run",
            )
    if out.exists():
        if not options.overwrite:
            raise CxrsynthError(f"output folder {out} already exists", "choose another --out, or pass --overwrite")
        if not (out / RELEASE_FILE).is_file():
            raise CxrsynthError(
                f"--overwrite would delete {out}, which is not a previous release (it has no {RELEASE_FILE})",
                "choose a new --out; --overwrite only replaces a folder an earlier `cxrsynth release` wrote",
            )


def release_run(
    run: str | Path,
    out: str | Path,
    options: ReleaseOptions | None = None,
    log: Log = _quiet,
    source: Callable[[Path], CandidateSource] | None = None,
) -> dict:
    """Generate, screen (unless a DP run's release is unscreened) and export ``num_images`` synthetic images.

    Args:
        run: the run folder (``pipeline/``, ``audit/audit.json``, ``config.yaml`` naming its data).
        out: the output folder (must not exist unless ``options.overwrite``).
        options: release settings (defaults when None).
        log: receives one line per step (never the secret seed).
        source: builds the candidate source from the scratch folder (default: :class:`SampledCandidates`
            with a :func:`secret_seed`); tests pass one that plants known images.

    Returns:
        The ``release.json`` object (see the module docstring).

    Raises:
        CxrsynthError: for invalid options, a run without a trained model or audit, an unreadable
            privacy.json, no data or too few patients to calibrate the screen, too many candidates
            dropped, ``--no-screen`` on a run without DP, a run trained with canaries, or an ``out``
            that :func:`check_release_target` refuses. Nothing is left at ``out`` then.
    """
    from cxrsynth.audit.runner import resolve_device
    from cxrsynth.runfolder import load_run_data
    from cxrsynth.sample import resolve_pipeline_dir

    options = options or ReleaseOptions()
    options.validate()
    run, out = Path(run), Path(out)
    started = time.perf_counter()
    resolve_pipeline_dir(run)
    refuse_canary_run(run)
    audit = read_audit(run)
    privacy = release_privacy(read_privacy(run), options.screen, _has_data_vocabulary(run))
    check_release_target(out, run, options)
    log(privacy.statement())
    screen: ReleaseScreen | NoScreen = NoScreen()
    if privacy.screened:
        data = load_run_data(run, options.data)
        screen = build_screen(data, options, device=resolve_device(options.device), log=log)
    setup_seconds = time.perf_counter() - started
    with atomic_directory(out, overwrite=options.overwrite) as folder:
        scratch = folder / CANDIDATES_FOLDER
        candidates = source(scratch) if source is not None else SampledCandidates(run, scratch, options, secret_seed())
        selection = select_release(screen, candidates, options.num_images, options.candidate_limit(), log)
        settings = candidates.settings() if hasattr(candidates, "settings") else {}
        shutil.rmtree(scratch, ignore_errors=True)  # rejected candidates and the seed never leave the scratch folder
        rows = write_images(folder, selection, options.image_format)
        atomic_write_text(folder / MANIFEST_FILE, manifest_text(rows))
        warnings = _warnings(audit, selection, privacy)
        report = {
            "format": RELEASE_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run": str(run),
            "num_images": len(rows),
            "image_format": options.image_format,
            "sampling": {key: settings.get(key) for key in PUBLIC_SAMPLING_KEYS},
            "privacy": privacy.to_json(),
            "candidates": {"generated": selection.generated, "screened": selection.generated if privacy.screened else 0,
                           "passed": selection.passed, "released": len(rows), "dropped": selection.dropped,
                           "rounds": selection.rounds, "max_candidates": options.candidate_limit()},
            "dropped": ({"near_copy": selection.near_copy + selection.both,
                         "linked_to_member": selection.linked_to_member + selection.both,
                         "both": selection.both, "total": selection.dropped} if privacy.screened else None),
            "screens": screen.describe() if isinstance(screen, ReleaseScreen) else None,
            "audit": _audit_summary(run, audit, privacy),
            # A release covered by DP carries no member-dependent sentence (the audit's finding is logged only).
            "warnings": [] if privacy.covered_by_dp else warnings,
            "seconds": {"screen_setup": round(setup_seconds, 2), "total": round(time.perf_counter() - started, 2)},
        }
        atomic_write_json(folder / RELEASE_FILE, report)
    for warning in warnings:
        log(f"warning: {warning}")
    log(f"released {len(rows)} images to {out} ({selection.dropped} of {selection.generated} candidates dropped)"
        if privacy.screened else f"released {len(rows)} unscreened images to {out}")
    return report
