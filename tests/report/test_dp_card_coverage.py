"""The words a DP run's report and model card use for labels and counts (review findings P3, P4, P6)."""

from __future__ import annotations

from types import SimpleNamespace

from cxrsynth.report import coverage
from cxrsynth.report.verdict import _attack_evidence, privacy_answer


def _config(**changes):
    base = {"conditional": True, "dp": False, "findings": None, "max_label_findings": 2}
    return SimpleNamespace(**{**base, **changes})


def test_conditioning_is_described_by_the_vocabulary_kind() -> None:
    assert "public label schema" in coverage.conditioning_text(_config(dp=True), 106)
    assert "fixed before training (no counts)" in coverage.conditioning_text(_config(findings="A,B"), 4)
    assert "seen in the member split (7 sets)" in coverage.conditioning_text(_config(), 7)
    assert coverage.conditioning_text(_config(conditional=False), None) == "unconditional"


AUDIT = {"attacks": {"secmi": {"access": "white-box", "auc": 1.0, "p_value_tail": 0.167}},
         "summary": {"attacks_beating_chance": [], "tests": [{"name": "secmi:tail", "p_value": 0.167, "rejected": False}],
                     "worst_tpr_at_zero_fpr": {"attack": "secmi", "value": 1.0}, "worst_eps_lower_bound": {"value": 1.3, "attack": "secmi"},
                     "leak_detected": False},
         "n_evaluation": {"members": 2, "nonmembers": 2}, "delta": 1e-5}


def test_a_small_audit_says_a_perfect_tpr_is_not_significant() -> None:
    text = " ".join(_attack_evidence(AUDIT))
    assert "finds 100% of members (tail test p = 0.167: not significant at this N" in text


def test_an_image_level_epsilon_is_not_contradicted_by_a_patient_level_bound() -> None:
    image = privacy_answer(AUDIT, {"epsilon": 0.5, "delta": 1e-5, "unit": "image", "noise_source": "os-entropy"},
                           "cxrsynth audit")
    assert not any("impossible if training" in line for line in image.cannot_claim)
    assert any("k·ε" in line for line in image.cannot_claim)
    patient = privacy_answer(AUDIT, {"epsilon": 0.5, "delta": 1e-5, "unit": "patient", "noise_source": "os-entropy"},
                             "cxrsynth audit")
    assert any("impossible if training" in line for line in patient.cannot_claim)
