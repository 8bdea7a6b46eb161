"""The one-run canary audit (Steinke, Nasr & Jagielski 2023): the bound, its validity, the command.

The bound is checked against closed forms of the paper's theorem and against an independent
implementation of its δ term; its validity against randomised response with a known ε (the
mechanism for which the theorem is tight). The slow tests train tiny runs with canaries.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cxrsynth.audit.canaries import (
    audit_guesses,
    count_correct,
    eps_lower_bound,
    guess_candidates,
    p_value,
)


def _all_correct_bound(r: int, beta: float) -> float:
    """Theorem 3.1 with δ = 0 and v = r: P[Bin(r, q) >= r] = q^r = β ⇒ ε = ln(q / (1 − q)), q = β^(1/r)."""
    q = beta ** (1.0 / r)
    return math.log(q / (1.0 - q))


@pytest.mark.parametrize("r", [10, 100, 1000])
def test_all_correct_guesses_match_the_closed_form(r: int) -> None:
    # "For an ε-DP algorithm the number of correct guesses is dominated by Binomial(r, e^ε/(1+e^ε))"
    # (Steinke et al., Thm 3.1): r of r correct rejects ε exactly while q^r < β.
    assert eps_lower_bound(r, r, r, 0.95) == pytest.approx(_all_correct_bound(r, 0.05), rel=1e-9)
    # 100 of 100 at 95%: ε >= 3.49; 1000 of 1000: ε >= 5.81 (numbers from the closed form above).
    assert round(eps_lower_bound(100, 100, 100, 0.95), 2) == 3.49
    assert round(eps_lower_bound(1000, 1000, 1000, 0.95), 2) == 5.81


def test_p_value_at_the_bound_is_beta_and_grows_with_epsilon() -> None:
    m, r, v = 1000, 400, 330
    bound = eps_lower_bound(m, r, v, 0.95)
    q = 1 / (1 + math.exp(-bound))
    assert stats.binom.sf(v - 1, r, q) == pytest.approx(0.05, rel=1e-6)
    values = [p_value(m, r, v, eps) for eps in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert values == sorted(values)
    assert eps_lower_bound(m, r, r // 2, 0.95) == 0.0  # chance accuracy rejects nothing


def _delta_term_by_loops(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Independent transcription of the δ > 0 statement: f(v) + 2mδ · max_i (f(v−i) − f(v)) / i."""
    q = math.exp(eps) / (1 + math.exp(eps))

    def f(u: int) -> float:
        return sum(stats.binom.pmf(j, r, q) for j in range(max(u, 0), r + 1))

    alpha = max((f(v - i) - f(v)) / i for i in range(1, v + 1))
    return min(1.0, f(v) + 2 * m * delta * alpha)


@pytest.mark.parametrize(("m", "r", "v", "eps", "delta"), [(100, 40, 35, 1.0, 1e-3), (50, 50, 45, 2.0, 1e-4),
                                                              (200, 20, 20, 3.0, 1e-5)])
def test_delta_term_matches_the_theorem(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert p_value(m, r, v, eps, delta) == pytest.approx(_delta_term_by_loops(m, r, v, eps, delta), rel=1e-9)
    assert p_value(m, r, v, eps, delta) > p_value(m, r, v, eps, 0.0)
    assert eps_lower_bound(m, r, v, 0.95, delta) <= eps_lower_bound(m, r, v, 0.95, 0.0)


def test_count_correct_uses_top_and_bottom_scores() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5])
    included = np.array([True, False, False, True, True])
    assert count_correct(scores, included, 2, 0) == 1  # top 2: canaries 0 (in) and 2 (out)
    assert count_correct(scores, included, 2, 2) == 2  # bottom 2: canaries 1 (out ✓) and 3 (in ✗)
    assert count_correct(scores, included, 0, 1) == 1
    with pytest.raises(ValueError):
        count_correct(scores, included, 3, 3)


