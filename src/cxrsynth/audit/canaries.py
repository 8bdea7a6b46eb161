"""One-run privacy audit with canaries (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023, arXiv 2305.08846): ``cxrsynth audit canaries --run RUN``.

The run was trained with ``--canaries M`` (:mod:`cxrsynth.train.canaries`): M canary patients,
each included independently with probability ½ (S_i = ±1). The auditor scores every canary with
a white-box membership attack, guesses "in" for the k₊ highest-scoring canaries and "out" for
the k₋ lowest, abstains on the rest, and counts the correct guesses v among r = k₊ + k₋.

The bound (their Theorem 3.1 with the δ term of their Appendix code)
    For an (ε, δ)-DP training algorithm and any guesser,

        P[v correct or more] ≤ f(v) + 2·m·δ·α,   f(u) = P[Binomial(r, e^ε/(1+e^ε)) ≥ u],
        α = max_{1≤i≤v} (f(v−i) − f(v)) / i,

    so ε is rejected at confidence 1−β when this p-value is below β. :func:`eps_lower_bound`
    returns the largest rejected ε (bisection; 0 when none is): "the run is not (ε, δ)-DP for any
    ε below eps_lower_bound", wrong with probability at most β over the canaries' inclusion and
    the training randomness. δ is the run's (``RUN/privacy.json``), else 1e-5.

Choosing the guesses
    The attack and its settings are fixed a priori — there are no calibration canaries, since the
    canaries' membership is what is tested: the ``loss`` attack (ε-prediction MSE, lower ⇒ member)
    at t = 100 over 16 noise draws, on the run's EMA model. The paper's experiments report the best
    bound over several guess counts; picking the best on the same data costs a union bound, which
    the paper's figures do not pay. We pay it: without ``--guesses``, every candidate
    r ∈ {5, 10, 20, 30, 50, 75, 100}% of m (k₊ = ⌈r/2⌉, k₋ = ⌊r/2⌋) is evaluated at β / (number of
    candidates) and the largest bound is reported, which keeps the 1−β confidence. ``--guesses R``
    fixes r (no correction).

What it does not show
    A bound near 0 does not show that the model is private: with few canaries the test is weak
    (even M perfect guesses give at most ≈ ln(M/ln(1/β))), and the canaries are one kind of
    input chosen by us, not the worst case. A DP run whose bound exceeds its ε is a contradiction:
    the accounting or the implementation is wrong (``violation``).

``RUN/audit/canaries.json`` (written atomically; ``cxrsynth audit`` keeps it when it replaces
``RUN/audit/``): ``m``, ``included_count``, ``guesses``, ``k_in``, ``k_out``, ``correct_guesses``,
``eps_lower_bound``, ``confidence``, ``delta``, ``delta_source``, ``attack``, ``timestep``,
``noise_draws``, ``guess_selection`` (``fixed`` or ``best of N, union bound``), ``candidates``
(each candidate's r, v and bound), ``epsilon`` and ``ratio`` (= eps_lower_bound / epsilon) for a
DP run (else null), ``violation`` (bool), ``seconds``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats

from cxrsynth.errors import CxrsynthError

CANARIES_FILE = "canaries.json"
CANARIES_FORMAT = 1
DEFAULT_ATTACK = "loss"
DEFAULT_TIMESTEP = 100
DEFAULT_NOISE_DRAWS = 16
DEFAULT_CONFIDENCE = 0.95
GUESS_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
"""Candidate guess counts r as fractions of m (chosen before seeing any score)."""
BISECTION_STEPS = 60
EPS_CEILING = 100.0

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """P-value of v or more correct guesses of r under the hypothesis "(ε, δ)-DP" (Steinke et al., Thm 3.1).

    Args:
        m: canaries (each included with probability ½).
        r: guesses made (the others abstain).
        v: correct guesses.
        epsilon: ε of the hypothesis (>= 0).
        delta: δ of the hypothesis, in [0, 1].

    Returns:
        ``min(1, f(v) + 2·m·δ·α)`` with f and α as in the module docstring.

    Raises:
        ValueError: unless 0 <= v <= r <= m, ε >= 0 and 0 <= δ <= 1.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")
    if not epsilon >= 0 or not 0.0 <= delta <= 1.0:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Bin(r, q) >= v]
    alpha = 0.0
    if delta > 0 and v > 0:
        i = np.arange(1, v + 1)
        # f(v−i) − f(v) = P[v−i <= Bin < v] = Σ_{j=1..i} pmf(v−j)
        alpha = float(np.max(np.cumsum(stats.binom.pmf(v - i, r, q)) / i))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def eps_lower_bound(m: int, r: int, v: int, confidence: float = DEFAULT_CONFIDENCE, delta: float = 0.0) -> float:
    """The largest ε that v correct of r guesses on m canaries rejects at ``confidence`` (0 if none).

    The p-value grows with ε, so the bound is found by bisection (to ~1e-12 relative precision).

    Raises:
        ValueError: for counts or a confidence out of range.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    beta = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:
        low, high = high, 2.0 * high
        if high > EPS_CEILING:  # only v = r with huge r gets here; the bound is then "very large"
            return low
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if p_value(m, r, v, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


def count_correct(member_scores: np.ndarray, included: np.ndarray, k_in: int, k_out: int) -> int:
    """Correct guesses when the k_in highest scores are guessed "in" and the k_out lowest "out".

    Args:
        member_scores: one score per canary, higher ⇒ more likely included (ties broken by position).
        included: the true inclusion of each canary.
        k_in: positive guesses.
        k_out: negative guesses (k_in + k_out <= m).

    Raises:
        ValueError: for guess counts that do not fit.
    """
    m = len(member_scores)
    if k_in < 0 or k_out < 0 or k_in + k_out > m:
        raise ValueError(f"k_in={k_in}, k_out={k_out} do not fit {m} canaries")
    order = np.argsort(-np.asarray(member_scores, dtype=float), kind="stable")
    included = np.asarray(included, dtype=bool)
    correct = int(included[order[:k_in]].sum())
    if k_out:
        correct += int((~included[order[m - k_out:]]).sum())
    return correct


def guess_candidates(m: int) -> list[int]:
    """Candidate guess counts r for m canaries (distinct, >= 1; see :data:`GUESS_FRACTIONS`)."""
    return sorted({max(1, min(m, round(fraction * m))) for fraction in GUESS_FRACTIONS})


@dataclass(frozen=True)
class GuessResult:
    """One guess count's outcome: r guesses (k_in "in", k_out "out"), v correct, and its bound."""

    guesses: int
    k_in: int
    k_out: int
    correct: int
    eps_lower_bound: float

    def to_json(self) -> dict:
        """The result as a JSON object."""
        return {"guesses": self.guesses, "k_in": self.k_in, "k_out": self.k_out, "correct_guesses": self.correct,
                "eps_lower_bound": self.eps_lower_bound}


