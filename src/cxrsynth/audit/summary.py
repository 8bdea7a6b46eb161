"""The audit's conclusion: one family-wise leak flag, the power it had, and the verdict in plain words.

Used by ``cxrsynth audit`` (:mod:`cxrsynth.audit.runner`) and ``cxrsynth audit stats``
(:mod:`cxrsynth.audit.scores`) alike, so both say the same thing about the same scores.

The flag
--------
``leak_detected`` is true when any test of the family is rejected by Holm–Bonferroni at
:data:`~cxrsynth.audit.hypothesis.FAMILY_ALPHA` (5%): when nothing leaks, at most 5% of audits
raise it, however many attacks ran and however they correlate. The family holds every test that
can raise the flag, each valid on its own (:mod:`cxrsynth.audit.hypothesis`):

* ``<attack>:auc`` — one-sided Mann–Whitney on the evaluation half (every attack but ``blind``),
  and ``<attack>@patient:auc`` for its patient-level result (``--unit patient``);
* ``<attack>:tail`` — hypergeometric test at the zero-FPR threshold fixed on calibration (low-FPR leaks);
* ``memorization:copies`` — near-copies of member vs holdout patients, relabelling test;
* ``memorization:dcr_pixel`` / ``memorization:dcr_domain`` — nearest audited image a member,
  relabelling test;
* ``reidentification:links`` — synthetic images linked to member gallery patients, relabelling test.

Descriptive numbers (AUC intervals, ε lower bounds, TPRs, the raw copy count) are reported beside
it but do not raise it on their own: each alone would fire in up to 5–10% of leak-free audits.
The headline ε (``worst_eps_lower_bound``) is the largest bound over all attack results with the
confidence split among them (:func:`family_eps_lower_bound`), so it holds at 90% as a whole.

Power
-----
:func:`power_report` states what the audit would have missed: the smallest AUC, and the smallest
TPR at zero FPR, that its first Holm step (level α/m for m tests) detects with 80% power at the
evaluated N. An audit that finds nothing bounds the leak by these numbers; it never proves absence.
"""

from __future__ import annotations

from cxrsynth.audit.hypothesis import FAMILY_ALPHA, POWER, holm, minimum_detectable_auc, minimum_detectable_tpr
from cxrsynth.audit.metrics import DEFAULT_DELTA, epsilon_lower_bound

FAMILY_METHOD = "holm-bonferroni"


def _worst(attacks: dict, key: str) -> dict | None:
    worst = None
    for name, result in attacks.items():  # registry order: ties go to the attack listed first
        if result.get(key) is not None and (worst is None or result[key] > worst["value"]):
            worst = {"attack": name, "value": result[key]}
    return worst


PATIENT_SUFFIX = "@patient"
"""Suffix of a patient-level result's name in the family (``loss@patient:auc``)."""


EPS_FAMILY_CONFIDENCE = 0.90
"""Joint confidence of ``summary.worst_eps_lower_bound`` over every attack result it is the largest of."""


def family_eps_lower_bound(attacks: dict, delta: float, confidence: float = EPS_FAMILY_CONFIDENCE) -> dict | None:
    """The largest ε lower bound over ``attacks``, valid for all of them at once (Bonferroni).

    Each result's own ``eps_lower_bound`` holds with ≥ 90% confidence alone, but the largest of k of
    them does not (k = 26: above the true ε in 17% of simulated audits). Here each result's two
    one-sided Clopper–Pearson bounds are recomputed at level (1 − ``confidence``)/(2k) from its
    evaluation counts (its threshold was fixed on calibration), so all k bounds hold together with
    probability ≥ ``confidence`` and so does their maximum.

    Args:
        attacks: result name → result with ``eps_bound`` (``true_positives``, ``false_positives``),
            ``n_eval_members``, ``n_eval_nonmembers`` (results without them are skipped).
        delta: δ of the bounds.
        confidence: joint confidence of all bounds.

    Returns:
        ``{"attack", "value", "confidence", "n_bounds", "per_bound_confidence", "alone_value"}``
        (``alone_value``: that attack's own 90% bound), or None when no result has counts.
    """
    counted = {name: result for name, result in attacks.items() if result.get("eps_bound")}
    if not counted:
        return None
    per_bound = 1.0 - (1.0 - confidence) / (2 * len(counted))
    best = None
    for name, result in counted.items():  # registry order: ties go to the attack listed first
        bound = result["eps_bound"]
        value = epsilon_lower_bound(bound["true_positives"], result["n_eval_members"], bound["false_positives"],
                                    result["n_eval_nonmembers"], delta, per_bound).epsilon
        if best is None or value > best["value"]:
            best = {"attack": name, "value": value, "alone_value": result.get("eps_lower_bound")}
    return {**best, "confidence": confidence, "n_bounds": len(counted), "per_bound_confidence": per_bound}


