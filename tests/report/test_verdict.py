"""The verdict's plain-language claims follow from the numbers, and never claim more than they show."""

from __future__ import annotations

from cxrsynth.report.verdict import privacy_answer, realism_answer, utility_answer

PRIVACY = {"epsilon": 4.0, "delta": 1e-5, "target_epsilon": 4.0, "unit": "patient", "accountant": "prv",
           "noise_multiplier": 1.3, "max_grad_norm": 1.0, "sample_rate": 0.01, "steps": 5000,
           "noise_multiplicity": 1, "privacy_units": 1000, "logical_batch_size": 10.0, "stopped_early": False}


def attack(access: str = "white-box", auc: float = 0.5, ci=(0.45, 0.55), eps: float = 0.0) -> dict:
    return {"access": access, "auc": auc, "auc_ci": list(ci), "direction": "lower", "published_direction": "lower",
            "eps_lower_bound": eps, "tpr_at_1pct_fpr": 0.01, "tpr_at_zero_fpr": 0.0}


POWER_TEXT = "with 500 vs 500 patients, an attack with AUC below 0.56 would go unnoticed"


def audit(n: int = 500, attacks: dict | None = None, flagged: int = 0, reid_p: float = 0.5, *, power: bool = True,
          understates: bool = False) -> dict:
    """An audit.json as the audit writes it: attacks, memorization, re-identification, the family-wise summary,
    its power and whether patient ids are real (``power=False``: an audit.json written before those keys)."""
    attacks = attacks if attacks is not None else {"loss": attack(), "nn": attack("black-box"), "blind": attack("none")}
    scored = {name: result for name, result in attacks.items() if result["access"] != "none"}
    p_values = {f"{name}:auc": 1e-6 if result["auc_ci"][0] > 0.5 else 0.4 for name, result in scored.items()}
    p_values["memorization:copies"] = 1e-4 if flagged else 0.6
    p_values["reidentification:links"] = reid_p
    level = 0.05 / len(p_values)  # the first Holm step is enough for these clear-cut fixtures
    tests = [{"name": name, "p_value": value, "adjusted_p_value": min(1.0, value * len(p_values)),
              "rejected": value < level} for name, value in p_values.items()]
    rejected = {test["name"] for test in tests if test["rejected"]}
    worst_eps = max(scored, key=lambda name: scored[name]["eps_lower_bound"]) if scored else None
    report = {
        "n_evaluation": {"members": n, "nonmembers": n}, "delta": 1e-5,
        "attacks": attacks,
        "memorization": {"n_flagged": flagged, "n_synthetic": 1000, "ratio_threshold": 1 / 6, "dcr_pixel": None},
        "reidentification": {"verification_auc": 0.95, "fraction_linked_to_member": 0.5,
                             "fraction_linked_to_holdout": 0.5, "p_value": reid_p},
        "summary": {
            "attacks_beating_chance": [name for name in scored if f"{name}:auc" in rejected],
            "worst_tpr_at_1pct_fpr": {"attack": "loss", "value": 0.01},
            "worst_tpr_at_zero_fpr": {"attack": "loss", "value": 0.0},
            "worst_eps_lower_bound": {"attack": worst_eps, "value": scored[worst_eps]["eps_lower_bound"]} if worst_eps else None,
            "blind_check_passed": True, "tests": tests, "family_alpha": 0.05, "leak_detected": bool(rejected),
        },
    }
    if power:
        report["power"] = {"min_detectable_auc": 0.56, "min_detectable_tpr": 0.02, "at_fpr": 0.0, "n_members": n,
                           "n_nonmembers": n, "alpha": 0.05, "power": 0.8, "text": POWER_TEXT}
        report["patient_ids"] = {"real": not understates, "understates_leakage": understates,
                                 "note": "one patient per image (folder source)" if understates else None}
    else:  # before the family-wise flag: no tests, and the re-identification p-value under its old name
        del report["summary"]["tests"], report["summary"]["family_alpha"]
        report["reidentification"]["binomial_p_value"] = report["reidentification"].pop("p_value")
    return report


def text(items) -> str:
    return " ".join(items)


def test_no_leak_without_dp_is_a_bound_not_a_proof() -> None:
    answer = privacy_answer(audit(), None, "cxrsynth audit --run r")
    assert answer.level == "caution" and "not proven" in answer.short
    assert "bounds, not proves" in text(answer.can_claim) and "500/500" in text(answer.can_claim)
    assert "never show their absence" in text(answer.cannot_claim)
    assert "No attack beat chance" in text(answer.evidence)
    assert "At 1% false-positive rate" in text(answer.evidence)
    assert "Not trained with differential privacy" in text(answer.evidence)
    assert any("differential privacy" in step for step in answer.next_steps)


