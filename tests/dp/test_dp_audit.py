"""End to end on the phantom: a DP run and a non-DP run of one config, both audited (bench/dp_audit.py's quick plan).

On the DP run (ε ≤ 1) no white-box attack's empirical ε lower bound may exceed the proven ε, and
no attack may beat chance significantly or exceed the largest AUC that (ε, δ)-DP allows.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dp_audit.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("dp_audit_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def max_auc_under_dp(epsilon: float, delta: float) -> float:
    """The largest AUC any membership test can have against an (ε, δ)-DP mechanism.

    (ε, δ)-DP bounds every test's power: TPR ≤ min(1, e^ε·FPR + δ, 1 − e^−ε·(1 − δ − FPR)).
    """
    fpr = np.linspace(0.0, 1.0, 100_001)
    tpr = np.minimum.reduce([np.ones_like(fpr), math.exp(epsilon) * fpr + delta,
                             1 - math.exp(-epsilon) * (1 - delta - fpr)])
    integrate = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return float(integrate(np.clip(tpr, 0, 1), fpr))


def test_max_auc_under_dp_matches_known_values() -> None:
    assert max_auc_under_dp(0.0, 0.0) == pytest.approx(0.5, abs=1e-6)
    assert 0.5 < max_auc_under_dp(1.0, 1e-3) < max_auc_under_dp(2.0, 1e-3) < 1.0


@pytest.mark.slow
def test_dp_and_non_dp_runs_audited_and_the_dp_guarantee_holds(tmp_path: Path) -> None:
    bench = _load_bench()
    results = bench.run_comparison(tmp_path / "comparison", bench.QUICK_PLAN, log=lambda _: None)
    print(bench.results_table(results))
    privacy = results["privacy"]
    assert privacy["unit"] == "patient" and privacy["epsilon"] <= privacy["target_epsilon"] == 1.0
    assert results["DP"]["delta"] == privacy["delta"] and results["DP"]["delta_source"] == "privacy.json"
    allowed_auc = max_auc_under_dp(privacy["epsilon"], privacy["delta"])
    for name in ("non-DP", "DP"):
        assert set(results[name]["attacks"]) == set(bench.WHITE_BOX_ATTACKS), f"{name}: every white-box attack ran"
    for attack, result in results["DP"]["attacks"].items():
        assert result["eps_lower_bound"] <= privacy["epsilon"], f"{attack} measured more leakage than ε allows"
        low, high = result["auc_ci"]
        assert low <= 0.5 <= high or high < 0.5, f"{attack} beat chance on the ε ≤ 1 run: AUC {result['auc']}"
        assert low <= allowed_auc, f"{attack}: AUC {result['auc']} above the {allowed_auc:.3f} (ε, δ)-DP allows"