def scored_attacks(report: dict) -> dict:
    """The attack results that may raise the flag: every one with model or sample access (not ``blind``),
    image-level under the attack's name and patient-level (``patient_attacks``) as ``<name>@patient``."""
    results = {name: result for name, result in report["attacks"].items() if result["access"] != "none"}
    for name, result in (report.get("patient_attacks") or {}).items():
        if result["access"] != "none":
            results[f"{name}{PATIENT_SUFFIX}"] = result
    return results


def family_p_values(report: dict) -> dict[str, float]:
    """Every test that can raise ``leak_detected``, name → p-value (see the module docstring)."""
    tests: dict[str, float] = {}
    for name, result in scored_attacks(report).items():
        tests[f"{name}:auc"] = result["p_value_auc"]
        tests[f"{name}:tail"] = result["p_value_tail"]
    memorization = report.get("memorization") or {}
    if memorization.get("copy_test"):
        tests["memorization:copies"] = memorization["copy_test"]["p_value"]
    for key in ("dcr_pixel", "dcr_domain"):
        if memorization.get(key):
            tests[f"memorization:{key}"] = memorization[key]["p_value"]
    reid = report.get("reidentification")
    if reid:
        tests["reidentification:links"] = reid["p_value"]
    return tests


def power_report(n_members: int, n_nonmembers: int, n_tests: int, unit: str = "patients",
                 alpha: float = FAMILY_ALPHA, power: float = POWER) -> dict:
    """audit.json ``power``: the smallest effects this audit detects with ``power`` (see the module docstring).

    Args:
        n_members, n_nonmembers: evaluated members and non-members.
        n_tests: tests in the Holm family (at least 1 is assumed).
        unit: what was counted, for the sentence (``patients`` or ``images``).
        alpha: family-wise level.
        power: the power stated.

    Returns:
        ``min_detectable_auc``, ``min_detectable_tpr`` (float|null: null when no effect is detectable),
        ``at_fpr`` (0.0), ``n_members``, ``n_nonmembers``, ``n_tests``, ``alpha``, ``alpha_per_test``,
        ``power``, ``text``.
    """
    tests = max(1, int(n_tests))
    level = alpha / tests
    auc = minimum_detectable_auc(n_members, n_nonmembers, level, power)
    tpr = minimum_detectable_tpr(n_members, n_nonmembers, level, power)
    auc_text = f"an attack with AUC below {auc:.2f}" if auc is not None else "an attack of any AUC"
    tpr_text = (f"one that identifies fewer than {tpr:.0%} of members with no false positive" if tpr is not None
                else "one that identifies members only at zero false positives")
    text = (f"With {n_members} vs {n_nonmembers} evaluated {unit} and {tests} test{'s' if tests > 1 else ''} in the "
            f"family ({alpha:.0%} family-wise), {auc_text}, or {tpr_text}, would likely go unnoticed "
            f"(detected with less than {power:.0%} probability).")
    return {
        "min_detectable_auc": auc, "min_detectable_tpr": tpr, "at_fpr": 0.0,
        "n_members": int(n_members), "n_nonmembers": int(n_nonmembers), "n_tests": tests,
        "alpha": alpha, "alpha_per_test": level, "power": power, "text": text,
    }


def summarise(report: dict, alpha: float = FAMILY_ALPHA) -> dict:
    """The ``summary`` object of audit.json (keys in :mod:`cxrsynth.audit.runner`).

    Args:
        report: audit.json so far (``attacks`` and, when measured, ``memorization`` and ``reidentification``).
        alpha: family-wise level of ``leak_detected``.
    """
    attacks = scored_attacks(report)
    blind = report["attacks"].get("blind")
    blind_passed = None
    if blind is not None and blind.get("auc_ci"):
        # Only a blind AUC significantly *above* 0.5 means the split leaks; one below is fitting noise.
        blind_passed = bool(blind["auc_ci"][0] <= 0.5)
    p_values = family_p_values(report)
    tests = holm(p_values, alpha) if p_values else []
    rejected = {result.name for result in tests if result.rejected}
    return {
        "attacks_beating_chance": [name for name in attacks if {f"{name}:auc", f"{name}:tail"} & rejected],
        "worst_tpr_at_1pct_fpr": _worst(attacks, "tpr_at_1pct_fpr"),
        "worst_tpr_at_zero_fpr": _worst(attacks, "tpr_at_zero_fpr"),
        "worst_eps_lower_bound": family_eps_lower_bound(attacks, report.get("delta", DEFAULT_DELTA)),
        "blind_check_passed": blind_passed,
        "tests": [{"name": result.name, "p_value": result.p_value, "adjusted_p_value": result.adjusted_p_value,
                   "rejected": result.rejected} for result in tests],
        "family_alpha": alpha,
        "family_method": FAMILY_METHOD,
        "leak_detected": bool(rejected),
    }