def test_dp_and_no_leak_is_good_and_states_the_guarantee() -> None:
    answer = privacy_answer(audit(), PRIVACY, "cxrsynth audit --run r")
    assert answer.level == "good" and "ε = 4" in answer.short
    assert "ε = 4" in answer.can_claim[0] and "per patient" in answer.can_claim[0]
    assert not any("never show their absence" in claim for claim in answer.cannot_claim)


def test_an_empirical_bound_above_the_dp_epsilon_invalidates_the_guarantee() -> None:
    leaky = audit(attacks={"loss": attack(auc=0.9, ci=(0.85, 0.95), eps=5.0), "blind": attack("none")})
    answer = privacy_answer(leaky, PRIVACY, "cxrsynth audit --run r")
    assert answer.level == "bad"
    assert "invalid" in answer.cannot_claim[0]
    assert any("Do not share the model weights" in step for step in answer.next_steps)


def test_image_level_leaks_point_to_a_screened_release() -> None:
    answer = privacy_answer(audit(flagged=3), None, "cxrsynth audit --run r")
    assert answer.level == "bad" and answer.short == "leak detected"
    assert "3 of 1000" in text(answer.evidence)
    assert any("cxrsynth release" in step for step in answer.next_steps)
    assert any("shared as they are" in claim for claim in answer.cannot_claim)


def test_image_unit_dp_warns_about_patients_with_several_images() -> None:
    answer = privacy_answer(None, {**PRIVACY, "unit": "image"}, "cxrsynth audit --run r")
    assert answer.level == "caution" and "not audited" in answer.short
    assert "group privacy" in text(answer.evidence)


def test_small_audits_cannot_speak_to_rare_leaks() -> None:
    answer = privacy_answer(audit(n=20), None, "cxrsynth audit --run r")
    assert any("smallest measurable false-positive rate is 1/20" in claim for claim in answer.cannot_claim)


def fidelity(fd: float, ci: tuple[float, float], base: float = 10.0, utility: dict | None = None, skipped=None) -> dict:
    return {"fd_domain": fd, "fd_domain_ci": list(ci), "fd_domain_real_baseline": base, "precision_domain": 0.8,
            "precision_domain_real_baseline": 0.85, "recall_domain": 0.8, "recall_domain_real_baseline": 0.85,
            "n_real": 500, "n_synthetic": 500, "reference": "test", "baseline_split": "holdout", "image_size": 64,
            "fid": None, "fid_skipped": "no Inception weights", "diversity": None, "pixel": None,
            "utility": utility, "utility_skipped": skipped}


def test_realism_levels_follow_the_real_baseline() -> None:
    assert realism_answer(fidelity(11.0, (9.0, 14.0)), "c").level == "good"
    middle = realism_answer(fidelity(15.0, (13.0, 18.0)), "c")
    assert middle.level == "caution" and "1.5×" in text(middle.can_claim)
    assert realism_answer(fidelity(40.0, (35.0, 50.0)), "c").level == "bad"
    assert "FID not computed: no Inception weights" in text(realism_answer(fidelity(11.0, (9.0, 14.0)), "c").evidence)
    missing = realism_answer(None, "cxrsynth evaluate --run r")
    assert missing.level == "unknown" and "cxrsynth evaluate --run r" in text(missing.next_steps)


def utility(tstr, tstr_ci, trtr=0.8, trtr_ci=(0.75, 0.85), ratio_ci=(0.8, 1.05)) -> dict:
    return {"tstr_auroc": tstr, "tstr_auroc_ci": list(tstr_ci), "trtr_auroc": trtr, "trtr_auroc_ci": list(trtr_ci),
            "ratio": tstr / trtr, "ratio_ci": list(ratio_ci), "n_train_synthetic": 500, "n_train_real": 400,
            "n_test": 300, "macro_over": ["Cardiomegaly"], "per_finding": []}


def test_utility_levels_and_an_unconditional_run() -> None:
    assert utility_answer(fidelity(1, (1, 1), utility=utility(0.78, (0.72, 0.84))), True, "r", "c").level == "good"
    partly = utility_answer(fidelity(1, (1, 1), utility=utility(0.65, (0.6, 0.7), ratio_ci=(0.75, 0.87))), True, "r", "c")
    assert partly.level == "caution"
    assert utility_answer(fidelity(1, (1, 1), utility=utility(0.52, (0.45, 0.6))), True, "r", "c").level == "bad"
    useless_test = utility(0.52, (0.45, 0.6), trtr=0.55, trtr_ci=(0.45, 0.65))
    assert utility_answer(fidelity(1, (1, 1), utility=useless_test), True, "r", "c").level == "unknown"
    unconditional = utility_answer(fidelity(1, (1, 1), skipped="unconditional run"), False, "r", "c")
    assert unconditional.short == "not measured" and "--conditional" in text(unconditional.next_steps)


