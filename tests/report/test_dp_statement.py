"""The report's statement of a DP guarantee names what it treats as public and flags replayable noise."""

from __future__ import annotations

from cxrsynth.report.verdict import dp_guarantee

PRIVACY = {"epsilon": 4.0, "delta": 1e-5, "unit": "patient", "privacy_units": 120, "accountant": "prv",
           "noise_multiplier": 1.1, "steps": 50, "sample_rate": 0.05, "noise_source": "os-entropy"}


def test_a_current_dp_run_states_the_public_count_and_no_replay_warning() -> None:
    statement, caveats = dp_guarantee(PRIVACY)
    assert "(ε = 4, δ = 1e-05) per patient over 120 patients" in statement
    assert any("number of patients is treated as public" in caveat for caveat in caveats)
    assert not any("replayed" in caveat for caveat in caveats)


def test_a_run_without_secret_noise_is_flagged_as_replayable() -> None:
    _, caveats = dp_guarantee({key: value for key, value in PRIVACY.items() if key != "noise_source"})
    assert any("can be replayed from the published seed" in caveat for caveat in caveats)
