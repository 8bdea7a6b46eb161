"""The verdict: what a run's numbers allow a user to claim, and what they do not, in plain words.

Three questions, each answered by one :class:`Answer` built only from the JSON the stages wrote:

* **Realistic?** (``eval/fidelity.json``) — the domain-feature Fréchet distance of the synthetic
  images to real ones, judged against the same distance for unseen real images (the real
  baseline) at the same N (``matched_n``, half-samples; :mod:`cxrsynth.evaluate.bootstrap`):
  ``good`` when its 95% interval reaches the baseline, ``caution`` within
  :data:`REALISM_CAUTION_RATIO` × the baseline, ``bad`` beyond; ``unknown`` when the interval
  reaches the baseline but also exceeds :data:`REALISM_CAUTION_RATIO` × it (too few images to tell). Precision far below the baseline's,
  or an intensity histogram much farther off than the baseline's, lowers ``good`` to ``caution``;
  an artefact rate above :data:`ARTEFACT_RATE_LIMIT` lowers it to ``caution`` (``bad`` above
  :data:`ARTEFACT_RATE_BAD`).
* **Useful?** (``fidelity.json`` ``utility``) — train-on-synthetic / test-on-real AUROC against
  train-on-real: ``good`` when the ratio's interval reaches 1, ``caution`` when the synthetic-trained
  classifier beats chance but not the real one, ``bad`` when it does not beat chance, ``unknown``
  when even the real-trained classifier does not (the test cannot tell).
* **Safe to share?** (``audit/audit.json``, ``privacy.json``) — ``bad`` when the audit detected a
  leak (family-wise controlled by the audit); ``good`` only when the run also has a
  differential-privacy guarantee; otherwise ``caution``: an audit that finds nothing *bounds* what
  its attacks can see at its sample size (the audit's ``power`` sentence says how large a leak would
  go unnoticed), it never proves that nothing leaks. An audit on data without real patient ids
  understates leakage, and says so.

For a DP run, every number computed from the member images themselves (the domain and TRTR
classifiers, the audit) is labelled as not covered by the guarantee (:mod:`.coverage`).

Levels are ``good``, ``caution``, ``bad`` and ``unknown`` (not measured or inconclusive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cxrsynth.audit.summary import scored_attacks
from cxrsynth.report.collect import quoted
from cxrsynth.report.coverage import AUDIT_LABEL, DOMAIN_LABEL, TRTR_LABEL, release_advice

LEVELS: tuple[str, ...] = ("good", "caution", "bad", "unknown")

REALISM_CAUTION_RATIO = 2.0
"""Synthetic-vs-real feature distance up to this multiple of the real-vs-real one is ``caution``, beyond ``bad``."""

PRECISION_DROP = 0.5
"""Domain precision below this fraction of the real baseline's lowers realism to ``caution``."""

ARTEFACT_RATE_LIMIT = 0.02
"""A share of synthetic images with pixel noise beyond real images' 99.5% above this lowers realism:
``good`` to ``caution``, and to ``bad`` above :data:`ARTEFACT_RATE_BAD`."""

ARTEFACT_RATE_BAD = 0.10

HISTOGRAM_RATIO = 3.0
"""Gray-level histogram distance above this multiple of the real baseline's lowers realism to ``caution``."""

DIVERSITY_MARGIN = 0.1
"""Synthetic pairs more alike than real pairs by more than this MS-SSIM are called less diverse."""

WEAK_VERIFIER_AUC = 0.7
"""A re-identification network below this verification AUC has little power; the report says so."""

EPS_LB_CONFIDENCE = "≥ 90% joint confidence (two one-sided 95% bounds), each attack's bound on its own"
"""How sure one attack's empirical ε lower bound is: its two one-sided 95% Clopper–Pearson bounds hold jointly at ≥ 90%."""
EPS_HEADLINE_CONFIDENCE = "≥ 90% confidence jointly over every attack result (Clopper–Pearson bounds at 0.1/(2k) each)"
"""How sure the audit's largest ε lower bound is (:func:`cxrsynth.audit.summary.family_eps_lower_bound`): the
maximum of k bounds that each held at 90% would not."""