def _randomised_response(rng: np.random.Generator, m: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """m canaries; each score is its true bit, flipped with probability 1/(1+e^ε) (ε-DP), ties broken at random."""
    included = rng.random(m) < 0.5
    flipped = rng.random(m) < 1 / (1 + math.exp(eps))
    return (included ^ flipped) + 1e-3 * rng.random(m), included


# With n simulations, the count of bounds above ε is Binomial(n, <= 5%): the tolerance is 2.5 standard errors.
def _allowed_failures(n: int) -> float:
    return n * (0.05 + 2.5 * math.sqrt(0.05 * 0.95 / n))


@pytest.mark.parametrize("eps", [0.0, 1.0, 3.0])
def test_bound_is_valid_on_randomised_response_with_known_epsilon(eps: float) -> None:
    rng = np.random.default_rng(1)
    n, m = 300, 500
    fixed = [audit_guesses(*_randomised_response(rng, m, eps), 0.95, 0.0, guesses=m)[0].eps_lower_bound
             for _ in range(n)]
    assert sum(bound > eps for bound in fixed) <= _allowed_failures(n)
    chosen = [audit_guesses(*_randomised_response(rng, m, eps), 0.95, 0.0)[0].eps_lower_bound for _ in range(100)]
    assert sum(bound > eps for bound in chosen) <= _allowed_failures(100)
    if eps == 0.0:  # random scores: no leak, the bound is 0 in most audits
        assert np.mean(np.array(fixed) == 0.0) >= 0.9


def test_bound_approaches_epsilon_with_many_canaries() -> None:
    rng = np.random.default_rng(2)
    eps = 2.0
    best, candidates, selection = audit_guesses(*_randomised_response(rng, 10_000, eps), 0.95, 0.0)
    assert 0.85 * eps < best.eps_lower_bound <= eps
    assert selection == "best of 7 (union bound)" and len(candidates) == 7
    small = audit_guesses(*_randomised_response(rng, 100, eps), 0.95, 0.0)[0].eps_lower_bound
    assert small < best.eps_lower_bound  # few canaries: a weak test


def test_guess_candidates_and_fixed_guesses() -> None:
    assert guess_candidates(1000) == [50, 100, 200, 300, 500, 750, 1000]
    assert guess_candidates(3) == [1, 2, 3]
    from cxrsynth.errors import CxrsynthError

    with pytest.raises(CxrsynthError):
        audit_guesses(np.zeros(4), np.zeros(4, bool), guesses=5)


# ---------------------------------------------------------------------------------------------
# End to end: tiny runs with canaries
# ---------------------------------------------------------------------------------------------


def _train_canary_run(tmp_path: Path, steps: int, canaries: int, **extra) -> Path:
    from cxrsynth.config import TrainConfig
    from cxrsynth.train import train
    from tests.factories import make_prepared_folder

    data = make_prepared_folder(tmp_path / "data", n_patients=8, images_per_patient=1, size=16,
                                split_cycle=("member", "holdout"))
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), preset="tiny", max_steps=steps, batch_size=32, lr=1e-3, warmup_steps=10,
                      seed=1, checkpoint_every=100_000, progress_every=0, log_every=50, ema_decay=0.99,
                      canaries=canaries, **extra), run)
    return run


@pytest.mark.slow
def test_overfit_run_with_canaries_gives_a_positive_bound(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrsynth.cli import app

    run = _train_canary_run(tmp_path, steps=300, canaries=48)
    result = CliRunner().invoke(app, ["audit", "canaries", "--run", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "audit" / "canaries.json").read_text())
    print("overfit canary audit:", {key: report[key] for key in ("m", "included_count", "guesses",
                                                                  "correct_guesses", "eps_lower_bound")})
    assert report["m"] == 48 and report["epsilon"] is None and report["violation"] is False
    # 48 canaries cap the bound near 2.2 (48 of 48 correct at β/7); 300 full-batch steps memorise them.
    assert report["eps_lower_bound"] > 1.0
    assert report["correct_guesses"] <= report["guesses"] <= 48
    # Had this run claimed ε = 0.5, the audit would have caught the false claim: a loud, non-zero exit.
    (run / "privacy.json").write_text(json.dumps({"epsilon": 0.5, "delta": 1e-5, "unit": "patient"}))
    result = CliRunner().invoke(app, ["audit", "canaries", "--run", str(run), "--device", "cpu"])
    assert result.exit_code == 3 and "PRIVACY VIOLATION" in result.output
    claimed = json.loads((run / "audit" / "canaries.json").read_text())
    assert claimed["violation"] is True and claimed["epsilon"] == 0.5 and claimed["ratio"] > 1
    assert claimed["eps_lower_bound"] == report["eps_lower_bound"]  # same scores, same δ (1e-5)


@pytest.mark.slow
def test_dp_run_with_canaries_stays_below_its_epsilon(tmp_path: Path) -> None:
    from cxrsynth.audit.canaries import audit_canaries

    run = _train_canary_run(tmp_path, steps=30, canaries=48, dp=True, epsilon=8.0, delta=1e-4,
                            noise_multiplicity=1, logical_batch_size=16)
    privacy = json.loads((run / "privacy.json").read_text())
    report = audit_canaries(run, device="cpu")
    print("DP canary audit:", {key: report[key] for key in ("m", "included_count", "correct_guesses", "guesses",
                                                             "eps_lower_bound", "epsilon", "ratio")})
    assert report["epsilon"] == pytest.approx(privacy["epsilon"])
    assert report["eps_lower_bound"] <= report["epsilon"] and report["violation"] is False
    assert report["ratio"] == pytest.approx(report["eps_lower_bound"] / report["epsilon"])