def audit_guesses(member_scores: np.ndarray, included: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
                  delta: float = 0.0, guesses: int | None = None) -> tuple[GuessResult, list[GuessResult], str]:
    """The ε lower bound of the canaries' scores: at a fixed r, or the best candidate r under a union bound.

    Args:
        member_scores: one score per canary, higher ⇒ more likely included.
        included: true inclusion.
        confidence: 1−β of the reported bound.
        delta: δ of the hypothesis.
        guesses: r (k_in = ⌈r/2⌉, k_out = ⌊r/2⌋); None: every :func:`guess_candidates` r at β / #candidates.

    Returns:
        ``(best, candidates, selection)`` with selection ``fixed`` or ``best of N (union bound)``.

    Raises:
        CxrsynthError: for ``guesses`` outside 1..m or no canaries.
    """
    m = len(member_scores)
    if m == 0:
        raise CxrsynthError("there are no canaries to audit", "train with --canaries M (e.g. 1000)")
    if guesses is not None and not 1 <= guesses <= m:
        raise CxrsynthError(f"--guesses {guesses} is out of range", f"use 1..{m} (the number of canaries)")
    counts = [guesses] if guesses is not None else guess_candidates(m)
    level = 1.0 - (1.0 - confidence) / len(counts)  # Bonferroni: each candidate at β / N
    results = []
    for r in counts:
        k_in, k_out = (r + 1) // 2, r // 2
        v = count_correct(member_scores, included, k_in, k_out)
        results.append(GuessResult(r, k_in, k_out, v, eps_lower_bound(m, r, v, level, delta)))
    best = max(results, key=lambda result: (result.eps_lower_bound, -result.guesses))
    selection = "fixed" if guesses is not None else f"best of {len(counts)} (union bound)"
    return best, results, selection


