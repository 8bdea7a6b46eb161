"""Privacy accounting of a DP run: calibrate σ to a target ε, track ε spent, write ``privacy.json``.

The mechanism is the Poisson-subsampled Gaussian: every step samples each privacy unit (record)
with probability q, clips each record's gradient to norm C and adds N(0, σ²C²) noise to the sum.
Opacus' accountants compose it over steps: ``prv`` (privacy random variables, Gopi et al. 2021;
the reported ε is PRV's upper bound) or ``rdp`` (Rényi DP, Mironov 2017).

The ledger's state (the accountant's history plus the calibration) is JSON and goes into every
checkpoint, so a resumed run continues the budget instead of resetting it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opacus.accountants import IAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.accountants.registry import create_accountant

from cxrsynth.config import PRIVACY_FILE
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_write_json

EPSILON_TOLERANCE = 0.01
"""σ is calibrated so that the planned run spends between target − 0.01 and target."""

NOISE_SOURCE = "os-entropy"
"""How a DP run's noise, Poisson sampling and per-record draws are seeded (``privacy.json`` ``noise_source``)."""


def default_delta(privacy_units: int) -> float:
    """δ = 1/(10·n) for n privacy units: a failure probability well below one unit's share."""
    return 1.0 / (10.0 * privacy_units)


def _accountant(name: str, history: list[tuple[float, float, int]]) -> IAccountant:
    accountant = create_accountant(mechanism=name)
    accountant.history = list(history)
    return accountant


# Opacus' RDP analysis (also used inside PRV to bound its domain) warns when the best Rényi order is
# the largest it tries; the bound stays valid, only possibly loose, and the ε we report is checked
# against an independent accountant in the tests.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha", category=UserWarning)