def test_a_privacy_json_without_a_valid_epsilon_is_no_guarantee() -> None:
    answer = privacy_answer(audit(), {"unit": "patient"}, "cxrsynth audit --run r")
    assert answer.level == "caution" and "cannot be stated" in text(answer.evidence)
    assert any("never show their absence" in claim for claim in answer.cannot_claim)
    assert privacy_answer(None, {"unit": "patient"}, "c").short == "not measured"


def test_no_leak_states_the_audits_power_and_a_leak_does_not() -> None:
    answer = privacy_answer(audit(), None, "cxrsynth audit --run r")
    assert f"Audit power: {POWER_TEXT}." in text(answer.can_claim)
    leaky = privacy_answer(audit(flagged=3), None, "cxrsynth audit --run r")
    assert "Audit power" not in text(leaky.can_claim)


def test_an_audit_without_real_patient_ids_says_it_understates_leakage() -> None:
    for flagged in (0, 3):  # leak or not, the real leak may be larger
        answer = privacy_answer(audit(flagged=flagged, understates=True), None, "cxrsynth audit --run r")
        assert "This audit understates leakage: the data has no real patient ids" in answer.evidence[0]
        assert "one patient per image" in answer.evidence[0]
        assert "understates leakage" in answer.cannot_claim[0]
    assert "understates" not in text(privacy_answer(audit(), None, "c").evidence)


def test_the_epsilon_lower_bound_claims_joint_confidence() -> None:
    leaky = audit(attacks={"loss": attack(auc=0.9, ci=(0.85, 0.95), eps=1.5), "blind": attack("none")})
    evidence = text(privacy_answer(leaky, None, "c").evidence)
    assert "with ≥ 90% confidence jointly over every attack result (Clopper–Pearson bounds at 0.1/(2k) each) the model's true ε is at least this" in evidence
    assert "95% confidence" not in evidence


def test_an_audit_json_from_before_power_and_family_tests_still_gets_a_verdict() -> None:
    answer = privacy_answer(audit(power=False), None, "cxrsynth audit --run r")
    assert answer.level == "caution" and "Audit power" not in text(answer.can_claim)
    assert "p = 0.5" in text(answer.evidence)  # re-identification's binomial_p_value
    assert privacy_answer(audit(reid_p=0.001, power=False), None, "c").level == "bad"


def test_a_dp_run_labels_what_its_guarantee_does_not_cover() -> None:
    answer = privacy_answer(audit(), PRIVACY, "cxrsynth audit --run r")
    assert any("The audit's numbers are not covered by the DP guarantee" in line for line in answer.evidence)
    realism = realism_answer(fidelity(11.0, (9.0, 14.0)), "c", dp=True)
    assert "computed with a classifier trained on the member images" in realism.evidence[0]
    assert "not covered" not in text(realism_answer(fidelity(11.0, (9.0, 14.0)), "c").evidence)
    useful = utility_answer(fidelity(1, (1, 1), utility=utility(0.78, (0.72, 0.84))), True, "r", "c", dp=True)
    assert "TRTR and the ratio are not covered by the DP guarantee" in useful.evidence[0]


def test_realism_states_the_matched_n_of_its_distances() -> None:
    sampled = {**fidelity(11.0, (9.0, 14.0)), "n_synthetic": 800, "matched_n": 500,
               "fd_domain_sampling": {"method": "half-samples without replacement", "matched_n": 500, "n": 250,
                                      "n_reference": 250, "resamples": 200}}
    evidence = text(realism_answer(sampled, "c").evidence)
    assert "matched N = 500 synthetic (of 800) and 500 real-baseline images against 500 real test images" in evidence
    assert "mean over 200 half-samples of 250 vs 250 images" in evidence and "not the population distance" in evidence
    # A fidelity.json written before matched N still gets its verdict, with the set sizes.
    assert "N = 500 real test / 500 synthetic images" in text(realism_answer(fidelity(11.0, (9.0, 14.0)), "c").evidence)


def test_an_interval_too_wide_to_tell_is_not_called_realistic() -> None:
    # The quick demo's numbers: 10 vs 14 images per half-sample against 128-d features.
    wide = realism_answer(fidelity(9.38, (3.04, 24.3), base=6.19), "c")
    assert wide.level == "unknown" and wide.short == "inconclusive" and not wide.can_claim
    assert "Too few images to tell" in text(wide.evidence) and "--num-samples" in text(wide.next_steps)
