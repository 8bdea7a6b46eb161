"""The release screen: drop candidates that are near-copies of a member image or re-identify a member patient."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxrsynth.audit.memorization import CARLINI_NEIGHBOURS, flag_memorized
from cxrsynth.audit.reidentification import member_gallery
from cxrsynth.data.prepared import PreparedData
from cxrsynth.errors import CxrsynthError
from cxrsynth.release.options import Log, ReleaseOptions, quiet_log

CALIBRATION_FRACTION = 0.2
"""Share of holdout+test patients kept out of the network's training to calibrate its threshold."""
MIN_CALIBRATION_PATIENTS = 2


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


def build_screen(data: PreparedData, options: ReleaseOptions, device=None, log: Log = quiet_log) -> ReleaseScreen:
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