def epsilon_after(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps (0 for no steps)."""
    if steps <= 0:
        return 0.0
    return float(_accountant(accountant, [(noise_multiplier, sample_rate, steps)]).get_epsilon(delta=delta))


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                               accountant: str) -> float:
    """The smallest σ (to :data:`EPSILON_TOLERANCE` in ε) with ε(σ, q, steps, δ) ≤ ``target_epsilon``.

    Raises:
        CxrsynthError: when no σ Opacus accepts reaches the target (a budget far too small).
    """
    try:
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant, epsilon_tolerance=EPSILON_TOLERANCE))
    except ValueError as exc:
        raise CxrsynthError(
            f"no noise level reaches ε = {target_epsilon} at δ = {delta:.3g} over {steps} steps with sampling rate "
            f"{sample_rate:.4g} ({exc})",
            "raise --epsilon, train fewer steps, or lower --logical-batch-size",
        ) from None


def max_steps_within(noise_multiplier: float, sample_rate: float, target_epsilon: float, delta: float,
                     accountant: str, upper: int) -> int:
    """The most steps (≤ ``upper``) whose ε stays ≤ ``target_epsilon`` (binary search; ε grows with steps)."""
    if epsilon_after(noise_multiplier, sample_rate, upper, delta, accountant) <= target_epsilon:
        return upper
    low, high = 0, upper  # ε(low) ≤ target < ε(high)
    while high - low > 1:
        middle = (low + high) // 2
        if epsilon_after(noise_multiplier, sample_rate, middle, delta, accountant) <= target_epsilon:
            low = middle
        else:
            high = middle
    return low


@dataclass
class PrivacyLedger:
    """The privacy parameters of a DP run and the accountant that composes its steps.

    Attributes:
        unit: ``patient`` or ``image`` — what one record (one clipped gradient) is.
        privacy_units: number of records in the member split.
        target_epsilon: ε the run may not exceed.
        delta: δ of the guarantee.
        accountant: ``prv`` or ``rdp``.
        noise_multiplier: σ (noise std = σ · C).
        max_grad_norm: C, the per-record clipping norm.
        sample_rate: q, the Poisson probability of each record per step.
        logical_batch_size: expected records per step (q · privacy_units).
        noise_multiplicity: (timestep, noise) draws averaged per record before clipping.
        planned_steps: the steps σ was calibrated for.
        history: the accountant's ``(σ, q, steps)`` entries (steps taken so far).
    """

    unit: str
    privacy_units: int
    target_epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    logical_batch_size: float
    noise_multiplicity: int
    planned_steps: int
    history: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """DP steps taken so far."""
        return sum(int(entry[2]) for entry in self.history)

    def record_step(self) -> None:
        """Account one more step of this run's mechanism."""
        accountant = _accountant(self.accountant, self.history)
        accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.history = [tuple(entry) for entry in accountant.history]

    def epsilon(self) -> float:
        """ε spent so far at this run's δ (0 before the first step)."""
        if not self.history:
            return 0.0
        return float(_accountant(self.accountant, self.history).get_epsilon(delta=self.delta))

    def allowed_steps(self, requested: int) -> int:
        """How many of ``requested`` total steps fit within the target ε (all of them when σ was calibrated for them)."""
        if requested <= self.planned_steps:
            return requested
        return max_steps_within(self.noise_multiplier, self.sample_rate, self.target_epsilon, self.delta,
                                self.accountant, requested)

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state (kept in every checkpoint)."""
        state = asdict(self)
        state["history"] = [list(entry) for entry in self.history]
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], source: str) -> "PrivacyLedger":
        """The ledger saved by :meth:`state_dict`.

        Raises:
            CxrsynthError: when ``state`` is not a ledger's state (``source`` names where it came from).
        """
        try:
            values = dict(state)
            values["history"] = [(float(s), float(q), int(n)) for s, q, n in values["history"]]
            return cls(**values)
        except (TypeError, ValueError, KeyError) as exc:
            raise CxrsynthError(f"{source} holds no valid privacy accountant state ({exc})",
                                "resume from another checkpoint, or retrain: the budget spent cannot be recovered")

    def matches(self, other: "PrivacyLedger") -> list[str]:
        """Calibration fields of ``other`` that differ from this ledger's (history and planned steps excluded)."""
        keys = ("unit", "privacy_units", "target_epsilon", "delta", "accountant", "max_grad_norm", "sample_rate",
                "noise_multiplicity")
        return [f"{key} {getattr(other, key)!r} → {getattr(self, key)!r}" for key in keys
                if not _same(getattr(self, key), getattr(other, key))]

    def report(self, stopped_early: bool) -> dict[str, Any]:
        """The content of ``RUN/privacy.json`` (see :func:`write_privacy_report`)."""
        return {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "unit": self.unit,
            "privacy_units": self.privacy_units,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "logical_batch_size": self.logical_batch_size,
            "steps": self.steps,
            "planned_steps": self.planned_steps,
            "noise_multiplicity": self.noise_multiplicity,
            "stopped_early": stopped_early,
            "mechanism": "Poisson-subsampled Gaussian (DP-SGD), add/remove adjacency of one "
                         f"{self.unit} and all their images",
            "noise_source": NOISE_SOURCE,
            "public_assumption": "the number of privacy units (privacy_units) is treated as public: the sample "
                                 "rate q = logical_batch_size / privacy_units and the default δ = 1/(10 · units) "
                                 "are computed from it, so (ε, δ) does not hide the exact count",
            "noise_rng": "torch's generator (not a cryptographically secure RNG) seeded with 63 bits from "
                         "os.urandom at the run's start, never from the published --seed; its state lives only "
                         "in the run's private checkpoints (noise, Poisson sampling and per-record draws)",
        }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    return a == b


def write_privacy_report(run_dir: str | Path, ledger: PrivacyLedger, stopped_early: bool) -> dict[str, Any]:
    """Write ``RUN/privacy.json`` atomically; returns what it wrote.

    Keys: ``epsilon`` (ε spent, the accountant's upper bound), ``delta``, ``target_epsilon``,
    ``unit`` (``patient`` or ``image``), ``privacy_units``, ``accountant`` (``prv``/``rdp``),
    ``noise_multiplier`` (σ), ``max_grad_norm`` (C), ``sample_rate`` (q), ``logical_batch_size``,
    ``steps`` (taken), ``planned_steps``, ``noise_multiplicity`` (K), ``stopped_early`` (the run
    stopped before its requested steps to stay within ``target_epsilon``), ``mechanism``,
    ``noise_source`` (``os-entropy``: how the noise, sampling and per-record draws were seeded),
    ``noise_rng`` (the same in words) and ``public_assumption`` (what the guarantee treats as public).
    """
    report = ledger.report(stopped_early)
    atomic_write_json(Path(run_dir) / PRIVACY_FILE, report)
    return report
