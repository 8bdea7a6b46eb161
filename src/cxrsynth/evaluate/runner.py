"""``cxrsynth evaluate``: measure a run's synthetic images against real ones; write ``RUN/eval/fidelity.json``.

The runner resolves the run's paths (prepared data from ``RUN/config.yaml`` or ``--data``; samples
from ``RUN/samples`` or ``--samples``, generated with the fast default sampler when missing), then
calls the metric modules — which all take plain uint8 image arrays and label matrices — and writes
the report, the plots and the table.

Image sets
----------
* **reference** — every image of the ``--reference`` split (``test`` by default, or ``member``);
* **synthetic** — the samples (the first ``--num-samples`` by manifest index, or all of them);
* **real baseline** — real images no model trained on: the ``holdout`` split (the generator's own
  patient pool, never trained on), or when it is empty the other of ``member``/``test``; a seeded
  random subset of the synthetic set's size (or all when the split is smaller — the domain group
  then subsamples the synthetic set to the baseline's size, ``matched_n``). Every "real
  baseline" value is the same metric computed with the real baseline in place of the synthetic
  images: what "as good as real" looks like at this N. (``member`` is avoided because it is the
  domain classifier's training data: its features are in-sample.)

``fidelity.json`` (format 1) — every key is always present; a metric that was not computed is
``null`` and its ``*_skipped`` key says why — ``"not requested (--metrics)"`` for a group left out
of ``--metrics`` (otherwise ``*_skipped`` is ``null``)
--------------------------------------------------------------------------------------------------
Inception space (torch-fidelity ``inception-v3-compat``, 2048-d pool features; real and synthetic
images both uint8, grayscale repeated to 3 channels):

* ``fid`` (float|null) — Fréchet Inception Distance, synthetic vs reference.
* ``fid_skipped`` (str|null) — why FID is null (e.g. no Inception weights, with how to provide them).
* ``kid`` (float|null) — Kernel Inception Distance, mean over subsets (subset size min(1000, N)).
* ``kid_std`` (float|null) — its standard deviation over subsets.
* ``kid_skipped`` (str|null).
* ``precision`` / ``recall`` (float|null) — Inception-space improved precision/recall (k=3):
  fraction of synthetic images inside the real manifold / of real images inside the synthetic one.
* ``precision_skipped`` / ``recall_skipped`` (str|null).
* ``inception`` (object|null) — ``weights`` (path), ``source`` (option|cache|download),
  ``sha256``, ``standard_weights`` (bool: the published FID weights), ``kid_subset_size``;
  null when no weights were used.

Sample sizes:

* ``n_real`` (int) — reference images used by every reference-vs-synthetic metric.
* ``n_synthetic`` (int) — synthetic images used.
* ``n_real_baseline`` (int) — real-baseline images; ``baseline_split`` (str) — their split.
* ``matched_n`` (int|null) — images of the synthetic set *and* of the real baseline in every
  synthetic-vs-baseline comparison of the domain group (Fréchet distance, k-NN precision/recall):
  ``min(n_synthetic, n_real_baseline)``, the larger set subsampled once (seeded, without
  replacement), so both sides carry the same small-N bias; null when the domain group did not run.

Domain classifier space (:mod:`cxrsynth.evaluate.domain`, 128-d penultimate features):

* ``fd_domain`` (float|null) — Fréchet distance, synthetic vs reference, *at the half-sample sizes of
  ``fd_domain_sampling``*: the mean over half-samples drawn without replacement (``n`` of the
  ``matched_n`` synthetic images, ``n_reference`` reference images), i.e. an unbiased estimate of
  the expected distance between sets of those sizes (:mod:`cxrsynth.evaluate.bootstrap`). It is
  larger than the population distance (the Fréchet distance is biased upwards at small N) and
  comparable only with distances at the same sizes — such as ``fd_domain_real_baseline``.
* ``fd_domain_ci`` ([low, high]|null) — central 95% of the half-sample distances: an approximate 95%
  interval (conservative near 0) for the expected distance at those sizes, not for the population
  distance; it always contains ``fd_domain``.
* ``fd_domain_real_baseline`` (float|null) — the same estimate for the real baseline vs reference, at the
  same sizes and with the same reference halves.
* ``fd_domain_real_baseline_ci`` ([low, high]|null) — its interval, as ``fd_domain_ci``.
* ``fd_domain_sampling`` (object|null) — how both were computed: ``method``
  (``"half-samples without replacement"``), ``matched_n``, ``n`` (synthetic and baseline images per
  half-sample, ``matched_n // 2``), ``n_reference`` (reference images per half-sample), ``resamples``.
* ``precision_domain`` / ``recall_domain`` (float|null) — k-NN precision/recall (k=3), synthetic vs
  reference, on the ``matched_n`` synthetic images (recall depends on the synthetic set's size).
* ``precision_domain_real_baseline`` / ``recall_domain_real_baseline`` (float|null) — the same for the
  ``matched_n`` real-baseline images.
* ``domain_skipped`` (str|null).
* ``domain_classifier`` (object|null) — ``path`` (cache folder), ``task`` (findings|rotation),
  ``label_names``, ``feature_dim``, ``steps``, ``batch_size``, ``seed``, ``reused`` (bool: loaded
  from the cache), ``n_train``, ``training_seconds``.

Downstream utility (:mod:`cxrsynth.evaluate.utility`; conditional runs only):

* ``utility`` (object|null) — ``tstr_auroc``, ``trtr_auroc`` (macro AUROC on real ``test``),
  ``tstr_auroc_ci``, ``trtr_auroc_ci``, ``ratio`` (TSTR/TRTR), ``ratio_ci`` (95% percentile
  intervals of a cluster bootstrap over test *patients*), ``per_finding`` (list of ``finding``,
  ``n_positive_test``, ``n_positive_synthetic`` (among the images TSTR trained on), ``tstr_auroc``,
  ``tstr_auroc_ci``, ``trtr_auroc``, ``trtr_auroc_ci``), ``macro_over`` (findings averaged),
  ``matched_n_train`` (images each classifier trained on: min of the synthetic and member counts),
  ``n_train_synthetic`` / ``n_train_real`` (images TSTR / TRTR trained on; both equal
  ``matched_n_train``), ``n_synthetic_available`` / ``n_real_available`` (before the seeded
  subsampling), ``trtr_retrained`` (true when TRTR is a classifier trained on a subsample of the
  members rather than the run's domain classifier), ``n_test`` (images), ``n_test_patients``,
  ``bootstrap_unit`` (``patient``, or ``image`` when no patient ids were given), ``classifier``
  (steps, batch_size, seed), ``tstr_training_seconds``. Details in :mod:`cxrsynth.evaluate.utility`.
* ``utility_skipped`` (str|null) — e.g. unconditional run, or data without finding labels.

Diversity (:mod:`cxrsynth.evaluate.diversity`):

* ``diversity`` (object|null) — ``ms_ssim_synthetic`` (mean MS-SSIM over random synthetic
  pairs), ``ms_ssim_real`` (same over reference pairs; higher synthetic ⇒ less diverse),
  ``n_pairs``, ``kernel_size``, ``scales``.
* ``diversity_skipped`` (str|null).

Pixel statistics (:mod:`cxrsynth.evaluate.pixel`):

* ``pixel`` (object|null) — ``histogram_wasserstein`` (gray levels, synthetic vs reference),
  ``histogram_wasserstein_real_baseline``, ``power_spectrum_distance`` (RMS log10 difference of
  radial power spectra, decades), ``power_spectrum_distance_real_baseline``.
* ``pixel_skipped`` (str|null).
* ``artefacts`` (object|null; computed with ``pixel``, :mod:`cxrsynth.evaluate.artefacts`) —
  ``rate`` (share of synthetic images whose noise score exceeds the ``quantile`` (0.995) of the
  reference split's scores), ``count``, ``n_synthetic``, ``threshold`` (gray levels),
  ``n_reference``, ``real_baseline`` (the same share for the real-baseline split: ≈ 0.5% by
  construction) and ``n_real_baseline``. ``artefact_rate`` and ``artefact_rate_real_baseline``
  (float|null) repeat ``rate`` and ``real_baseline`` at the top level.

Context:

* ``reference`` (str) — ``test`` or ``member``. ``seed`` (int) — seed of every random choice.
* ``warnings`` (list of str) — e.g. N < 10,000 (FID is biased at small N), non-standard
  Inception weights, resized samples, the rotation proxy task.
* ``metrics`` (list of str) — metric groups requested. ``format`` (int) — 1.
* ``data`` (str), ``samples`` (str) — folders used. ``image_size`` (int) — reference image side.
* ``plots`` (object) — plot name → file name under ``RUN/eval/`` (``pixel_stats``,
  ``domain_features``, ``utility_auroc``; only those drawn).
* ``seconds`` (object) — wall-clock seconds per metric group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cxrsynth.data.prepared import PreparedData
from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate import artefacts, diversity, frechet, inception, pixel, plots
from cxrsynth.evaluate.bootstrap import matched_frechet
from cxrsynth.evaluate.domain import DEFAULT_STEPS, DOMAIN_FOLDER, DomainClassifier, domain_classifier_for_run
from cxrsynth.evaluate.table import NOT_REQUESTED
from cxrsynth.evaluate.utility import RealTrainingSet, UtilityInputs, evaluate_utility, label_matrix_from_texts
from cxrsynth.fsutil import atomic_write_json
from cxrsynth.runfolder import (EVAL_FOLDER, SAMPLE_SETTINGS, SyntheticSet, count_samples, fidelity_path, load_run_data,
                                locks_run, read_sample_settings, read_samples, samples_folder)
from cxrsynth.sample import generate_samples

__all__ = ["EvaluateOptions", "METRIC_GROUPS", "REPORT_KEYS", "evaluate_run", "parse_metrics"]

METRIC_GROUPS: tuple[str, ...] = ("fid", "kid", "prc", "domain", "utility", "diversity", "pixel")
"""Names accepted by ``--metrics`` (``prc`` = Inception precision and recall)."""

REFERENCES: tuple[str, ...] = ("test", "member")
REPORT_FORMAT = 1
FID_RELIABLE_N = 10_000
"""Below this many images per side FID is noticeably biased upwards (Chong & Forsyth, 2020)."""

DEFAULT_GENERATED = 1000
"""Samples generated when none exist and ``--num-samples`` is not given (capped at the reference size)."""

FAST_SAMPLER, FAST_STEPS = "ddpm", 25
"""Sampler of missing samples: stochastic DDPM at 25 steps. Deterministic samplers (DDIM, DPM-Solver)
left pixel speckle on 10% (DDIM-25) to 97% (DDIM-100) of a briefly trained model's images, DDPM-25
on none at the same cost (``bench/speckle.py``, ``bench/RESULTS.md``)."""
"""The sampler used when evaluate must generate samples itself."""

INCEPTION_KEYS = {"fid": ("fid",), "kid": ("kid", "kid_std"), "prc": ("precision", "recall")}
DOMAIN_KEYS = (
    "fd_domain", "fd_domain_ci", "fd_domain_real_baseline", "fd_domain_real_baseline_ci", "fd_domain_sampling",
    "matched_n", "precision_domain", "recall_domain", "precision_domain_real_baseline", "recall_domain_real_baseline",
)

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class EvaluateOptions:
    """Options of :func:`evaluate_run` (the ``cxrsynth evaluate`` options).

    Attributes:
        samples: samples folder (default ``RUN/samples``).
        reference: real split compared with: ``test`` or ``member``.
        num_samples: synthetic images to use (and to generate when fewer exist); None: all present.
        inception_weights: local Inception weights file.
        download_inception: allow downloading the Inception weights when not found locally.
        metrics: metric groups (:data:`METRIC_GROUPS`).
        seed: seed of every random choice (classifier, subsets, pairs, bootstrap, KID subsets).
        data: prepared-data folder overriding the one in ``RUN/config.yaml``.
        classifier_steps: training steps of the domain (and TSTR) classifier.
        bootstrap_resamples: resamples of every bootstrap interval.
        progress: show progress bars.
    """

    samples: Path | None = None
    reference: str = "test"
    num_samples: int | None = None
    inception_weights: Path | None = None
    download_inception: bool = False
    metrics: tuple[str, ...] = METRIC_GROUPS
    seed: int = 0
    data: Path | None = None
    classifier_steps: int = DEFAULT_STEPS
    bootstrap_resamples: int = 200
    progress: bool = False


def parse_metrics(text: str) -> tuple[str, ...]:
    """Parse ``--metrics fid,kid,...`` into known group names (order of :data:`METRIC_GROUPS`).

    Raises:
        CxrsynthError: for an unknown or empty list.
    """
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(METRIC_GROUPS))
    if unknown or not names:
        raise CxrsynthError(
            f"invalid --metrics {text!r}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
            f"use a comma-separated subset of {','.join(METRIC_GROUPS)}",
        )
    return tuple(name for name in METRIC_GROUPS if name in names)


# ---------------------------------------------------------------------------------------------
# Resolving the run's inputs
# ---------------------------------------------------------------------------------------------


def ensure_samples(run_dir: Path, folder: Path, wanted: int, seed: int, progress: bool, log: Log) -> None:
    """Generate samples ``0..wanted-1`` into ``folder`` with the sample stage when fewer exist.

    A folder already holding samples is continued with the settings recorded in its
    ``sampling.json``; a new one gets the fast default (DDPM, 25 steps, ``seed``).

    Raises:
        CxrsynthError: when the run has no trained model to sample from, or ``sampling.json`` is corrupt.
    """
    settings_path = folder / SAMPLE_SETTINGS
    settings = read_sample_settings(settings_path) if settings_path.is_file() else None
    kwargs: dict = {"sampler": FAST_SAMPLER, "steps": FAST_STEPS, "seed": seed, "image_format": "png"}
    if settings is not None:
        kwargs = {
            "sampler": settings["sampler"], "steps": int(settings["steps"]), "seed": int(settings["seed"]),
            "image_format": settings["format"],
        }
        description = str(settings.get("labels", "unconditional"))
        if description.startswith("label:"):
            kwargs["label"] = description[len("label:"):]
        elif description != "unconditional":
            kwargs["label_mix"] = description
        if description != "unconditional":
            kwargs["guidance_scale"] = float(settings["guidance"])
    log(f"generating {wanted} samples into {folder} ({kwargs['sampler']}, {kwargs['steps']} steps)")
    generate_samples(run_dir, wanted, out=folder, progress=progress, **kwargs)


# ---------------------------------------------------------------------------------------------
# Metric groups
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageSets:
    """The three image sets every metric compares (see the module docstring)."""

    reference: np.ndarray
    reference_labels: np.ndarray
    synthetic: np.ndarray
    synthetic_labels: list[str] | None
    baseline: np.ndarray
    baseline_split: str


def baseline_split_for(data: PreparedData, reference: str) -> str:
    """The real split the baseline is drawn from: ``holdout`` when it has images, else the other split.

    ``holdout`` is real data from the generator's own patient pool that neither the generator nor
    the domain classifier ever trained on — exactly what a perfectly generalising generator would
    produce. ``member`` images are the domain classifier's training images: their features are
    in-sample and sit measurably apart from unseen images' (see :mod:`cxrsynth.evaluate.domain`),
    which would make the baseline look worse than real data really is.
    """
    if len(data.rows("holdout")) >= 2:
        return "holdout"
    return "member" if reference == "test" else "test"


def select_image_sets(data: PreparedData, synthetic: SyntheticSet, reference: str, seed: int) -> ImageSets:
    """Load the reference split and a seeded real-baseline subset of the other split.

    Raises:
        CxrsynthError: for an unknown reference name or an empty split.
    """
    if reference not in REFERENCES:
        raise CxrsynthError(f"invalid --reference {reference!r}", f"use one of {', '.join(REFERENCES)}")
    baseline_split = baseline_split_for(data, reference)
    reference_rows = np.sort(data.rows(reference))
    baseline_rows = np.sort(data.rows(baseline_split))
    for split, rows in ((reference, reference_rows), (baseline_split, baseline_rows)):
        if len(rows) < 2:
            raise CxrsynthError(f"the {split} split of {data.root} has {len(rows)} image(s); evaluation needs at least 2")
    rng = np.random.default_rng([seed, 7])
    if len(baseline_rows) > len(synthetic.images):
        baseline_rows = np.sort(rng.choice(baseline_rows, size=len(synthetic.images), replace=False))
    return ImageSets(
        reference=np.asarray(data.images[reference_rows]),
        reference_labels=data.label_matrix(reference_rows),
        synthetic=synthetic.images,
        synthetic_labels=synthetic.labels,
        baseline=np.asarray(data.images[baseline_rows]),
        baseline_split=baseline_split,
    )


SKIP_REASON_CHARS = 1000
"""Longest ``*_skipped`` text kept in fidelity.json (a library's error can list thousands of tensor names)."""


def bounded_reason(text: str, limit: int = SKIP_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis and the cut length noted), for ``*_skipped`` fields."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters cut)"


def inception_group(sets: ImageSets, options: EvaluateOptions, wanted: tuple[str, ...], report: dict, log: Log) -> None:
    """Fill ``fid``/``kid``/``precision``/``recall`` (or their ``*_skipped`` reasons) in ``report``."""
    weights = inception.resolve_inception_weights(options.inception_weights, options.download_inception)
    if weights.path is None:
        for group in wanted:
            for key in INCEPTION_KEYS[group]:
                if not key.endswith("_std"):
                    report[f"{key}_skipped"] = weights.skip_reason
        report["warnings"].append("FID/KID/precision/recall skipped: no Inception weights (see fid_skipped)")
        return
    with inception.checked_weights(weights.path) as (checked, sha256):
        standard = sha256 == inception.STANDARD_WEIGHTS_SHA256
        if not standard:
            report["warnings"].append(
                f"Inception weights {weights.path} are not the standard torch-fidelity file (sha256 {sha256[:12]}… ≠ "
                f"{inception.STANDARD_WEIGHTS_SHA256[:12]}…): FID/KID do not compare with published values"
            )
        log(f"Inception features ({len(sets.reference)} real + {len(sets.synthetic)} synthetic images)")
        try:
            values = inception.inception_metrics(
                sets.reference, sets.synthetic, checked, metrics=wanted, seed=options.seed, progress=options.progress
            )
        except CxrsynthError as exc:
            reason = bounded_reason(exc.problem)
            for group in wanted:
                for key in INCEPTION_KEYS[group]:
                    if not key.endswith("_std"):
                        report[f"{key}_skipped"] = reason
            report["warnings"].append(f"FID/KID/precision/recall skipped: {reason}")
            return
    for key in ("fid", "kid", "kid_std", "precision", "recall"):
        if key in values:
            report[key] = values[key]
    report["inception"] = {
        "weights": str(weights.path), "source": weights.source, "sha256": sha256, "standard_weights": standard,
        "kid_subset_size": values.get("kid_subset_size"),
    }


def domain_group(sets: ImageSets, classifier: DomainClassifier, options: EvaluateOptions, report: dict) -> dict:
    """Fill the ``*_domain`` keys; returns the feature sets (for the projection plot)."""
    features = {
        "reference": classifier.features(sets.reference),
        "synthetic": classifier.features(sets.synthetic),
        "baseline": classifier.features(sets.baseline),
    }
    matched = matched_frechet(
        features["reference"], features["synthetic"], features["baseline"],
        resamples=options.bootstrap_resamples, seed=options.seed,
    )
    report["fd_domain"], report["fd_domain_ci"] = matched.synthetic.estimate, matched.synthetic.interval
    report["fd_domain_real_baseline"] = matched.baseline.estimate
    report["fd_domain_real_baseline_ci"] = matched.baseline.interval
    report["matched_n"] = matched.matched_n
    report["fd_domain_sampling"] = {
        "method": "half-samples without replacement", "matched_n": matched.matched_n, "n": matched.half_n,
        "n_reference": matched.half_n_reference, "resamples": matched.resamples,
    }
    synthetic_pr = frechet.knn_precision_recall(features["reference"], features["synthetic"][matched.synthetic_rows])
    baseline_pr = frechet.knn_precision_recall(features["reference"], features["baseline"][matched.baseline_rows])
    report["precision_domain"], report["recall_domain"] = synthetic_pr.precision, synthetic_pr.recall
    report["precision_domain_real_baseline"] = baseline_pr.precision
    report["recall_domain_real_baseline"] = baseline_pr.recall
    return features


def utility_group(sets: ImageSets, classifier: DomainClassifier, options: EvaluateOptions, data: PreparedData, report: dict) -> None:
    """Fill ``utility`` or ``utility_skipped``."""
    if sets.synthetic_labels is None:
        report["utility_skipped"] = (
            "unconditional run: the synthetic images carry no labels to train a classifier on "
            "(train with --conditional to measure downstream utility)"
        )
        return
    if classifier.config.task != "findings":
        report["utility_skipped"] = "the prepared data has no finding labels, so there is nothing to classify"
        return
    test_rows = np.sort(data.rows("test"))
    member_rows = np.sort(data.rows("member"))  # the rows the domain classifier (TRTR) was trained on
    inputs = UtilityInputs(
        synthetic_images=sets.synthetic,
        synthetic_labels=label_matrix_from_texts(sets.synthetic_labels, classifier.config.label_names),
        test_images=np.asarray(data.images[test_rows]),
        test_labels=data.label_matrix(test_rows),
        test_patients=data.index.loc[test_rows, "patient_id"].to_numpy(dtype=str),
        real_training=RealTrainingSet(images=data.images, rows=member_rows, labels=data.label_matrix(member_rows)),
    )
    report["utility"] = evaluate_utility(
        classifier, inputs, seed=options.seed, resamples=options.bootstrap_resamples, progress=options.progress
    )
    unscored = [row["finding"] for row in report["utility"]["per_finding"] if row["tstr_auroc"] is None]
    if unscored:
        report["warnings"].append(f"no AUROC for {', '.join(unscored)}: the test split has only one class")


def diversity_group(sets: ImageSets, options: EvaluateOptions, report: dict) -> None:
    """Fill ``diversity``."""
    n_pairs = min(diversity.DEFAULT_PAIRS, len(sets.synthetic) * (len(sets.synthetic) - 1) // 2)
    synthetic_mean, used = diversity.mean_pairwise_ms_ssim(sets.synthetic, n_pairs, seed=options.seed)
    real_mean, _ = diversity.mean_pairwise_ms_ssim(sets.reference, n_pairs, seed=options.seed)
    settings = diversity.ms_ssim_settings(sets.synthetic.shape[-1])
    report["diversity"] = {
        "ms_ssim_synthetic": synthetic_mean,
        "ms_ssim_real": real_mean,
        "n_pairs": used,
        "kernel_size": settings.kernel_size,
        "scales": settings.scales,
    }


def pixel_group(sets: ImageSets, report: dict) -> None:
    """Fill ``pixel`` and ``artefacts``."""
    report["pixel"] = {
        "histogram_wasserstein": pixel.histogram_wasserstein(sets.reference, sets.synthetic),
        "histogram_wasserstein_real_baseline": pixel.histogram_wasserstein(sets.reference, sets.baseline),
        "power_spectrum_distance": pixel.power_spectrum_distance(sets.reference, sets.synthetic),
        "power_spectrum_distance_real_baseline": pixel.power_spectrum_distance(sets.reference, sets.baseline),
    }
    rates = artefacts.artefact_rates(sets.synthetic, sets.reference, sets.baseline)
    report["artefacts"] = rates.to_json()
    report["artefact_rate"], report["artefact_rate_real_baseline"] = rates.rate, rates.real_baseline


# ---------------------------------------------------------------------------------------------
# Assembling the report
# ---------------------------------------------------------------------------------------------


def empty_report(metrics: tuple[str, ...], reference: str, seed: int) -> dict:
    """A report with every documented key, all metrics null, skip reasons for groups not requested."""
    report: dict = {
        "format": REPORT_FORMAT, "reference": reference, "seed": seed, "metrics": list(metrics), "warnings": [],
        "fid": None, "kid": None, "kid_std": None, "precision": None, "recall": None, "inception": None,
        "n_real": 0, "n_synthetic": 0, "n_real_baseline": 0, "baseline_split": None,
        "domain_classifier": None, "utility": None, "diversity": None, "pixel": None,
        "artefacts": None, "artefact_rate": None, "artefact_rate_real_baseline": None,
        "data": None, "samples": None, "image_size": None, "plots": {}, "seconds": {},
    }
    report.update({key: None for key in DOMAIN_KEYS})
    not_requested = NOT_REQUESTED
    for group, keys in INCEPTION_KEYS.items():
        for key in keys:
            if not key.endswith("_std"):
                report[f"{key}_skipped"] = None if group in metrics else not_requested
    for group in ("domain", "utility", "diversity", "pixel"):
        report[f"{group}_skipped"] = None if group in metrics else not_requested
    return report


REPORT_KEYS: tuple[str, ...] = tuple(empty_report(METRIC_GROUPS, "test", 0))
"""Every top-level key of ``fidelity.json`` (all documented in this module's docstring)."""


def _timed(report: dict, group: str, fn: Callable[[], object]) -> object:
    started = time.perf_counter()
    try:
        return fn()
    finally:
        report["seconds"][group] = round(time.perf_counter() - started, 2)


def _skip_on_error(report: dict, group: str, fn: Callable[[], object]) -> object:
    """Run one metric group; a data problem (CxrsynthError) skips that group with its reason."""
    try:
        return _timed(report, group, fn)
    except CxrsynthError as exc:
        report[f"{group}_skipped"] = bounded_reason(exc.problem)
        report["warnings"].append(f"{group} skipped: {bounded_reason(exc.problem)}")
        return None


def compute_report(
    data: PreparedData,
    synthetic: SyntheticSet,
    options: EvaluateOptions,
    classifier_root: Path,
    eval_dir: Path,
    warnings: list[str] | None = None,
    log: Log = _quiet,
) -> dict:
    """Compute every requested metric group and draw the plots; returns the ``fidelity.json`` object.

    Args:
        data: the prepared data (reference, baseline and test splits).
        synthetic: the synthetic images (and labels) to evaluate.
        options: the evaluation options.
        classifier_root: folder whose ``eval/domain_classifier`` caches the domain classifier
            (the run folder).
        eval_dir: where plots are written.
        warnings: warnings gathered before (e.g. while reading samples).
        log: receives one line per stage.

    Raises:
        CxrsynthError: for unusable inputs (unknown reference, empty splits, bad Inception weights).
    """
    metrics = options.metrics
    report = empty_report(metrics, options.reference, options.seed)
    report["warnings"].extend(warnings or [])
    sets = select_image_sets(data, synthetic, options.reference, options.seed)
    report.update(
        n_real=int(len(sets.reference)), n_synthetic=int(len(sets.synthetic)), n_real_baseline=int(len(sets.baseline)),
        baseline_split=sets.baseline_split, data=str(data.root), samples=str(synthetic.folder), image_size=data.size,
    )
    smallest = min(len(sets.reference), len(sets.synthetic))
    if smallest < FID_RELIABLE_N:
        report["warnings"].append(
            f"N = {len(sets.reference)} real / {len(sets.synthetic)} synthetic < {FID_RELIABLE_N:,}: FID (and Fréchet "
            "distances generally) are biased upwards at small N; compare only values computed with the same N"
        )
    inception_wanted = tuple(group for group in ("fid", "kid", "prc") if group in metrics)
    if inception_wanted:
        _timed(report, "inception", lambda: inception_group(sets, options, inception_wanted, report, log))

    classifier = None
    if "domain" in metrics or "utility" in metrics:
        log("domain classifier (trained on member images, cached in the run folder)")
        classifier, reused = _timed(
            report, "domain_classifier",
            lambda: domain_classifier_for_run(
                classifier_root, data, seed=options.seed, steps=options.classifier_steps, progress=options.progress
            ),
        )
        report["domain_classifier"] = {
            "path": str(Path(classifier_root) / DOMAIN_FOLDER), "task": classifier.config.task,
            "label_names": list(classifier.config.label_names), "feature_dim": classifier.feature_dim,
            "steps": classifier.config.steps, "batch_size": classifier.config.batch_size, "seed": classifier.config.seed,
            "reused": reused, "n_train": classifier.info.get("n_train"), "training_seconds": classifier.info.get("seconds"),
        }
        if classifier.config.task == "rotation":
            report["warnings"].append(
                "the data has no finding labels: the domain classifier was trained on the rotation proxy task"
            )
    if "domain" in metrics:
        log("domain features: Fréchet distance and k-NN precision/recall")
        features = _skip_on_error(report, "domain", lambda: domain_group(sets, classifier, options, report))
        if features is not None:
            report["plots"]["domain_features"] = plots.plot_feature_projection(
                [plots.NamedSet(options.reference, features["reference"]), plots.NamedSet("synthetic", features["synthetic"]),
                 plots.NamedSet(f"{sets.baseline_split} (real baseline)", features["baseline"])],
                eval_dir / "domain_features.png",
            ).name
    if "utility" in metrics:
        log("utility: TSTR vs TRTR classifiers, AUROC on real test images")
        _skip_on_error(report, "utility", lambda: utility_group(sets, classifier, options, data, report))
        if report["utility"] is not None:
            report["plots"]["utility_auroc"] = plots.plot_utility(report["utility"], eval_dir / "utility_auroc.png").name
    if "diversity" in metrics:
        log("diversity: MS-SSIM over random pairs")
        _skip_on_error(report, "diversity", lambda: diversity_group(sets, options, report))
    if "pixel" in metrics:
        log("pixel statistics: intensity histograms and power spectra")
        _skip_on_error(report, "pixel", lambda: pixel_group(sets, report))
        if report["pixel"] is not None:
            report["plots"]["pixel_stats"] = plots.plot_pixel_statistics(
                [plots.NamedSet(options.reference, sets.reference), plots.NamedSet("synthetic", sets.synthetic),
                 plots.NamedSet(f"{sets.baseline_split} (real baseline)", sets.baseline)],
                eval_dir / "pixel_stats.png",
            ).name
    return report


@locks_run("cxrsynth evaluate")
def evaluate_run(run_dir: str | Path, options: EvaluateOptions | None = None, log: Log = _quiet) -> dict:
    """Evaluate a run's synthetic images; write ``RUN/eval/fidelity.json`` and plots; return the report.

    Args:
        run_dir: the run folder (``config.yaml`` names its data unless ``options.data`` is set).
        options: the evaluation options (defaults: all metrics against ``test``, seed 0).
        log: receives one line per stage.

    Returns:
        The report (the content of ``fidelity.json``, documented in this module's docstring).

    Raises:
        CxrsynthError: for a missing run/data/samples folder, bad options, unusable inputs, or a run
            folder another live process holds (``RUN/.cxrsynth.lock``).
    """
    options = options or EvaluateOptions()
    run = Path(run_dir)
    if not run.is_dir():
        raise CxrsynthError(f"run folder {run} does not exist", "point --run to a folder written by `cxrsynth train`")
    if options.num_samples is not None and options.num_samples < 2:
        raise CxrsynthError(f"--num-samples must be >= 2, got {options.num_samples}")
    data = load_run_data(run, options.data)
    if options.reference not in REFERENCES:
        raise CxrsynthError(f"invalid --reference {options.reference!r}", f"use one of {', '.join(REFERENCES)}")
    samples_dir = samples_folder(run, options.samples)
    existing = count_samples(samples_dir)
    wanted = options.num_samples
    if wanted is None and existing == 0:
        wanted = min(DEFAULT_GENERATED, len(data.rows(options.reference)))
    if wanted is not None and existing < wanted:
        ensure_samples(run, samples_dir, wanted, options.seed, options.progress, log)
    warnings: list[str] = []
    synthetic = read_samples(samples_dir, wanted, data.size, warnings)
    eval_dir = run / EVAL_FOLDER
    report = compute_report(data, synthetic, options, run, eval_dir, warnings, log)
    atomic_write_json(fidelity_path(run), report)
    return report