TPR_1PCT_MIN_NONMEMBERS = 100
REID_SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Answer:
    """The answer to one question of the verdict.

    Attributes:
        key: ``realism``, ``utility`` or ``privacy``.
        question: the question in plain words.
        short: a few words of answer (shown in the headline).
        level: one of :data:`LEVELS`.
        evidence: sentences with the numbers the answer rests on.
        can_claim: what a user may claim from them.
        cannot_claim: what they do not allow a user to claim.
        next_steps: what to do next (commands in backticks).
    """

    key: str
    question: str
    short: str
    level: str
    evidence: tuple[str, ...]
    can_claim: tuple[str, ...]
    cannot_claim: tuple[str, ...]
    next_steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The three answers, and the differential-privacy statement.

    Attributes:
        answers: realism, utility and privacy, in that order.
        dp_statement: the formal guarantee in one paragraph, or that there is none.
        key_numbers: (label, value) pairs for a terminal summary.
    """

    answers: tuple[Answer, ...]
    dp_statement: str
    key_numbers: tuple[tuple[str, str], ...]

    @property
    def headline(self) -> str:
        """One line: ``Realistic? … · Useful? … · Safe to share? …``."""
        return " · ".join(f"{answer.question} {answer.short}" for answer in self.answers)

    def answer(self, key: str) -> Answer:
        """The answer with ``key`` (``realism``, ``utility``, ``privacy``).

        Raises:
            KeyError: for another key.
        """
        for answer in self.answers:
            if answer.key == key:
                return answer
        raise KeyError(key)


def _interval(interval: list[float] | None, digits: int = 3) -> str:
    return "" if not interval else f" (95% CI {interval[0]:.{digits}g}–{interval[1]:.{digits}g})"


def _not_measured(key: str, question: str, why: str, command: str) -> Answer:
    return Answer(key, question, "not measured", "unknown", (why,), (),
                  (f"anything about this question: {why}",), (f"Run `{command}`.",))


# ---------------------------------------------------------------------------------------------
# Realism
# ---------------------------------------------------------------------------------------------


def _domain_sample_sizes(fidelity: dict) -> str:
    """The N behind the domain distances: matched N and half-sample sizes (older files: the set sizes)."""
    sampling = fidelity.get("fd_domain_sampling")
    if not sampling:
        return f"N = {fidelity['n_real']} real {fidelity['reference']} / {fidelity['n_synthetic']} synthetic images"
    matched, subsampled = sampling["matched_n"], fidelity["n_synthetic"] > sampling["matched_n"]
    return (f"matched N = {matched} synthetic"
            + (f" (of {fidelity['n_synthetic']})" if subsampled else "")
            + f" and {matched} real-baseline images against {fidelity['n_real']} real {fidelity['reference']} images; "
            f"each distance is the mean over {sampling['resamples']} half-samples of {sampling['n']} vs "
            f"{sampling['n_reference']} images, so it is the distance at that N, not the population distance")


def too_wide_to_tell(fidelity: dict) -> bool:
    """True when ``fd_domain_ci`` reaches the real baseline *and* exceeds :data:`REALISM_CAUTION_RATIO` × it.

    Such an interval (typical of a few dozen images against 128-d features) is consistent both with
    "as close as real" and with "clearly unlike real": calling that ``good`` would reward a small N.
    """
    ci, base = fidelity.get("fd_domain_ci"), fidelity.get("fd_domain_real_baseline")
    return bool(ci) and base is not None and ci[0] <= base and ci[1] > REALISM_CAUTION_RATIO * base


def _domain_realism(fidelity: dict, dp: bool = False) -> tuple[str, list[str], list[str]]:
    """Level, evidence and claims from the domain-feature distance and precision/recall (labelled for a DP run)."""
    fd, base, ci = fidelity["fd_domain"], fidelity["fd_domain_real_baseline"], fidelity["fd_domain_ci"]
    n = _domain_sample_sizes(fidelity)
    ratio = fd / base if base else math.inf
    evidence = [
        f"Fréchet distance in the features of a chest X-ray classifier trained on this data: {fd:.3g}{_interval(ci)} "
        f"from the synthetic to the real {fidelity['reference']} images, against {base:.3g} for unseen real "
        f"({fidelity['baseline_split']}) images — {ratio:.1f}× the real-vs-real distance ({n})"
        + (f"; {DOMAIN_LABEL}." if dp else ".")
    ]
    if too_wide_to_tell(fidelity):
        level = "unknown"
        evidence.append(
            f"Too few images to tell: the 95% interval reaches the real-vs-real distance but also exceeds "
            f"{REALISM_CAUTION_RATIO:g}× it, so it cannot separate a realistic generator from a clearly unrealistic one."
        )
        claims = []
    elif ci is not None and ci[0] <= base:
        level = "good"
        claims = [f"In a chest X-ray classifier's features, the synthetic images are about as close to real images as "
                  f"unseen real images are: the 95% interval of their distance reaches the real-vs-real value ({n})."]
    elif ratio <= REALISM_CAUTION_RATIO:
        level = "caution"
        claims = [f"The synthetic images resemble real ones but are measurably different: {ratio:.1f}× the real-vs-real "
                  f"feature distance, within a factor {REALISM_CAUTION_RATIO:g} ({n})."]
    else:
        level = "bad"
        claims = [f"Little about realism: the synthetic images are clearly unlike real ones ({ratio:.1f}× the "
                  f"real-vs-real feature distance, {n})."]
    precision, precision_base = fidelity["precision_domain"], fidelity["precision_domain_real_baseline"]
    if precision is not None and precision_base is not None:
        evidence.append(
            f"Precision {precision:.2f} (real baseline {precision_base:.2f}): share of synthetic images that fall among "
            f"real ones; recall {fidelity['recall_domain']:.2f} (baseline {fidelity['recall_domain_real_baseline']:.2f}): "
            "share of real images that synthetic ones cover (k-NN, k = 3, in the same features)"
            + (f"; {DOMAIN_LABEL}." if dp else ".")
        )
        if precision < PRECISION_DROP * precision_base and level == "good":
            level = "caution"
    return level, evidence, claims


def _secondary_realism(fidelity: dict, level: str, evidence: list[str], cannot: list[str]) -> str:
    """Add FID, diversity and pixel-statistics evidence; returns the (possibly lowered) level."""
    if fidelity.get("fid") is not None:
        evidence.append(
            f"FID {fidelity['fid']:.3g} (Inception features, N = {fidelity['n_real']} / {fidelity['n_synthetic']}); FID has "
            "no real-vs-real baseline here: compare it only with runs evaluated at the same N and resolution."
        )
    elif fidelity.get("fid_skipped"):
        evidence.append(f"FID not computed: {fidelity['fid_skipped']}.")
    diversity = fidelity.get("diversity")
    if diversity is not None:
        synthetic, real = diversity["ms_ssim_synthetic"], diversity["ms_ssim_real"]
        sentence = f"MS-SSIM between random pairs: {synthetic:.2f} synthetic vs {real:.2f} real (higher = more alike)"
        if synthetic > real + DIVERSITY_MARGIN:
            evidence.append(sentence + ": the synthetic images are less diverse than real ones (possible mode collapse).")
            cannot.append("that the synthetic images cover the variety of real patients (they are less diverse).")
            level = "caution" if level == "good" else level
        elif synthetic < real - 2 * DIVERSITY_MARGIN:
            evidence.append(sentence + ": synthetic pairs share far less structure than real pairs, typical of noisy "
                            "or unstructured images.")
        else:
            evidence.append(sentence + ".")
    pixel = fidelity.get("pixel")
    if pixel is not None:
        value, base = pixel["histogram_wasserstein"], pixel["histogram_wasserstein_real_baseline"]
        evidence.append(f"Gray-level histogram distance {value:.3g} vs {base:.3g} for unseen real images; radial power "
                        f"spectrum distance {pixel['power_spectrum_distance']:.3g} vs "
                        f"{pixel['power_spectrum_distance_real_baseline']:.3g} decades.")
        if base > 0 and value > HISTOGRAM_RATIO * base and level == "good":
            level = "caution"
    return _artefact_realism(fidelity, level, evidence, cannot)


def _artefact_realism(fidelity: dict, level: str, evidence: list[str], cannot: list[str]) -> str:
    """Count broken samples (pixel noise beyond real images'); returns the (possibly lowered) level."""
    found = fidelity.get("artefacts")
    if found is None:
        return level
    rate, base = found["rate"], found["real_baseline"]
    evidence.append(f"{found['count']} of {found['n_synthetic']} synthetic images ({rate:.1%}) carry pixel-level noise "
                    f"beyond {found['quantile']:.1%} of real images (real baseline {base:.1%} of "
                    f"{found['n_real_baseline']} unseen real images).")
    if rate > ARTEFACT_RATE_LIMIT:
        cannot.append(f"that every synthetic image is clean: {rate:.1%} are visibly noisy (speckle); averages such as "
                      "FD hide them.")
        order = LEVELS.index
        floor = "bad" if rate > ARTEFACT_RATE_BAD else "caution"
        if level in ("good", "caution") and order(floor) > order(level):
            level = floor
    return level


def realism_answer(fidelity: dict | None, command: str, dp: bool = False) -> Answer:
    """Answer "Realistic?" from ``fidelity.json`` (None: not measured, with ``command`` to run).

    ``dp``: the run was trained with DP; the domain-feature evidence is then labelled as not covered.
    """
    question = "Realistic?"
    if fidelity is None:
        return _not_measured("realism", question, "the evaluate stage has not run", command)
    evidence: list[str] = []
    can: list[str] = []
    cannot = ["that radiologists would find the images realistic: no reader study was done."]
    if fidelity.get("fd_domain") is not None and fidelity.get("fd_domain_real_baseline") is not None:
        level, evidence, can = _domain_realism(fidelity, dp)
    else:
        level = "unknown"
        why = fidelity.get("domain_skipped") or "not computed"
        evidence.append(f"No distance to real images with a real-vs-real baseline: domain metrics {why}.")
    level = _secondary_realism(fidelity, level, evidence, cannot)
    size = fidelity.get("image_size")
    if size:
        cannot.append(f"realism at any resolution other than the {size}×{size} images evaluated.")
    if min(fidelity.get("n_real") or 0, fidelity.get("n_synthetic") or 0) < 10_000:
        cannot.append("distances comparable with published FIDs: below 10,000 images per side they are biased upwards.")
    short = {"good": "close to real", "caution": "partly", "bad": "not yet", "unknown": "inconclusive"}[level]
    steps = () if level == "good" else ("Train longer or with a larger preset, then re-run sample, evaluate and report.",)
    if level == "unknown" and fidelity.get("fd_domain") is not None and too_wide_to_tell(fidelity):
        steps = ("Evaluate with more images: more synthetic samples (`--num-samples`) and, for the real baseline, "
                 "more holdout patients when the data is prepared.",)
    return Answer("realism", question, short, level, tuple(evidence), tuple(can), tuple(cannot), steps)


# ---------------------------------------------------------------------------------------------
# Utility
# ---------------------------------------------------------------------------------------------


def utility_answer(fidelity: dict | None, conditional: bool | None, run_word: str, command: str,
                   dp: bool = False) -> Answer:
    """Answer "Useful?" from ``fidelity.json``'s ``utility`` (train on synthetic, test on real).

    Args:
        fidelity: ``fidelity.json`` or None when the evaluate stage has not run.
        conditional: whether the model is label-conditional (None: unknown).
        run_word: the run folder, shell-quoted, for the commands suggested.
        command: the command that runs the evaluate stage.
        dp: the run was trained with DP (the TRTR numbers are then labelled as not covered).
    """
    question = "Useful?"
    if fidelity is None:
        return _not_measured("utility", question, "the evaluate stage has not run", command)
    utility = fidelity.get("utility")
    if utility is None:
        why = fidelity.get("utility_skipped") or "not computed"
        if conditional is False:
            step = (f"Train a label-conditional model (`cxrsynth train --data DATA --run NEW_RUN --conditional …`): "
                    "only labelled synthetic images can train a classifier.")
        else:
            step = f"Run `cxrsynth evaluate --run {run_word} --metrics utility`."
        return Answer("utility", question, "not measured", "unknown", (f"Downstream utility not measured: {why}.",), (),
                      ("anything about usefulness for training classifiers.",), (step,))
    tstr, trtr, ratio = utility["tstr_auroc"], utility["trtr_auroc"], utility["ratio"]
    tstr_ci, trtr_ci, ratio_ci = utility.get("tstr_auroc_ci"), utility.get("trtr_auroc_ci"), utility.get("ratio_ci")
    findings = ", ".join(utility.get("macro_over") or [])
    evidence = [
        f"A classifier trained only on {utility['n_train_synthetic']} synthetic images reaches macro AUROC "
        f"{tstr:.3f}{_interval(tstr_ci)} on {utility['n_test']} real test images; trained on {utility['n_train_real']} "
        f"real images it reaches {trtr:.3f}{_interval(trtr_ci)}: ratio {ratio:.2f}{_interval(ratio_ci, 2)} "
        f"(findings: {findings})" + (f"; {TRTR_LABEL}." if dp else ".")
    ]
    cannot = ["usefulness for other tasks, findings or patient populations, or for clinical use."]
    unscored = [row["finding"] for row in utility.get("per_finding", []) if row.get("tstr_auroc") is None]
    if unscored:
        cannot.append(f"anything about {', '.join(unscored)}: the test split has too few positives to score them.")
    if trtr_ci and trtr_ci[0] <= 0.5:
        return Answer("utility", question, "inconclusive", "unknown", tuple(evidence), (),
                      ("usefulness: even the classifier trained on real images is not clearly better than chance on "
                       "this test set, so this test cannot show it.", *cannot),
                      ("Evaluate with more test images, or on a dataset with more positive findings.",))
    if tstr_ci and tstr_ci[0] <= 0.5:
        return Answer("utility", question, "no evidence", "bad", tuple(evidence), (),
                      ("that the synthetic images carry the findings' signal: the classifier trained on them is not "
                       "clearly better than chance.", *cannot),
                      ("Train longer (or a larger preset) so that the model learns the findings, then re-evaluate.",))
    if ratio_ci and ratio_ci[1] >= 1.0:
        can = (f"For classifying {findings} on this data, training on the synthetic images is not measurably worse "
               "than training on real ones (the ratio's 95% interval reaches 1).",)
        return Answer("utility", question, "yes, for this task", "good", tuple(evidence), can, tuple(cannot))
    can = (f"The synthetic images carry part of the findings' signal: a classifier trained on them beats chance, "
           f"reaching {ratio:.0%} of the AUROC of one trained on real images.",)
    return Answer("utility", question, "partly", "caution", tuple(evidence), can, tuple(cannot))


# ---------------------------------------------------------------------------------------------
# Privacy
# ---------------------------------------------------------------------------------------------


def _float(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def dp_guarantee(privacy: dict | None) -> tuple[str, list[str]]:
    """The formal guarantee of ``privacy.json`` in words, and its caveats.

    Returns:
        ``(statement, caveats)``; the statement says "not trained with differential privacy" when
        ``privacy`` is None.
    """
    if privacy is None:
        return ("Not trained with differential privacy: there is no formal guarantee; the audit is the only "
                "evidence about privacy.", [])
    epsilon, delta = _float(privacy.get("epsilon")), _float(privacy.get("delta"))
    unit = str(privacy.get("unit", "record"))
    if epsilon is None or delta is None:
        return ("privacy.json exists but holds no valid epsilon and delta: the guarantee cannot be stated.", [])
    details = [f"{str(privacy.get('accountant', '?')).upper()} accountant"]
    for key, label in (("noise_multiplier", "noise multiplier"), ("max_grad_norm", "clipping norm"),
                       ("steps", "steps"), ("sample_rate", "sampling rate")):
        if privacy.get(key) is not None:
            details.append(f"{label} {privacy[key]:g}" if isinstance(privacy[key], float) else f"{label} {privacy[key]}")
    units = privacy.get("privacy_units")
    over = f" over {units:,} {unit}s" if isinstance(units, int) else ""
    statement = (
        f"Trained with differential privacy: (ε = {epsilon:.3g}, δ = {delta:.3g}) per {unit}{over} "
        f"({', '.join(details)}). Whether or not any one {unit}'s data was used changes the probability of any outcome "
        f"— the model, or any image generated from it — by at most a factor e^ε ≈ {math.exp(min(epsilon, 700)):.3g}, "
        f"except with probability δ."
    )
    caveats = []
    if unit != "patient":
        caveats.append(f"The unit is one {unit}, not one patient: a patient with k {unit}s is protected only at about "
                       "k·ε (group privacy).")
    if epsilon > 10:
        caveats.append(f"ε = {epsilon:.3g} is a weak formal bound (e^ε ≈ {math.exp(min(epsilon, 700)):.3g}).")
    if privacy.get("stopped_early"):
        caveats.append(f"Training stopped early, at the privacy budget (target ε = {privacy.get('target_epsilon')}).")
    caveats.append(f"The number of {unit}s is treated as public: the sampling rate and the default δ are computed "
                   "from it, so the guarantee does not hide the exact count.")
    if privacy.get("noise_source") != "os-entropy":
        caveats.append("privacy.json does not state that the noise was drawn from OS entropy: a run written before "
                       "cxrsynth seeded its DP noise secretly, whose noise can be replayed from the published seed.")
    caveats.append("The guarantee holds if the accountant's assumptions held (random sampling of the training "
                   "records, per-sample clipping); it covers this training run, not choices made by looking at the "
                   "same data (hyper-parameter tuning, data preparation).")
    return statement, caveats


@dataclass(frozen=True)
class _Leaks:
    """What the audit flagged, grouped by what it says about sharing."""

    model_attacks: list[str]
    image_attacks: list[str]
    positive_eps: list[str]
    memorized: int
    reidentified: bool


def p_value(result: dict) -> float | None:
    """A test's p-value in audit.json: ``p_value``, or ``binomial_p_value`` in audit.json files written before it."""
    return _float(result.get("p_value", result.get("binomial_p_value")))


def _p_text(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.2g}"


def _rejected(audit: dict, name: str) -> bool | None:
    """Whether the family test ``name`` was rejected (None for an audit.json without ``summary.tests``)."""
    tests = (audit.get("summary") or {}).get("tests")
    if not tests:
        return None
    return any(test.get("name") == name and test.get("rejected") for test in tests if isinstance(test, dict))


def _reidentified(audit: dict) -> bool:
    """True when re-identification found a patient-level leak: its family test rejected (old files: p < 5%)."""
    reid = audit.get("reidentification")
    if not reid:
        return False
    rejected = _rejected(audit, "reidentification:links")
    if rejected is not None:
        return rejected
    value = p_value(reid)
    return value is not None and value < REID_SIGNIFICANCE


def _leaks(audit: dict) -> _Leaks:
    attacks = audit.get("attacks", {})
    beating = audit["summary"]["attacks_beating_chance"]
    return _Leaks(
        model_attacks=[name for name in beating if attacks[name]["access"] == "white-box"],
        image_attacks=[name for name in beating if attacks[name]["access"] == "black-box"],
        positive_eps=[name for name, result in attacks.items()
                      if result["access"] != "none" and (result.get("eps_lower_bound") or 0) > 0],
        memorized=int((audit.get("memorization") or {}).get("n_flagged", 0)),
        reidentified=_reidentified(audit),
    )


def _attack_evidence(audit: dict) -> list[str]:
    """Sentences on the membership-inference attacks: who beat chance, TPR at low FPR, ε lower bound."""
    attacks = scored_attacks({"attacks": audit.get("attacks", {}), "patient_attacks": audit.get("patient_attacks")})
    summary = audit["summary"]
    n = audit["n_evaluation"]["members"]
    images = ("one image each" if not audit.get("patient_attacks") else
              "one image each, and every image of each patient up to "
              f"{audit['settings'].get('max_images_per_patient')} for the patient-level results (marked @patient)")
    evidence = [f"{len(attacks)} membership-inference attack results scored {n} member and {n} never-trained-on "
                f"(holdout) patients, {images} (evaluation half; thresholds were fixed on a separate calibration half)."]
    beating = summary["attacks_beating_chance"]
    if beating:
        phrases = []
        for name in beating:
            result = attacks[name]
            interval = result.get("auc_ci")
            ci = f", 95% CI {interval[0]:.2f}–{interval[1]:.2f}" if interval else ""
            # Below 0.5 in the published direction: members score the other way, which is still a signal.
            inverted = "; members score opposite to the published direction" if result["auc"] < 0.5 else ""
            phrases.append(f"{name} (AUC {result['auc']:.2f}{ci}{inverted})")
        how = ("one of its tests is rejected at family-wise α = 0.05, Holm–Bonferroni" if summary.get("tests")
               else "95% AUC interval excludes 0.5")
        evidence.append(f"{len(beating)} of {len(attacks)} attacks beat chance ({how}): {', '.join(phrases)}.")
    elif attacks:
        evidence.append("No attack beat chance: no attack's test is rejected at family-wise α = 0.05 (Holm–Bonferroni)."
                        if summary.get("tests") else "No attack beat chance: every attack's 95% AUC interval includes 0.5.")
    worst = summary.get("worst_tpr_at_1pct_fpr")
    if worst is not None:
        evidence.append(f"At 1% false-positive rate the strongest attack ({worst['attack']}) finds {worst['value']:.1%} "
                        f"of members (chance: 1%).")
    elif summary.get("worst_tpr_at_zero_fpr") is not None:
        zero = summary["worst_tpr_at_zero_fpr"]
        tail = attacks.get(zero["attack"], {}).get("p_value_tail")
        significance = ("" if tail is None else
                        f" (tail test p = {tail:.3g}: " + ("significant" if _rejected(audit, f"{zero['attack']}:tail") else
                                                           "not significant at this N, so not evidence of a leak") + ")")
        evidence.append(f"TPR at 1% FPR is not measurable with {audit['n_evaluation']['nonmembers']} evaluation "
                        f"non-members (it needs {TPR_1PCT_MIN_NONMEMBERS}); at the calibration zero-FPR threshold the "
                        f"strongest attack ({zero['attack']}) finds {zero['value']:.0%} of members{significance}.")
    eps = summary.get("worst_eps_lower_bound")
    if eps is not None:
        meaning = (f"with {EPS_HEADLINE_CONFIDENCE} the model's true ε is at least this" if eps["value"] > 0
                   else "no attack separated members from non-members beyond statistical noise")
        evidence.append(f"Largest empirical ε lower bound: {eps['value']:.2f} ({eps['attack']}, δ = {audit['delta']:g}): "
                        f"{meaning}.")
    return evidence


def _image_evidence(audit: dict) -> list[str]:
    """Sentences on memorization, re-identification and the blind check."""
    evidence = []
    memorization = audit.get("memorization")
    if memorization is not None:
        dcr = memorization.get("dcr_pixel") or {}
        closer = (f"; {dcr['fraction_closer_to_member']:.0%} are closer to a training image than to a never-trained-on "
                  f"one (p = {_p_text(p_value(dcr))}; about 50% when nothing leaks)") if dcr else ""
        evidence.append(f"Memorization: {memorization['n_flagged']} of {memorization['n_synthetic']} synthetic images "
                        f"are near-copies of a training image (Carlini et al.'s ratio test, threshold "
                        f"{memorization['ratio_threshold']:.3g}){closer}.")
    elif audit.get("memorization_skipped"):
        evidence.append(f"Memorization not measured: {audit['memorization_skipped']}.")
    reid = audit.get("reidentification")
    if reid is not None:
        weak = (f" The network is weak (verification AUC < {WEAK_VERIFIER_AUC}), so this test has little power."
                if reid["verification_auc"] < WEAK_VERIFIER_AUC else "")
        evidence.append(f"Re-identification: a patient-verification network (AUC {reid['verification_auc']:.2f} on unseen "
                        f"patients) linked {reid['fraction_linked_to_member']:.0%} of synthetic images to training "
                        f"patients and {reid['fraction_linked_to_holdout']:.0%} to as many never-trained-on patients "
                        f"(p = {_p_text(p_value(reid))}; equal shares mean no patient-level leak).{weak}")
    elif audit.get("reidentification_skipped"):
        evidence.append(f"Re-identification not measured: {audit['reidentification_skipped']}.")
    passed = audit["summary"].get("blind_check_passed")
    if passed is False:
        evidence.append("Blind check FAILED: members and holdout differ in simple image statistics, so attack AUCs "
                        "partly measure the split rather than the model.")
    elif passed is True:
        evidence.append("Blind check passed: members and holdout do not differ in simple image statistics.")
    return evidence


def _widest_interval(audit: dict) -> float | None:
    widths = [(result["auc_ci"][1] - result["auc_ci"][0]) / 2 for result in audit.get("attacks", {}).values()
              if result["access"] != "none" and result.get("auc_ci")]
    return max(widths) if widths else None


def power_statement(audit: dict) -> str | None:
    """The audit's power in one sentence (audit.json ``power``): how large a leak would go unnoticed.

    Returns:
        The sentence, or None for an audit.json written before the audit measured its power.
    """
    power = audit.get("power")
    if not isinstance(power, dict) or not power.get("text"):
        return None
    return "Audit power: " + str(power["text"]).strip().rstrip(".") + "."


def patient_id_warning(audit: dict) -> str | None:
    """The warning that the audit **understates** leakage (audit.json ``patient_ids``), or None when it does not."""
    ids = audit.get("patient_ids")
    if not isinstance(ids, dict) or not ids.get("understates_leakage"):
        return None
    why = "the data has no real patient ids" if ids.get("real") is False else "patient ids may not identify patients"
    note = f" ({str(ids['note']).strip().rstrip('.')})" if ids.get("note") else ""
    return (f"This audit understates leakage: {why}{note}, so member and holdout images may come from the same real "
            "patients; a model that memorised a patient then also scores that patient's holdout images as members, "
            "hiding part of the leak.")


def family_test_rows(audit: dict) -> list[tuple[str, str, str, str]]:
    """Rows (test, p-value, Holm-adjusted p-value, rejected) of audit.json ``summary.tests`` (empty when absent)."""
    def p(value) -> str:
        return "—" if value is None else f"{float(value):.3g}"

    tests = (audit.get("summary") or {}).get("tests") or []
    return [(str(test.get("name", "?")), p(test.get("p_value")), p(test.get("adjusted_p_value")),
             "yes" if test.get("rejected") else "no") for test in tests if isinstance(test, dict)]


def family_alpha_sentence(audit: dict) -> str:
    """How the audit's tests are combined into one leak flag."""
    alpha = (audit.get("summary") or {}).get("family_alpha", 0.05)
    return (f"A leak is reported when any test rejects at family-wise α = {float(alpha):g} (Holm–Bonferroni over "
            "the tests below).")


def _privacy_claims(audit: dict, leaks: _Leaks, dp: bool) -> tuple[list[str], list[str], list[str]]:
    """(can claim, cannot claim, next steps) from the audit's findings."""
    n = audit["n_evaluation"]["members"]
    can, cannot, steps = [], [], []
    width = _widest_interval(audit)
    if not audit["summary"]["leak_detected"]:
        found = f"The audit's attacks found no membership leak on {n}/{n} evaluation patients"
        power = power_statement(audit)
        if power is not None:  # the audit's own power analysis says how large a leak would go unnoticed
            found += f". {power}"
        elif width:
            found += f"; their AUC intervals are up to ±{width:.2f} wide, so smaller leaks would go unnoticed."
        else:
            found += "."
        can.append(found + " This bounds, not proves, the leak: stronger attacks or more patients may find one.")
    if leaks.memorized == 0 and audit.get("memorization") is not None:
        can.append(f"None of the {audit['memorization']['n_synthetic']} audited synthetic images is a near-copy of a "
                   "training image.")
    reid = audit.get("reidentification")
    if reid is not None and not leaks.reidentified:
        can.append("Synthetic images are not linked to training patients more often than to unseen patients "
                   f"(p = {_p_text(p_value(reid))}).")
    if not dp:
        cannot.append("that the model or its images are private or anonymous: an audit shows leaks, it can never "
                      "show their absence.")
    if audit["n_evaluation"]["nonmembers"] < TPR_1PCT_MIN_NONMEMBERS:
        cannot.append(f"anything about rare, confident leaks: with {audit['n_evaluation']['nonmembers']} evaluation "
                      f"non-members the smallest measurable false-positive rate is 1/{audit['n_evaluation']['nonmembers']}.")
    if audit["summary"].get("blind_check_passed") is False:
        cannot.append("anything from the attack AUCs: the blind check failed.")
    if leaks.model_attacks or leaks.positive_eps:
        steps.append("Do not share the model weights: white-box attacks tell members from non-members.")
    if leaks.image_attacks or leaks.memorized or leaks.reidentified:
        cannot.append("that the synthetic images can be shared as they are: they carry signal about training patients.")
        steps.append("Share synthetic images only through `cxrsynth release" + (" --screen" if dp else "") + "` ("
                     + release_advice(dp) + "), and re-audit.")
    elif audit["summary"]["leak_detected"]:
        steps.append("The image-based tests found nothing, but they are weaker than white-box attacks: if images are "
                     "shared, screen them with `cxrsynth release" + (" --screen" if dp else "") + "` ("
                     + release_advice(dp) + ").")
    if not dp:
        steps.append("For a formal bound, train with differential privacy (`cxrsynth train --dp --epsilon E …`, "
                     "see `cxrsynth train --help`).")
    if not dp:  # a DP run's new images are covered by its guarantee, audited or not
        cannot.append("that newly generated images are safe: the memorization and re-identification tests checked "
                      "only the audited samples (`cxrsynth release` screens new ones).")
    return can, cannot, steps


def privacy_answer(audit: dict | None, privacy: dict | None, command: str) -> Answer:
    """Answer "Safe to share?" from ``audit.json`` and ``privacy.json`` (either may be None)."""
    question = "Safe to share?"
    statement, caveats = dp_guarantee(privacy)
    # Only a stated guarantee changes what may be claimed: an unreadable privacy.json counts as none.
    epsilon = _float(privacy.get("epsilon")) if privacy is not None and _float(privacy.get("delta")) is not None else None
    if audit is None:
        if epsilon is not None:
            return Answer("privacy", question, "bounded by DP, not audited", "caution", (statement, *caveats),
                          (statement,), ("that the implementation delivers the guarantee: no audit checked it.",),
                          (f"Run `{command}`.",))
        return _not_measured("privacy", question, "the audit has not run and the model has no differential-privacy "
                             "guarantee", command)
    leaks = _leaks(audit)
    understated = patient_id_warning(audit)
    evidence = [*([understated] if understated else []), *_attack_evidence(audit), *_image_evidence(audit),
                *([AUDIT_LABEL] if privacy is not None else []), statement, *caveats]
    can, cannot, steps = _privacy_claims(audit, leaks, epsilon is not None)
    if understated:
        cannot.insert(0, "that the leak is no larger than measured: " + understated[0].lower() + understated[1:])
    eps_bound = (audit["summary"].get("worst_eps_lower_bound") or {}).get("value") or 0.0
    if epsilon is not None:
        can.insert(0, statement)
        per_patient = str(privacy.get("unit", "patient")) == "patient"
        if eps_bound > epsilon and per_patient:
            cannot.insert(0, f"the DP guarantee: the audit's empirical lower bound ({eps_bound:.2f}) exceeds ε = "
                          f"{epsilon:.3g}, impossible if training and accounting are correct; treat it as invalid "
                          "until explained.")
        elif not per_patient:
            cannot.append(f"a check of ε by the audit: the audit scores patients, and an {privacy.get('unit')}-level "
                          f"ε bounds a patient with k {privacy.get('unit')}s only at about k·ε, so its empirical "
                          f"bound ({eps_bound:.2f}) may exceed ε = {epsilon:.3g} without contradiction.")
    if audit["summary"]["leak_detected"]:
        return Answer("privacy", question, "leak detected", "bad", tuple(evidence), tuple(can), tuple(cannot), tuple(steps))
    if epsilon is not None:
        return Answer("privacy", question, f"DP-bounded (ε = {epsilon:.3g}), no leak detected", "good",
                      tuple(evidence), tuple(can), tuple(cannot), tuple(steps))
    return Answer("privacy", question, "no leak detected (not proven)", "caution", tuple(evidence), tuple(can),
                  tuple(cannot), tuple(steps))


# ---------------------------------------------------------------------------------------------
# Together
# ---------------------------------------------------------------------------------------------


def _key_numbers(fidelity: dict | None, audit: dict | None, privacy: dict | None) -> tuple[tuple[str, str], ...]:
    numbers = []
    if fidelity and fidelity.get("fd_domain") is not None:
        numbers.append(("FD (domain) synthetic | real baseline",
                        f"{fidelity['fd_domain']:.3g} | {fidelity['fd_domain_real_baseline']:.3g}"))
    if fidelity and fidelity.get("artefacts"):
        found = fidelity["artefacts"]
        numbers.append(("artefact rate synthetic | real baseline",
                        f"{found['rate']:.1%} ({found['count']} of {found['n_synthetic']}) | {found['real_baseline']:.1%}"))
    if fidelity and fidelity.get("fid") is not None:
        numbers.append(("FID", f"{fidelity['fid']:.3g}"))
    if fidelity and fidelity.get("utility"):
        utility = fidelity["utility"]
        numbers.append(("AUROC TSTR | TRTR", f"{utility['tstr_auroc']:.3f} | {utility['trtr_auroc']:.3f}"))
    if audit:
        n = audit["n_evaluation"]["members"]
        beating = audit["summary"]["attacks_beating_chance"]
        numbers.append(("attacks beating chance", f"{len(beating)} ({', '.join(beating) or 'none'}), {n}/{n} patients"))
        eps = audit["summary"].get("worst_eps_lower_bound")
        if eps is not None:
            numbers.append(("empirical ε lower bound", f"{eps['value']:.2f} ({eps['attack']})"))
        if audit.get("memorization"):
            memorization = audit["memorization"]
            numbers.append(("near-copies", f"{memorization['n_flagged']} of {memorization['n_synthetic']}"))
    if privacy is not None and _float(privacy.get("epsilon")) is not None and _float(privacy.get("delta")) is not None:
        numbers.append(("DP guarantee", f"ε = {float(privacy['epsilon']):.3g}, δ = {float(privacy['delta']):.3g} per "
                                        f"{privacy.get('unit', 'record')}"))
    return tuple(numbers)


def build_verdict(contents) -> Verdict:
    """The verdict of a run.

    Args:
        contents: a :class:`cxrsynth.report.collect.RunContents`.

    Returns:
        The :class:`Verdict`: realism, utility and privacy answers, the DP statement, key numbers.
    """
    evaluate_command = contents.stages["evaluate"].command
    answers = (
        realism_answer(contents.fidelity, evaluate_command, dp=contents.trained_with_dp),
        utility_answer(contents.fidelity, contents.conditional, quoted(contents.run), evaluate_command,
                       dp=contents.trained_with_dp),
        privacy_answer(contents.audit, contents.privacy, contents.stages["audit"].command),
    )
    statement, _ = dp_guarantee(contents.privacy)
    return Verdict(answers, statement, _key_numbers(contents.fidelity, contents.audit, contents.privacy))