def score_canaries(run_dir: Path, images: np.ndarray, attack: str, timestep: int, noise_draws: int,
                   batch_size: int, seed: int, device) -> np.ndarray:
    """Scores of the canary images by a white-box attack, oriented so that higher ⇒ "included".

    Raises:
        CxrsynthError: for an attack that is not white-box or needs more than the model.
    """
    from cxrsynth.audit.registry import NEEDS_MODEL, AttackContext, AttackSettings, get_attack
    from cxrsynth.audit.whitebox import WhiteBoxModel
    from cxrsynth.sample import load_sampling_model

    spec = get_attack(attack)
    if spec.access != "white-box" or spec.needs - {NEEDS_MODEL}:
        raise CxrsynthError(f"attack {attack!r} cannot score canaries (it needs {sorted(spec.needs)})",
                            "use a white-box attack that needs only the model, e.g. loss")
    settings = AttackSettings(timestep=timestep, noise_draws=noise_draws, batch_size=batch_size, seed=seed)
    model = load_sampling_model(run_dir, device)
    settings.validate(int(model.scheduler.config.num_train_timesteps))
    white_box = WhiteBoxModel(model.unet, model.scheduler, None, seed=seed)
    context = AttackContext(images=images, calibration_rows=np.zeros(0, dtype=np.int64),
                            calibration_is_member=np.zeros(0, dtype=bool), settings=settings, model=white_box)
    scores = np.asarray(spec.score(context), dtype=float)
    return -scores if spec.member_if == "lower" else scores


def read_privacy_guarantee(run_dir: Path) -> float | None:
    """ε of ``RUN/privacy.json`` (a DP run), or None for a run trained without DP.

    Raises:
        CxrsynthError: when privacy.json exists but holds no valid ε.
    """
    import json

    from cxrsynth.config import PRIVACY_FILE

    path = run_dir / PRIVACY_FILE
    if not path.is_file():
        return None
    try:
        epsilon = float(json.loads(path.read_text())["epsilon"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CxrsynthError(f"{path} holds no valid epsilon ({exc})", "re-run the DP training that writes it") from None
    return epsilon


def audit_canaries(run: str | Path, attack: str = DEFAULT_ATTACK, confidence: float = DEFAULT_CONFIDENCE,
                   guesses: int | None = None, timestep: int = DEFAULT_TIMESTEP,
                   noise_draws: int = DEFAULT_NOISE_DRAWS, batch_size: int = 64, seed: int = 0,
                   device: str = "auto", log: Log = _quiet) -> dict:
    """Run the one-run canary audit of ``run`` and write ``RUN/audit/canaries.json`` (see the module docstring).

    Args:
        run: a run folder trained with ``--canaries M``.
        attack: white-box attack scoring the canaries (fixed a priori; default ``loss``).
        confidence: 1−β of the bound.
        guesses: fixed number of guesses r; None chooses among :func:`guess_candidates` with a union bound.
        timestep: t of the attack.
        noise_draws: noise draws of the attack.
        batch_size: images per forward pass.
        seed: seed of the attack's noise draws.
        device: ``auto``, ``cpu``, ``cuda``…

    Returns:
        The canaries.json object; ``violation`` is True when a DP run's bound exceeds its ε.

    Raises:
        CxrsynthError: for a run without canaries or without a trained model, or invalid options.
    """
    from cxrsynth.audit.runner import read_delta, resolve_device
    from cxrsynth.fsutil import atomic_write_json
    from cxrsynth.train.canaries import canary_folder, load_canaries

    run = Path(run)
    started = time.perf_counter()
    if not 0.0 < confidence < 1.0:
        raise CxrsynthError(f"--confidence must be in (0, 1), got {confidence}", "e.g. 0.95")
    if not canary_folder(run).is_dir():
        raise CxrsynthError(f"{run} has no canaries/ folder: it was not trained with --canaries",
                            "train an audit run with `cxrsynth train --canaries M ...` (e.g. M = 1000)")
    canaries = load_canaries(run)
    delta, delta_source = read_delta(run)
    epsilon = read_privacy_guarantee(run)
    log(f"scoring {len(canaries)} canaries with {attack} (t = {timestep}, {noise_draws} noise draws)")
    scores = score_canaries(run, canaries.images, attack, timestep, noise_draws, batch_size, seed,
                            resolve_device(device))
    best, candidates, selection = audit_guesses(scores, canaries.included, confidence, delta, guesses)
    violation = epsilon is not None and best.eps_lower_bound > epsilon
    report = {
        "format": CANARIES_FORMAT,
        "m": len(canaries),
        "included_count": int(canaries.included.sum()),
        **best.to_json(),
        "confidence": confidence,
        "delta": delta,
        "delta_source": delta_source,
        "attack": attack,
        "timestep": timestep,
        "noise_draws": noise_draws,
        "guess_selection": selection,
        "candidates": [candidate.to_json() for candidate in candidates],
        "epsilon": epsilon,
        "ratio": best.eps_lower_bound / epsilon if epsilon else None,
        "violation": bool(violation),
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_json(run / "audit" / CANARIES_FILE, report)
    return report