def _auc_phrase(name: str, result: dict) -> str:
    inverted = result["direction"] != result["published_direction"]
    return f"{name} AUC {result['auc']:.2f}" + (" (inverted: members score the other way)" if inverted else "")


def _attack_sentences(report: dict) -> list[str]:
    summary, attacks = report["summary"], scored_attacks(report)
    if not attacks:
        return []
    beating = summary["attacks_beating_chance"]
    if beating:
        phrases = ", ".join(_auc_phrase(name, attacks[name]) for name in beating)
        sentences = [f"{len(beating)} of {len(attacks)} attack results beat chance after Holm–Bonferroni over every test: {phrases}."]
    else:
        sentences = [f"None of the {len(attacks)} attack results beats chance after Holm–Bonferroni over every test."]
    worst_tpr = summary["worst_tpr_at_1pct_fpr"]
    if worst_tpr is not None:
        sentences.append(f"Worst TPR at 1% FPR (threshold fixed on calibration): {worst_tpr['value']:.3f} ({worst_tpr['attack']}).")
    elif summary["worst_tpr_at_zero_fpr"] is not None:
        zero = summary["worst_tpr_at_zero_fpr"]
        sentences.append(f"Too few non-members to measure TPR at 1% FPR; worst TPR at the calibration zero-FPR threshold: "
                         f"{zero['value']:.3f} ({zero['attack']}).")
    worst_eps = summary["worst_eps_lower_bound"]
    if worst_eps is not None:
        sentences.append(f"Largest empirical ε lower bound: {worst_eps['value']:.2f} ({worst_eps['attack']}, δ = "
                         f"{report.get('delta', DEFAULT_DELTA):g}; ≥ {worst_eps['confidence']:.0%} confidence jointly over "
                         f"all {worst_eps['n_bounds']} attack results).")
    return sentences


def _sample_sentences(report: dict) -> list[str]:
    sentences = []
    memorization = report.get("memorization")
    if memorization is not None:
        copies = memorization.get("copy_test")
        against = (f"; against member and holdout patients alike {copies['n_flagged_member']} copy members and "
                   f"{copies['n_flagged_holdout']} copy holdout patients (p = {copies['p_value']:.3g})") if copies else ""
        sentences.append(f"Memorization: {memorization['n_flagged']} of {memorization['n_synthetic']} synthetic images flagged "
                         f"as near-copies of a training image{against}.")
    reid = report.get("reidentification")
    if reid is not None:
        sentences.append(
            f"Re-identification (verification AUC {reid['verification_auc']:.2f}): "
            f"{reid['fraction_linked_to_member']:.0%} of synthetic images linked to member patients vs "
            f"{reid['fraction_linked_to_holdout']:.0%} to holdout (relabelling p = {reid['p_value']:.3g})."
        )
    elif report.get("reidentification_skipped") and memorization is not None:
        sentences.append(f"Re-identification not measured: {report['reidentification_skipped']}.")
    return sentences


def _blind_sentence(report: dict) -> str:
    summary, blind = report["summary"], report["attacks"].get("blind")
    interval = "" if blind is None or not blind["auc_ci"] else f", 95% CI [{blind['auc_ci'][0]:.2f}, {blind['auc_ci'][1]:.2f}]"
    if summary["blind_check_passed"] is True:
        return (f"Blind check passed (AUC {blind['auc']:.2f}{interval}): no evidence that members and holdout differ "
                "in simple image statistics.")
    if summary["blind_check_passed"] is False:
        return (f"Blind check FAILED (AUC {blind['auc']:.2f}{interval}): members and holdout differ in simple image "
                "statistics, so attack AUCs partly measure the split, not the model.")
    return "Blind check not run."


def write_verdict(report: dict) -> str:
    """The plain-words ``verdict`` of audit.json: flag, power, evidence, and the patient-id caveat."""
    summary = report["summary"]
    n = report["n_evaluation"]
    if summary["leak_detected"]:
        sentences = ["Privacy leak detected (family-wise 5% test)."]
    else:
        sentences = [f"No leak detected at this sample size ({n['members']} members vs {n['nonmembers']} non-members "
                     "evaluated): a bound, not a proof."]
    power = report.get("power")
    if power:
        sentences.append(power["text"])
    sentences += _attack_sentences(report) + _sample_sentences(report)
    if report["attacks"]:
        sentences.append(_blind_sentence(report))
    patient_ids = report.get("patient_ids") or {}
    if patient_ids.get("understates_leakage"):
        sentences.append(patient_ids["note"])
    return " ".join(sentences)
