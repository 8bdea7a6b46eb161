"""``cxrsynth audit``: does the model, or do its synthetic images, reveal who was in the training set?

The runner picks the audited set, runs every applicable attack of the registry
(:mod:`cxrsynth.audit.registry`), computes the metrics (:mod:`cxrsynth.audit.metrics`), the
memorization test (:mod:`cxrsynth.audit.memorization`) and patient re-identification
(:mod:`cxrsynth.audit.reidentification`), and writes ``RUN/audit/`` atomically:

* ``audit.json`` — the report below (no image or patient ids: it may be shared);
* ``scores.csv`` — one row per audited image: ``image_id``, ``patient_id``, ``split``
  (member|holdout), ``member`` (1|0), ``half`` (calibration|evaluation), then each attack's raw score
  in its published orientation; ``cxrsynth audit stats`` reads it.
  Sensitive (it names the training images): it stays in the run folder;
* ``roc.png`` — ROC curves of every attack on the evaluation half, log-log, FPR 1e-3..1;
* ``memorization.png`` — DCR histograms and the 16 closest (synthetic | training image) pairs.

Audited set
-----------
One seeded image per patient of ``member`` and of ``holdout`` (patients never trained on, from the
same pool); ``n`` patients of each, ``n`` = ``--num-members`` or min(1000, member patients,
holdout patients). Each group is split in half at random: the **calibration** half is the only
data on which anything is chosen or fitted (score direction, threshold, the blind classifier);
every reported number comes from the **evaluation** half.

audit.json (format 2)
---------------------
Top level:

* ``format`` (int) — 2 (format 1 had binomial re-identification and DCR tests and an unadjusted leak flag).
* ``run`` (str), ``data`` (str), ``samples`` (str|null) — folders used.
* ``seed`` (int) — seed of every random choice.
* ``n_members`` / ``n_nonmembers`` (int) — audited members / holdout non-members (equal).
* ``n_calibration`` / ``n_evaluation`` (object) — ``{"members": int, "nonmembers": int}`` per half.
* ``delta`` (float) — δ of the ε lower bounds: ``delta`` of ``RUN/privacy.json`` for a DP run, else 1e-5;
  ``delta_source`` (str) — ``privacy.json`` or ``default``.
* ``unit`` (str) — ``patient`` (every image of an audited patient, up to a cap, is scored and the
  ``patient_attacks`` are added) or ``image`` (one image per patient); ``n_scored_images`` (int) —
  images scored (= 2n at the image unit).
* ``settings`` (object) — ``timestep`` (int|null: null means each attack that selects one chose it on
  calibration, see ``attacks.<name>.selected``), ``timestep_default`` (int: the t of attacks that do
  not select one), ``max_images_per_patient`` (int; 1 at the image unit), ``noise_draws``,
  ``secmi_timestep``, ``secmi_interval``,
  ``batch_size``, ``device``, ``conditioning`` (``unconditional``; ``labels``: a conditional UNet
  given each audited image's label set; ``null``: the null class for every image because some
  audited label set is unknown to the model; ``not used``: no white-box attack ran).
* ``attacks`` (object) — attack name → result (below), for each attack that ran, scored on each
  audited patient's designated image.
* ``patient_attacks`` (object) — at the patient unit, attack name → the same keys measured on the
  patients' aggregated scores (:func:`cxrsynth.audit.patients.patient_metrics`), plus
  ``aggregation`` (mean|min|max: of the AUC, its interval, ``p_value_auc``, balanced accuracy),
  ``tail_aggregation`` (of ``p_value_tail``, the TPRs at low FPR and the ε lower bound), both chosen
  on calibration patients only, ``calibration_auc_by_aggregation``,
  ``calibration_tail_by_aggregation``, ``images_per_patient`` (``mean``, ``max``). Their tests join
  the family as ``<attack>@patient:auc`` / ``:tail``. Empty at the image unit.
* ``reference_models`` (object|null) — with ``--reference-models K``: ``count``, ``steps``,
  ``train_seconds``, ``train_seconds_per_model``, ``n_pool_patients``, ``n_population``, ``design``,
  ``resumed``, ``reused`` (model indices), ``folder``, ``notes``
  (:meth:`cxrsynth.audit.reference.ReferenceModels.report`); null without.
* ``skipped_attacks`` (object) — attack name → why it did not run (e.g. no synthetic samples).
* ``memorization`` (object|null), ``memorization_skipped`` (str|null) — below.
* ``reidentification`` (object|null), ``reidentification_skipped`` (str|null) — below.
* ``domain_classifier`` (object|null) — feature extractor of ``nn_domain`` and the feature DCR:
  ``path``, ``split`` (``test``), ``reused`` (bool), ``feature_dim``; null when not used, with
  ``domain_classifier_skipped`` (str|null) saying why.
* ``summary`` (object) — ``leak_detected`` (bool: some test of the family is rejected by
  Holm–Bonferroni at ``family_alpha``; when nothing leaks at most 5% of audits raise it — see
  :mod:`cxrsynth.audit.summary` for the family), ``tests`` (list of ``{"name", "p_value",
  "adjusted_p_value", "rejected"}``: every test in the family, e.g. ``loss:auc``, ``loss:tail``,
  ``memorization:copies``, ``memorization:dcr_pixel``, ``memorization:dcr_domain``,
  ``reidentification:links``), ``family_alpha`` (0.05), ``family_method`` (``holm-bonferroni``),
  ``attacks_beating_chance`` (list of attacks with a rejected test, blind excluded),
  ``worst_tpr_at_1pct_fpr`` / ``worst_tpr_at_zero_fpr`` / ``worst_eps_lower_bound`` (``{"attack",
  "value"}`` of the highest among model and sample attacks, or null; descriptive: they do not raise
  the flag alone), ``blind_check_passed`` (bool|null: the lower end of blind's AUC CI is ≤ 0.5,
  i.e. simple image statistics do not tell members from holdout; null when blind did not run).
* ``power`` (object) — what this audit would have missed (:func:`cxrsynth.audit.summary.power_report`):
  ``min_detectable_auc`` (float|null), ``min_detectable_tpr`` (float|null: TPR at ``at_fpr`` = 0),
  the smallest effects the first Holm step (level ``alpha_per_test`` = ``alpha``/``n_tests``)
  detects with probability ``power`` (0.8) at ``n_members`` vs ``n_nonmembers`` evaluated; ``text``
  (str, the same in one sentence).
* ``patient_ids`` (object) — ``real`` (bool, from the prepared data's meta.json),
  ``understates_leakage`` (bool: true without real patient ids, when member and holdout may share
  real patients), ``note`` (str|null: the caveat, also in ``warnings`` and the verdict).
* ``verdict`` (str) — the summary in plain words.
* ``warnings`` (list of str).
* ``seconds`` (object) — wall-clock seconds: ``model_load``, ``domain_classifier``,
  ``memorization``, ``reidentification``, ``total``.

``attacks.<name>``:

* ``access`` (white-box|black-box|none), ``description`` (str).
* ``auc`` (float) — evaluation-half AUC in the **published** direction (never flipped; below 0.5
  when members score the "wrong" way).
* ``auc_ci`` ([low, high]|null) — 95% percentile bootstrap interval of ``auc``.
* ``published_direction`` / ``direction`` (lower|higher) — which scores mean "member" as published
  and as chosen on the calibration half (an attacker with calibration data would flip an inverted
  score). Every number below uses ``direction``, except the low-FPR ones.
* ``tail_direction`` (lower|higher) — the direction of the TPRs at low FPR, ``low_fpr`` and
  ``p_value_tail``: the one that puts more calibration members above every calibration non-member
  (ties: ``direction``), since a leak confined to a few members barely moves the AUC.
* ``tpr_at_1pct_fpr`` / ``tpr_at_0.1pct_fpr`` / ``tpr_at_zero_fpr`` (float|null) — evaluation-half TPR
  at the threshold fixed on the **calibration** half for FPR ≤ 1% / 0.1% / 0 (ties not split, no
  interpolation); null when the evaluation half has fewer than 100 / 1000 non-members, explained in
  ``notes``. ``low_fpr`` (object) — per key: ``threshold`` (raw score), ``target_fpr``, ``tpr``,
  ``fpr`` (the evaluation FPR actually reached; may exceed the target), ``true_positives``,
  ``false_positives``, ``optimistic_tpr`` (the evaluation half's own best TPR at that FPR: optimistic,
  its threshold sees the scores it is judged on), ``measurable`` (bool).
* ``threshold`` (float) — the calibration threshold on the raw score (member if score ≤ it for
  ``lower``, ≥ it for ``higher``) that maximises calibration balanced accuracy; used only for
  ``balanced_accuracy`` — (TPR + TNR)/2 of that threshold on the evaluation half.
* ``eps_threshold`` (float) — the calibration threshold that maximises the ε lower bound itself
  (Jagielski et al. 2020); ``eps_lower_bound`` (float) — the bound of that threshold on the
  evaluation half: max(ln((TPR_low − δ)/FPR_high), ln((TNR_low − δ)/FNR_high)), 0 if not positive,
  with one-sided 95% Clopper–Pearson bounds (the pair holds with ≥ 90% joint confidence);
  ``eps_bound`` (object) — ``tpr_low``, ``fpr_high``, ``tnr_low``, ``fnr_high``, ``true_positives``,
  ``false_positives``.
* ``p_value_auc`` (float) — one-sided Mann–Whitney p on the evaluation half (members score higher in
  ``direction``); ``p_value_tail`` (float) — hypergeometric p of the members among those called
  members at the calibration zero-FPR threshold (``low_fpr.tpr_at_zero_fpr.threshold``): the test
  for leaks that show only at low FPR. Both enter the leak flag's family (blind excluded).
* ``n_eval_members`` / ``n_eval_nonmembers`` (int).
* ``nfe_per_image`` (float) — UNet forward passes per audited image, counted while it ran (at the
  patient unit, per scored image, the calibration sweeps included).
* ``selected`` (object|null) — what the attack chose on the calibration half and how (e.g. the
  timestep of loss/pia/pian/sima with every candidate's calibration AUC, GSA₁ or GSA₂ for gsa, the
  reference models' count and NFE for lira/rmia); null when it chooses nothing.
* ``seconds`` (float) — wall-clock seconds of scoring; ``seconds_per_1000_images`` (float).
* ``notes`` (list of str).

``memorization`` (needs synthetic samples):

* ``n_synthetic``, ``n_member_images`` (every training image), ``n_member_patients``,
  ``n_dcr_reference_per_split`` (int).
* ``pixel_distance`` (str) — the distance used; ``ratio_neighbours`` (int, 50 or fewer: nearest
  member *patients*, one image each, ``ratio_denominator`` says so); ``ratio_threshold`` (float, 1/6
  = Carlini et al.'s α·δ).
* ``n_flagged`` (int), ``fraction_flagged`` (float), ``flagged_samples`` (list of sample file
  names whose copy ratio is below the threshold), ``min_ratio``, ``median_ratio`` (float).
* ``dcr_pixel`` / ``dcr_domain`` (object|null) — ``member`` and ``holdout`` DCR quantiles
  (``q05``, ``q25``, ``q50``, ``q75``, ``mean``), ``fraction_closer_to_member`` (≈0.5 when nothing
  leaks), ``p_value`` (relabelling test of the samples nearest to a member image, one-sided towards
  members; valid when samples crowd onto a few real images), ``test`` (str).
* ``copy_test`` (object|null) — the copy test as a flag-raising test: ``n_flagged_pool`` (samples
  whose copy ratio against member *and* holdout patients is below the threshold),
  ``n_flagged_member``, ``n_flagged_holdout``, ``p_value`` (relabelling of the pool's patients),
  ``pool_patients`` (``{"member", "holdout"}``), ``test`` (str).
* ``closest_pairs`` (list) — the 16 samples closest to a training image: ``sample``,
  ``pixel_distance``, ``ratio``.

``reidentification`` (needs synthetic samples and enough holdout/test patients):

* ``verification_auc`` (float) — same- vs different-patient AUC on pairs of unseen patients;
  ``verification_pairs`` (int, same-patient pairs).
* ``n_train_patients``, ``n_verification_patients``, ``gallery_patients_per_split`` (int);
  ``gallery_images`` (``{"member": int, "holdout": int}``).
* ``n_synthetic``, ``linked_to_member`` (int), ``fraction_linked_to_member``,
  ``fraction_linked_to_holdout`` (float; equal ⇒ no patient-level leak detected),
  ``p_value`` (relabelling test over the gallery patients, one-sided towards members; valid with
  unequal images per patient), ``test`` (str), ``mean_similarity`` (float).
* ``network`` (object) — ``steps``, ``input_size``, ``embedding_dim``, ``seconds``, ``final_loss``, ``seed``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cxrsynth.audit import metrics
from cxrsynth.audit.patients import (
    DEFAULT_MAX_IMAGES_PER_PATIENT,
    UNITS,
    ScoredImages,
    aggregation_label,
    patient_images,
    patient_metrics,
)
from cxrsynth.audit.summary import PATIENT_SUFFIX, power_report, summarise, write_verdict
from cxrsynth.audit.registry import (
    NEEDS_FEATURES,
    NEEDS_MODEL,
    NEEDS_POPULATION,
    NEEDS_REFERENCE,
    NEEDS_SAMPLES,
    AttackContext,
    AttackSettings,
    AttackSpec,
    get_attack,
    registered_attacks,
)
from cxrsynth.config import PRIVACY_FILE
from cxrsynth.data.prepared import PreparedData
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_directory, atomic_write_json, atomic_write_text
from cxrsynth.runfolder import load_run_data, locks_run, read_samples

AUDIT_FOLDER = "audit"
AUDIT_FILE, SCORES_FILE, ROC_FILE, MEMORIZATION_FILE = "audit.json", "scores.csv", "roc.png", "memorization.png"
REPORT_FORMAT = 2
DEFAULT_MAX_MEMBERS = 1000
MIN_PER_GROUP = 4
"""Audited patients per group needed for two per half."""

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    """Default log: discard."""


@dataclass
class AuditOptions:
    """Settings of one audit (``cxrsynth audit`` options).

    Attributes:
        attacks: attack names to run; None runs every registered attack that applies.
        num_members: audited members (and as many holdout non-members); None: min(1000, available).
        seed: seed of every random choice.
        samples: synthetic images for the black-box attacks and memorization (default ``RUN/samples``).
        timestep: t of the loss, recon, PIA and SimA attacks; None: chosen on the calibration half where an attack can.
        noise_draws: noise draws of the loss and recon attacks.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per UNet forward pass.
        data: prepared-data folder (default: the one in ``RUN/config.yaml``).
        classifier_steps: training steps of the domain classifier (features of ``nn_domain``).
        reid_steps: training steps of the patient-verification network.
        progress: show progress bars.
        secmi_timestep: t_sec of SecMI.
        secmi_interval: DDIM step k of SecMI.
        unit: ``image`` (one image per patient) or ``patient`` (also every image of each audited
            patient, up to ``max_images_per_patient``, aggregated per patient); None: ``patient``
            when the data has real patient ids, else ``image``.
        max_images_per_patient: cap of the patient-level images per patient.
        reference_models: K reference models for LiRA/RMIA (0: none, those attacks are skipped).
        reference_steps: training steps of each reference model (None: the run's own).
    """

    attacks: tuple[str, ...] | None = None
    num_members: int | None = None
    seed: int = 0
    samples: Path | None = None
    timestep: int | None = None
    noise_draws: int = 8
    device: str = "auto"
    batch_size: int = 64
    data: Path | None = None
    classifier_steps: int = 400
    reid_steps: int = 300
    progress: bool = False
    secmi_timestep: int = 100
    secmi_interval: int = 10
    unit: str | None = None
    max_images_per_patient: int = DEFAULT_MAX_IMAGES_PER_PATIENT
    reference_models: int = 0
    reference_steps: int | None = None


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditedSet:
    """The audited images, shuffled together.

    Attributes:
        rows: image rows into the prepared data.
        is_member: True for member images, False for holdout.
        is_calibration: True for the calibration half, False for the evaluation half.
    """

    rows: np.ndarray
    is_member: np.ndarray
    is_calibration: np.ndarray

    @property
    def n_per_group(self) -> int:
        """Members audited (= non-members audited)."""
        return int(self.is_member.sum())


def select_audited_set(data: PreparedData, num_members: int | None, seed: int) -> AuditedSet:
    """One seeded image per patient, ``n`` member and ``n`` holdout patients, halves assigned at random.

    Raises:
        CxrsynthError: when ``num_members`` exceeds the patients available, or fewer than 4
            patients per group are available.
    """
    member_rows = data.one_image_per_patient("member", seed)
    holdout_rows = data.one_image_per_patient("holdout", seed)
    available = min(len(member_rows), len(holdout_rows))
    if available < MIN_PER_GROUP:
        raise CxrsynthError(
            f"the audit needs at least {MIN_PER_GROUP} member and {MIN_PER_GROUP} holdout patients; {data.root} has "
            f"{len(member_rows)} member and {len(holdout_rows)} holdout patients",
            "prepare the data with a holdout split (--holdout-fraction) and enough patients",
        )
    wanted = min(DEFAULT_MAX_MEMBERS, available) if num_members is None else int(num_members)
    if wanted < MIN_PER_GROUP:
        raise CxrsynthError(
            f"--num-members {wanted} is below the audit's minimum of {MIN_PER_GROUP} patients per group",
            f"use --num-members between {MIN_PER_GROUP} and {available}",
        )
    if wanted > available:
        raise CxrsynthError(
            f"--num-members {wanted} is more than the {available} patients available per group "
            f"({len(member_rows)} member, {len(holdout_rows)} holdout patients in {data.root})",
            f"use --num-members between {MIN_PER_GROUP} and {available}",
        )
    rng = np.random.default_rng([seed, 59])
    picked_members = rng.choice(member_rows, size=wanted, replace=False)
    picked_holdout = rng.choice(holdout_rows, size=wanted, replace=False)
    calibration = np.zeros(wanted, dtype=bool)
    calibration[: wanted // 2] = True
    rows = np.concatenate([picked_members, picked_holdout])
    is_member = np.concatenate([np.ones(wanted, bool), np.zeros(wanted, bool)])
    is_calibration = np.concatenate([rng.permutation(calibration), rng.permutation(calibration)])
    order = rng.permutation(len(rows))
    return AuditedSet(rows=rows[order], is_member=is_member[order], is_calibration=is_calibration[order])


def read_delta(run_dir: Path) -> tuple[float, str]:
    """δ for the ε lower bounds: ``delta`` of ``RUN/privacy.json`` when present, else 1e-5.

    Returns:
        ``(delta, source)`` with source ``privacy.json`` or ``default``.

    Raises:
        CxrsynthError: when privacy.json exists but holds no valid ``delta``.
    """
    path = run_dir / PRIVACY_FILE
    if not path.is_file():
        return metrics.DEFAULT_DELTA, "default"
    try:
        delta = float(json.loads(path.read_text())["delta"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CxrsynthError(f"{path} holds no valid 'delta' ({exc})", "re-run the DP training that writes it") from None
    if not 0.0 <= delta < 1.0:
        raise CxrsynthError(f"{path}: delta {delta} is outside [0, 1)", "re-run the DP training that writes it")
    return delta, PRIVACY_FILE


def parse_attacks(text: str | None) -> tuple[str, ...] | None:
    """``"loss,pia"`` → ("loss", "pia"); None or ``all`` → None (every applicable attack).

    Raises:
        CxrsynthError: for an unknown or repeated name.
    """
    if text is None or text.strip().lower() in ("", "all"):
        return None
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        get_attack(name)
    if len(set(names)) != len(names):
        raise CxrsynthError(f"--attacks names an attack twice: {text}")
    return names


def resolve_device(device: str):
    """``auto`` → CUDA when available else CPU; otherwise the named device.

    Raises:
        CxrsynthError: for CUDA without a GPU or an unknown device name.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise CxrsynthError(f"unknown --device {device!r}", "use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CxrsynthError("--device cuda was requested but CUDA is not available", "use --device cpu or auto")
    return resolved


@dataclass
class SyntheticImages:
    """Released synthetic images: uint8 M×S×S with their file names, from ``folder``."""

    images: np.ndarray
    names: list[str]
    folder: Path


def load_synthetic(folder: Path, size: int, warnings: list[str]) -> tuple[SyntheticImages | None, str | None]:
    """The samples of ``folder`` (resized to ``size`` if needed), or ``(None, why)`` when there are none."""
    if not folder.is_dir() or not any(folder.glob("*.png")) and not any(folder.glob("*.dcm")):
        return None, f"no synthetic images in {folder}: run `cxrsynth sample --run RUN` or pass --samples DIR"
    synthetic = read_samples(folder, None, size, warnings)
    return SyntheticImages(synthetic.images, [path.name for path in synthetic.files], folder), None


def conditioning_labels(model, data: PreparedData, rows: np.ndarray):
    """Class ids for the audited rows of a conditional model, and what was used.

    Returns:
        ``(class_labels or None, "unconditional" | "labels" | "null")``: each image's own label set
        when the model knows every audited label set; else the null class for all images, so that
        members and non-members are treated alike.
    """
    import torch

    vocabulary = model.vocabulary
    if vocabulary is None:
        return None, "unconditional"
    cells = data.index["labels"].iloc[rows].tolist()
    try:
        return vocabulary.encode_training_labels(cells), "labels"
    except CxrsynthError:
        return torch.full((len(rows),), vocabulary.null_class, dtype=torch.long), "null"


# ---------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------


def _missing_need(spec: AttackSpec, reasons: dict[str, str | None]) -> str | None:
    for need in (NEEDS_MODEL, NEEDS_SAMPLES, NEEDS_FEATURES, NEEDS_REFERENCE, NEEDS_POPULATION):
        if need in spec.needs and reasons.get(need):
            return reasons[need]
    return None


def run_attack(spec: AttackSpec, context: AttackContext) -> tuple[np.ndarray, float, float]:
    """Score the audited images with one attack.

    Returns:
        ``(scores, nfe_per_image, seconds)``; NFE counted on the model's forward counter.

    Raises:
        CxrsynthError: when the attack returns anything but one finite score per image.
    """
    before = context.model.image_forwards if context.model is not None else 0
    started = time.perf_counter()
    scores = np.asarray(spec.score(context), dtype=np.float64)
    seconds = time.perf_counter() - started
    if scores.shape != (len(context.images),) or not np.all(np.isfinite(scores)):
        raise CxrsynthError(
            f"attack {spec.name!r} returned {scores.shape} scores for {len(context.images)} images, or non-finite ones",
            "check that the model's weights are finite (a diverged run), or leave the attack out with --attacks",
        )
    forwards = (context.model.image_forwards - before) if context.model is not None else 0
    return scores, forwards / len(context.images), seconds


def roc_curve_of(name: str, result: dict, scores: np.ndarray, audited: AuditedSet):
    """The evaluation-half ROC of an attack in its chosen direction, for ``roc.png``."""
    from cxrsynth.audit.plots import RocCurve

    evaluation = ~audited.is_calibration
    chosen = metrics.membership_scores(scores, result["direction"])[evaluation]
    fpr, tpr, _ = metrics.roc_points(audited.is_member[evaluation], chosen)
    inverted = result["direction"] != result["published_direction"]
    return RocCurve(name, fpr, tpr, 1.0 - result["auc"] if inverted else result["auc"], inverted)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def scores_csv(data: PreparedData, audited: AuditedSet, scored: ScoredImages, scores: dict[str, np.ndarray]) -> str:
    """Text of ``scores.csv``: image_id, patient_id, split, member, half, image_level, then one column per attack.

    One row per scored image; ``image_level`` is 1 for the one image per patient of the image-level
    results. The file is the input format of ``cxrsynth audit stats`` (:mod:`cxrsynth.audit.scores`),
    which averages the rows of a patient.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_id", "patient_id", "split", "member", "half", "image_level", *scores])
    selected = data.index.iloc[scored.rows]
    for i, (image_id, patient_id) in enumerate(zip(selected["image_id"].tolist(), selected["patient_id"].tolist())):
        owner = scored.owner[i]
        writer.writerow([
            image_id,
            patient_id,
            "member" if audited.is_member[owner] else "holdout",
            int(audited.is_member[owner]),
            "calibration" if audited.is_calibration[owner] else "evaluation",
            int(i < scored.n_patients),
            *(repr(float(values[i])) for values in scores.values()),
        ])
    return buffer.getvalue()


def _selected_specs(options: AuditOptions) -> list[AttackSpec]:
    if options.attacks is None:
        return registered_attacks()
    return [get_attack(name) for name in options.attacks]


def load_white_box_model(run_dir: Path, data: PreparedData, rows: np.ndarray, settings: AttackSettings, device):
    """The run's UNet as white-box attacks see it for the image ``rows``, and the conditioning used
    (see :func:`conditioning_labels`).

    Raises:
        CxrsynthError: for a missing or unsafe model, or settings outside its timestep range.
    """
    from cxrsynth.audit.whitebox import WhiteBoxModel
    from cxrsynth.sample import load_sampling_model

    sampling_model = load_sampling_model(run_dir, device)
    settings.validate(int(sampling_model.scheduler.config.num_train_timesteps))
    labels, conditioning = conditioning_labels(sampling_model, data, rows)
    return WhiteBoxModel(sampling_model.unet, sampling_model.scheduler, labels, seed=settings.seed), conditioning


def domain_features(run_dir: Path, data: PreparedData, options: AuditOptions, device, log: Log):
    """Domain-classifier features trained on the ``test`` split (cached by :mod:`cxrsynth.evaluate.domain`).

    Returns:
        ``(features function, audit.json domain_classifier object)``, or ``(None, why)`` when the
        data has no test split (member or holdout features would be in-sample).
    """
    if len(data.rows("test")) == 0:
        return None, "the data has no test split to train the domain classifier on (members and holdout must stay out-of-sample)"
    from cxrsynth.evaluate.domain import classifier_folder, domain_classifier_for_run

    log("domain classifier (trained on the test split) for feature distances")
    classifier, reused = domain_classifier_for_run(run_dir, data, split="test", seed=options.seed,
                                                   steps=options.classifier_steps, device=device,
                                                   progress=options.progress)
    return classifier.features, {"path": str(classifier_folder(run_dir, "test")), "split": "test",
                                 "reused": reused, "feature_dim": classifier.feature_dim}


@dataclass
class AttackResults:
    """What the attacks produced (registry order).

    Attributes:
        results: image-level audit.json entries (``attacks``).
        skipped: attack name → why it did not run.
        scores: raw scores of every scored image (image-level images first).
        curves: image-level ROC curves.
        patient_results: patient-level entries (``patient_attacks``), empty for ``--unit image``.
    """

    results: dict
    skipped: dict
    scores: dict
    curves: list
    patient_results: dict = field(default_factory=dict)


def score_attacks(specs: list[AttackSpec], context: AttackContext, audited: AuditedSet, reasons: dict[str, str | None],
                  delta: float, seed: int, log: Log, scored: ScoredImages | None = None) -> AttackResults:
    """Run every attack whose needs are met and compute its metrics; record why the others were skipped.

    ``context.images`` are the ``scored`` images (the audited set's one image per patient when None);
    image-level metrics use the first ``len(audited.rows)`` of them; with more than one image per
    patient, patient-level metrics (:func:`cxrsynth.audit.patients.patient_metrics`) are added.
    """
    output = AttackResults({}, {}, {}, [])
    n = len(audited.rows)
    with_patients = scored is not None and len(scored.rows) > n
    for spec in specs:
        missing = _missing_need(spec, reasons)
        if missing:
            output.skipped[spec.name] = missing
            log(f"{spec.name}: skipped ({missing})")
            continue
        scores, nfe, elapsed = run_attack(spec, context)
        result = {"access": spec.access, "description": spec.description}
        result.update(metrics.attack_metrics(scores[:n], audited.is_member, audited.is_calibration, spec.member_if,
                                             delta=delta, seed=seed))
        result["selected"] = context.choices.get(spec.name)
        result.update({"nfe_per_image": nfe, "seconds": elapsed,
                       "seconds_per_1000_images": elapsed / len(context.images) * 1000})
        log(f"{spec.name}: AUC {result['auc']:.3f}, ε_lb {result['eps_lower_bound']:.2f} ({elapsed:.1f} s, {nfe:g} NFE/image)")
        output.results[spec.name] = result
        output.scores[spec.name] = scores
        output.curves.append(roc_curve_of(spec.name, result, scores[:n], audited))
        if with_patients:
            patient_result, _ = patient_metrics(scores, scored, audited.is_member, audited.is_calibration,
                                                spec.member_if, delta, seed)
            output.patient_results[spec.name] = {"access": spec.access, **patient_result}
            log(f"{spec.name} (patients, {aggregation_label(patient_result)}): AUC {patient_result['auc']:.3f}")
    return output


UNDERSTATES_NOTE = (
    "This data has no patient ids (each image stands for its own patient), so member and holdout images may come "
    "from the same real patients: the holdout is then not a clean control, and this audit UNDERSTATES leakage."
)


def patient_id_status(data: PreparedData) -> dict:
    """audit.json ``patient_ids``: whether patient ids are real, and the caveat when they are not.

    Patient ids come from ``meta.json`` (``patient_ids``: ``real`` or ``per-image``; older prepared
    folders without the key are taken as real).
    """
    real = data.meta.get("patient_ids", "real") == "real"
    return {"real": real, "understates_leakage": not real, "note": None if real else UNDERSTATES_NOTE}


def _half_counts(audited: AuditedSet) -> dict[str, dict[str, int]]:
    counts = {}
    for half, mask in (("calibration", audited.is_calibration), ("evaluation", ~audited.is_calibration)):
        counts[half] = {"members": int((audited.is_member & mask).sum()),
                        "nonmembers": int((~audited.is_member & mask).sum())}
    return counts


KEPT_ACROSS_AUDITS: tuple[str, ...] = ("reference", "canaries.json", "canaries")
"""Entries of ``RUN/audit/`` that a new audit keeps: cached reference models and the one-run canary audit."""


def keep_audit_state(previous: Path, new: Path) -> None:
    """Carry :data:`KEPT_ACROSS_AUDITS` from the previous audit folder into the new one.

    Files are hard-linked where the file system allows (no copy, and nothing is lost if the new
    folder is discarded: the previous one is removed only after the new one is in place).
    """
    import os
    import shutil

    def link_or_copy(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    for name in KEPT_ACROSS_AUDITS:
        source = previous / name
        if source.is_dir():
            shutil.copytree(source, new / name, copy_function=link_or_copy)
        elif source.is_file():
            link_or_copy(str(source), str(new / name))


def resolve_unit(unit: str | None, data: PreparedData) -> str:
    """``--unit``: as given, or ``patient`` when the data's patient ids are real, else ``image``.

    Raises:
        CxrsynthError: for an unknown unit.
    """
    if unit is None:
        return "patient" if patient_id_status(data)["real"] else "image"
    if unit not in UNITS:
        raise CxrsynthError(f"unknown --unit {unit!r}", f"use one of: {', '.join(UNITS)}")
    return unit


def reference_models_for(run_dir: Path, data: PreparedData, options: AuditOptions, device, log: Log):
    """Reference models for LiRA/RMIA, trained or reused from ``RUN/audit/reference/``.

    Returns:
        ``(ReferenceModels, audit.json reference_models object)``.
    """
    from cxrsynth.audit.reference import prepare_reference_models

    reference = prepare_reference_models(run_dir, data, options.reference_models, options.reference_steps,
                                         options.seed, device, log)
    return reference, reference.report()


def write_outputs(folder: Path, report: dict, scores_text: str, curves: list, memorization_result) -> None:
    """Write audit.json, scores.csv, roc.png and memorization.png into ``folder``."""
    from cxrsynth.audit.plots import plot_memorization, plot_roc

    atomic_write_json(folder / AUDIT_FILE, report)
    atomic_write_text(folder / SCORES_FILE, scores_text)
    n_eval = report["n_evaluation"]["members"]
    plot_roc(curves, folder / ROC_FILE, f"membership inference, evaluation half ({n_eval} vs {n_eval})")
    memorization = report["memorization"]
    if memorization_result is None:
        plot_memorization(folder / MEMORIZATION_FILE, None, None,
                          f"memorization not measured: {report['memorization_skipped']}")
        return
    summary = (f"{memorization['n_flagged']} of {memorization['n_synthetic']} synthetic images flagged "
               f"(copy ratio < {memorization['ratio_threshold']:.3f})")
    plot_memorization(folder / MEMORIZATION_FILE, memorization_result.pixel_dcr, memorization_result.closest_pairs, summary)


@locks_run("cxrsynth audit")
def audit_run(run_dir: str | Path, options: AuditOptions | None = None, log: Log = _quiet) -> dict:
    """Audit a trained run and write ``RUN/audit/`` (audit.json, scores.csv, roc.png, memorization.png).

    Args:
        run_dir: the run folder (``config.yaml``, ``pipeline/``, optionally ``samples/`` and ``privacy.json``).
        options: the audit's settings (defaults when None).
        log: receives one line per stage.

    Returns:
        The report written to ``audit.json``.

    Raises:
        CxrsynthError: for a missing run or data, too few patients, invalid settings, an
            unknown attack name, or a run folder another live process holds (``RUN/.cxrsynth.lock``).
            Nothing is written then; an earlier ``RUN/audit`` is replaced
            only once the new one is complete.
    """
    from cxrsynth.audit.memorization import measure_memorization
    from cxrsynth.audit.reidentification import reidentify

    options = options or AuditOptions()
    run_dir = Path(run_dir)
    started = time.perf_counter()
    specs = _selected_specs(options)
    data = load_run_data(run_dir, options.data)
    audited = select_audited_set(data, options.num_members, options.seed)
    delta, delta_source = read_delta(run_dir)
    device = resolve_device(options.device)
    settings = AttackSettings(timestep=options.timestep, noise_draws=options.noise_draws,
                              secmi_timestep=options.secmi_timestep, secmi_interval=options.secmi_interval,
                              batch_size=options.batch_size, seed=options.seed)
    unit = resolve_unit(options.unit, data)
    scored = patient_images(data, audited.rows, options.max_images_per_patient if unit == "patient" else None,
                            options.seed)
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    log(f"auditing {audited.n_per_group} members vs {audited.n_per_group} holdout non-members (seed {options.seed}"
        f"{f'; {len(scored.rows)} images scored for the patient level' if unit == 'patient' else ''})")

    model, conditioning = None, "not used"
    if any(NEEDS_MODEL in spec.needs for spec in specs):
        clock = time.perf_counter()
        model, conditioning = load_white_box_model(run_dir, data, scored.rows, settings, device)
        seconds["model_load"] = time.perf_counter() - clock

    reasons: dict[str, str | None] = {
        NEEDS_REFERENCE: "no reference models: give --reference-models K to train them",
        NEEDS_POPULATION: None if len(data.rows("test")) else
        "the data has no test split (population images in no model): prepare it with --test-fraction",
    }
    reference, reference_report = None, None
    if options.reference_models > 0 and any(NEEDS_REFERENCE in spec.needs for spec in specs):
        clock = time.perf_counter()
        reference, reference_report = reference_models_for(run_dir, data, options, device, log)
        reasons[NEEDS_REFERENCE] = None
        seconds["reference_models"] = time.perf_counter() - clock
    samples_folder = options.samples if options.samples is not None else run_dir / "samples"
    synthetic, reasons[NEEDS_SAMPLES] = load_synthetic(samples_folder, data.size, warnings)
    features, classifier_report = None, None
    if synthetic is None:
        reasons[NEEDS_FEATURES] = "not needed: no synthetic images"
    else:
        clock = time.perf_counter()
        features, found = domain_features(run_dir, data, options, device, log)
        classifier_report, reasons[NEEDS_FEATURES] = (found, None) if features is not None else (None, found)
        seconds["domain_classifier"] = time.perf_counter() - clock

    scored_images = np.asarray(data.images[scored.rows])
    images = scored_images[: len(audited.rows)]
    calibration_rows = np.flatnonzero(audited.is_calibration[scored.owner])
    context = AttackContext(
        images=scored_images, calibration_rows=calibration_rows,
        calibration_is_member=audited.is_member[scored.owner][calibration_rows],
        settings=settings, model=model, synthetic=synthetic.images if synthetic is not None else None,
        features=features, patients=data.index["patient_id"].to_numpy()[scored.rows], reference=reference,
    )
    attacks = score_attacks(specs, context, audited, reasons, delta, options.seed, log, scored)

    memorization_result, reidentification, reidentification_skipped = None, None, reasons[NEEDS_SAMPLES]
    if synthetic is not None:
        clock = time.perf_counter()
        log(f"memorization: {len(synthetic.images)} synthetic images against the training images")
        member_rows, holdout_rows = np.sort(data.rows("member")), np.sort(data.rows("holdout"))
        patient_of = data.index["patient_id"].to_numpy()
        memorization_result = measure_memorization(
            synthetic.images, synthetic.names, data.images, member_rows,
            images[audited.is_member], images[~audited.is_member], features,
            member_patients=patient_of[member_rows], holdout_rows=holdout_rows,
            holdout_patients=patient_of[holdout_rows], seed=options.seed,
        )
        seconds["memorization"] = time.perf_counter() - clock
        clock = time.perf_counter()
        log("re-identification: training the patient-verification network on holdout+test patients")
        try:
            reidentification = reidentify(data, synthetic.images, seed=options.seed, steps=options.reid_steps,
                                          device=device, progress=options.progress)
            reidentification_skipped = None
        except CxrsynthError as exc:
            reidentification_skipped = exc.problem
        seconds["reidentification"] = time.perf_counter() - clock

    halves = _half_counts(audited)
    report: dict = {
        "format": REPORT_FORMAT,
        "run": str(run_dir),
        "data": str(data.root),
        "samples": str(synthetic.folder) if synthetic is not None else None,
        "seed": options.seed,
        "n_members": audited.n_per_group,
        "n_nonmembers": int((~audited.is_member).sum()),
        "n_calibration": halves["calibration"],
        "n_evaluation": halves["evaluation"],
        "delta": delta,
        "delta_source": delta_source,
        "unit": unit,
        "n_scored_images": len(scored.rows),
        "settings": {
            "timestep": settings.timestep, "timestep_default": settings.fixed_timestep,
            "max_images_per_patient": options.max_images_per_patient if unit == "patient" else 1,
            "noise_draws": settings.noise_draws,
            "secmi_timestep": settings.secmi_timestep, "secmi_interval": settings.secmi_interval,
            "batch_size": settings.batch_size, "device": str(device), "conditioning": conditioning,
        },
        "attacks": attacks.results,
        "patient_attacks": attacks.patient_results,
        "skipped_attacks": attacks.skipped,
        "reference_models": reference_report,
        "memorization": memorization_result.report if memorization_result is not None else None,
        "memorization_skipped": reasons[NEEDS_SAMPLES],
        "reidentification": reidentification,
        "reidentification_skipped": reidentification_skipped,
        "domain_classifier": classifier_report,
        "domain_classifier_skipped": reasons[NEEDS_FEATURES],
        "patient_ids": patient_id_status(data),
        "warnings": warnings,
    }
    report["summary"] = summarise(report)
    report["power"] = power_report(halves["evaluation"]["members"], halves["evaluation"]["nonmembers"],
                                   len(report["summary"]["tests"]))
    if report["patient_ids"]["understates_leakage"]:
        warnings.append(report["patient_ids"]["note"])
    report["verdict"] = write_verdict(report)
    seconds["total"] = time.perf_counter() - started
    report["seconds"] = seconds

    with atomic_directory(run_dir / AUDIT_FOLDER, overwrite=True) as folder:
        write_outputs(folder, report, scores_csv(data, audited, scored, attacks.scores), attacks.curves, memorization_result)
        keep_audit_state(run_dir / AUDIT_FOLDER, folder)
    log(f"wrote {run_dir / AUDIT_FOLDER}")
    return report


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _adjusted_p(report: dict, name: str) -> str:
    """The smallest Holm-adjusted p of an attack's tests, marked when rejected ("" for blind)."""
    tests = [test for test in report["summary"].get("tests", []) if test["name"].split(":")[0] == name]
    if not tests:
        return ""
    best = min(tests, key=lambda test: test["adjusted_p_value"])
    return f"{best['adjusted_p_value']:.3g}" + (" *" if best["rejected"] else "")


TABLE_COLUMNS = ("attack", "access", "member if score", "AUC [95% CI]", "TPR@1%FPR", "TPR@0.1%FPR", "ε_lb", "NFE")
TESTS_COLUMN = "Holm p"


def table_rows(report: dict, with_tests: bool = False) -> list[tuple[str, ...]]:
    """Rows of the summary table (:data:`TABLE_COLUMNS`), plus :data:`TESTS_COLUMN` when ``with_tests``.

    TPRs are at thresholds fixed on the calibration half; the Holm p is the smallest adjusted p of the
    attack's tests (``*`` when rejected at the family-wise 5%). Patient-level results (``--unit
    patient``) follow the image-level ones as ``<attack> @patient (<aggregation>)``
    (:func:`cxrsynth.audit.patients.aggregation_label`).
    """
    rows = []
    levels = [(name, name, result) for name, result in report["attacks"].items()]
    levels += [(f"{name}{PATIENT_SUFFIX}", f"{name} @patient ({aggregation_label(result)})", result)
               for name, result in (report.get("patient_attacks") or {}).items()]
    for name, label, result in levels:
        interval = result["auc_ci"]
        auc = f"{result['auc']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
        direction = result["direction"]
        if result["direction"] != result["published_direction"]:
            direction += " (inverted)"
        nfe = result.get("nfe_per_image")
        row = (label, result["access"], direction, auc, _number(result["tpr_at_1pct_fpr"]),
               _number(result["tpr_at_0.1pct_fpr"]), _number(result["eps_lower_bound"], 2), "" if nfe is None else f"{nfe:g}")
        rows.append(row + ((_adjusted_p(report, name),) if with_tests else ()))
    for name, reason in report.get("skipped_attacks", {}).items():
        rows.append((name, get_attack(name).access, "skipped", reason, "", "", "", "") + (("",) if with_tests else ()))
    return rows


def results_table(report: dict):
    """A rich ``Table`` of the attacks with their Holm-adjusted p (see :func:`table_rows`)."""
    from rich.table import Table

    n = report["n_evaluation"]
    table = Table(title=f"membership inference (evaluation half: {n['members']} members vs {n['nonmembers']} non-members)")
    for column in (*TABLE_COLUMNS, TESTS_COLUMN):
        table.add_column(column, justify="left" if column in TABLE_COLUMNS[:3] else "right")
    for row in table_rows(report, with_tests=True):
        table.add_row(*row)
    return table
