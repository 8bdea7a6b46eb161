"""The ε we report equals an independent accountant's (Google's dp-accounting), σ calibration, the step limit."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from cxrsynth.dp.accounting import (
    EPSILON_TOLERANCE,
    PrivacyLedger,
    calibrate_noise_multiplier,
    epsilon_after,
    max_steps_within,
)
from cxrsynth.errors import CxrsynthError

CASES = [  # (σ, q, steps, δ): GPU-like large runs and the small ones the tests train
    (1.1, 0.01, 10_000, 1e-5),
    (0.8, 0.05, 2_000, 1e-6),
    (2.0, 0.2, 300, 1e-4),
    (0.83, 0.4, 6, 5e-3),
]


def independent_epsilon(sigma: float, q: float, steps: int, delta: float, accountant: str) -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian steps from dp-accounting (PLD for prv, RDP for rdp)."""
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    reference = pld.PLDAccountant() if accountant == "prv" else rdp.RdpAccountant()
    reference.compose(event, steps)
    return reference.get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), CASES)
def test_epsilon_matches_dp_accounting_within_5_percent(sigma, q, steps, delta, accountant) -> None:
    ours = epsilon_after(sigma, q, steps, delta, accountant)
    theirs = independent_epsilon(sigma, q, steps, delta, accountant)
    assert ours == pytest.approx(theirs, rel=0.05)


def test_ledger_composes_step_by_step_like_one_block() -> None:
    ledger = PrivacyLedger(unit="patient", privacy_units=100, target_epsilon=5.0, delta=1e-3, accountant="prv",
                           noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1, logical_batch_size=10,
                           noise_multiplicity=4, planned_steps=50)
    assert ledger.epsilon() == 0.0
    for _ in range(50):
        ledger.record_step()
    assert ledger.steps == 50
    assert ledger.epsilon() == pytest.approx(independent_epsilon(1.0, 0.1, 50, 1e-3, "prv"), rel=0.05)
    restored = PrivacyLedger.from_state_dict(ledger.state_dict(), "test")
    assert restored == ledger and restored.epsilon() == ledger.epsilon()


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibrated_sigma_reaches_the_target_without_exceeding_it(accountant: str) -> None:
    sigma = calibrate_noise_multiplier(2.0, 1e-5, 0.02, 1_000, accountant)
    spent = epsilon_after(sigma, 0.02, 1_000, 1e-5, accountant)
    assert 2.0 - 2 * EPSILON_TOLERANCE <= spent <= 2.0
    assert independent_epsilon(sigma, 0.02, 1_000, 1e-5, accountant) == pytest.approx(spent, rel=0.05)


def test_an_impossible_budget_is_a_clear_error() -> None:
    with pytest.raises(CxrsynthError, match="raise --epsilon"):
        calibrate_noise_multiplier(1e-6, 1e-9, 1.0, 100_000, "rdp")


def test_max_steps_within_is_the_last_step_under_the_target() -> None:
    allowed = max_steps_within(1.0, 0.1, 3.0, 1e-4, "rdp", upper=1_000)
    assert 0 < allowed < 1_000
    assert epsilon_after(1.0, 0.1, allowed, 1e-4, "rdp") <= 3.0 < epsilon_after(1.0, 0.1, allowed + 1, 1e-4, "rdp")


def test_a_garbled_ledger_state_is_refused() -> None:
    with pytest.raises(CxrsynthError, match="budget spent cannot be recovered"):
        PrivacyLedger.from_state_dict({"unit": "patient", "history": [["x"]]}, "checkpoint")
