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
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from cxrsynth.audit.runner import resolve_device
from cxrsynth.dicom_export import new_synthetic_series, write_synthetic_dicom
from cxrsynth.fsutil import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text
from cxrsynth.release.candidates import (PUBLIC_SAMPLING_KEYS, CandidateSource, SampledCandidates, Selection, secret_seed,
                                         select_release)
from cxrsynth.release.checks import (ReleasePrivacy, has_data_vocabulary, check_release_target, read_audit, read_privacy,
                                     refuse_canary_run, release_privacy)
from cxrsynth.release.options import (CANDIDATES_FOLDER, HIGH_DROP_WARNING, MANIFEST_COLUMNS, MANIFEST_FILE, RELEASE_FILE,
                                      RELEASE_FORMAT, Log, ReleaseOptions, quiet_log)
from cxrsynth.release.screen import NoScreen, ReleaseScreen, build_screen
from cxrsynth.runfolder import audit_path, load_run_data, resolve_pipeline_dir


def release_file_name(position: int, image_format: str) -> str:
    """File name of the ``position``-th released image (``synthetic_000000.png`` / ``.dcm``)."""
    return f"synthetic_{position:06d}{'.dcm' if image_format == 'dicom' else '.png'}"


def write_images(folder: Path, selection: Selection, image_format: str) -> list[dict[str, str]]:
    """Write the released images into ``folder``; returns their manifest rows (``file`` renamed)."""
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
    path = str(audit_path(run))
    if privacy.covered_by_dp:
        return {"path": path, "leak_detected": None, "verdict": None,
                "note": "left out: the audit is computed from the member images, which the DP guarantee does not cover; "
                        "read it in the run folder"}
    return {"path": path, "leak_detected": audit.get("summary", {}).get("leak_detected"),
            "verdict": audit.get("verdict"), "note": None}


def release_run(
    run: str | Path,
    out: str | Path,
    options: ReleaseOptions | None = None,
    log: Log = quiet_log,
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
    options = options or ReleaseOptions()
    options.validate()
    run, out = Path(run), Path(out)
    started = time.perf_counter()
    resolve_pipeline_dir(run)
    refuse_canary_run(run)
    audit = read_audit(run)
    privacy = release_privacy(read_privacy(run), options.screen, has_data_vocabulary(run))
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
