"""What a release checks before it generates anything: the audit, the DP guarantee, canaries, and the --out folder."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import check_output_parent
from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.release.options import RELEASE_FILE, ReleaseOptions
from cxrsynth.runfolder import PRIVACY_FILE, audit_path, resolve_pipeline_dir, run_data_path
from cxrsynth.train.canaries import run_canary_count

def read_audit(run: Path) -> dict:
    """The run's ``audit/audit.json``.

    Raises:
        CxrsynthError: when the run has not been audited (or the file is unreadable).
    """
    path = audit_path(run)
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


def has_data_vocabulary(run: Path) -> bool:
    """True when the run's model is label-conditional with label sets taken from the member data."""
    vocabulary = LabelVocabulary.load(resolve_pipeline_dir(run))
    return vocabulary is not None and not vocabulary.from_schema_only


def refuse_canary_run(run: Path) -> None:
    """Refuse to release images of a run trained with canaries (``cxrsynth train --canaries``).

    Raises:
        CxrsynthError: when the run's config.yaml has ``canaries`` > 0 or the run holds ``canaries/``.
    """
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
