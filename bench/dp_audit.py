"""Does DP training hold up under attack? A DP run and a non-DP run of one config, both audited.

Phantom → prepare → train twice (same preset, steps, batch, learning rate, seed; one with
``--dp --epsilon E``) → ``cxrsynth audit`` with the white-box membership attacks on each. Prints
one table: per attack, AUC (95% CI), TPR at the smallest FPR, and the empirical ε lower bound,
for both runs, plus the DP run's ε. On the DP run every ε lower bound must stay ≤ its ε — a lower
bound above the proven upper bound would mean the implementation breaks its guarantee.

    python bench/dp_audit.py --out /tmp/dp-audit            # the figures kept in RESULTS.md
    python bench/dp_audit.py --out /tmp/dp-audit --quick    # what tests/dp/test_dp_audit.py runs

Re-running reuses whatever stages the folder already holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

WHITE_BOX_ATTACKS: tuple[str, ...] = ("loss", "recon", "secmi", "pia", "pian")


@dataclass(frozen=True)
class ComparisonPlan:
    """One DP-vs-non-DP comparison.

    Attributes:
        patients: phantom patients (45% become members, 45% holdout, 10% test).
        studies_per_patient: mean phantom studies per patient.
        size: prepared image side.
        preset: UNet preset of both runs.
        steps: optimizer steps of both runs.
        batch_size: non-DP batch; the DP run's expected logical batch.
        lr: peak learning rate of both runs.
        epsilon: the DP run's target ε (δ: the default 1/(10·patients)).
        noise_multiplicity: the DP run's K.
        noise_draws: noise draws of the loss and recon attacks.
        seed: one seed for everything.
    """

    patients: int
    studies_per_patient: float
    size: int
    preset: str
    steps: int
    batch_size: int
    lr: float
    epsilon: float
    noise_multiplicity: int
    noise_draws: int
    seed: int = 0


DEFAULT_PLAN = ComparisonPlan(patients=200, studies_per_patient=1.5, size=32, preset="tiny", steps=800,
                              batch_size=16, lr=1e-3, epsilon=1.0, noise_multiplicity=2, noise_draws=8)
QUICK_PLAN = ComparisonPlan(patients=100, studies_per_patient=1.0, size=16, preset="tiny", steps=150,
                            batch_size=16, lr=1e-3, epsilon=1.0, noise_multiplicity=1, noise_draws=4)


def _train(out: Path, name: str, plan: ComparisonPlan, dp: bool) -> Path:
    from cxrsynth.config import TrainConfig
    from cxrsynth.train import train

    run = out / name
    if (run / "pipeline" / "model_index.json").is_file():
        return run
    options = dict(data=str(out / "data"), preset=plan.preset, max_steps=plan.steps, batch_size=plan.batch_size,
                   lr=plan.lr, seed=plan.seed, warmup_steps=min(100, plan.steps // 10), ema_decay=0.995,
                   checkpoint_every=max(plan.steps // 3, 1), keep_checkpoints=1, progress_every=0, log_every=50)
    if dp:
        options.update(dp=True, epsilon=plan.epsilon, noise_multiplicity=plan.noise_multiplicity)
    train(TrainConfig(**options), run, resume=(run / "config.yaml").is_file())
    return run


def _audit(run: Path, plan: ComparisonPlan) -> dict:
    from cxrsynth.audit.runner import AuditOptions, audit_run

    path = run / "audit" / "audit.json"
    if not path.is_file():
        audit_run(run, AuditOptions(attacks=WHITE_BOX_ATTACKS, seed=plan.seed, noise_draws=plan.noise_draws))
    return json.loads(path.read_text())


def run_comparison(out: str | Path, plan: ComparisonPlan, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run (or resume) the comparison in ``out``.

    Returns:
        ``{"non-DP": audit.json, "DP": audit.json, "privacy": privacy.json of the DP run, "plan": plan}``.
    """
    from cxrsynth.data.phantom import generate_phantom
    from cxrsynth.data.prepare import prepare_dataset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "phantom").is_dir():
        generate_phantom(out / "phantom", patients=plan.patients, studies_per_patient=plan.studies_per_patient,
                         size=max(64, plan.size), seed=plan.seed)
    if not (out / "data").is_dir():
        prepare_dataset(out / "phantom", out / "data", format="nih", size=plan.size, seed=plan.seed,
                        test_fraction=0.1, holdout_fraction=0.45, progress=False)
    results: dict[str, dict] = {"plan": dataclasses.asdict(plan)}
    for name, dp in (("non-DP", False), ("DP", True)):
        log(f"{name}: training {plan.steps} steps" + (f" at ε = {plan.epsilon}" if dp else ""))
        run = _train(out, name, plan, dp)
        log(f"{name}: auditing")
        results[name] = _audit(run, plan)
    results["privacy"] = json.loads((out / "DP" / "privacy.json").read_text())
    return results


def results_table(results: dict[str, dict]) -> str:
    """A markdown table of both audits, attack by attack."""
    privacy = results["privacy"]
    lines = [
        f"DP run: ε = {privacy['epsilon']:.3f} (target {privacy['target_epsilon']}), δ = {privacy['delta']:.2g}, "
        f"unit {privacy['unit']} ({privacy['privacy_units']}), σ = {privacy['noise_multiplier']:.3f}, "
        f"q = {privacy['sample_rate']:.3f}, {privacy['steps']} steps, K = {privacy['noise_multiplicity']}; "
        f"audited {results['DP']['n_members']} members / {results['DP']['n_nonmembers']} holdout patients",
        "",
        "| attack | non-DP AUC (95% CI) | non-DP ε_lb | DP AUC (95% CI) | DP ε_lb |",
        "|---|---|---|---|---|",
    ]
    for attack in WHITE_BOX_ATTACKS:
        cells = []
        for name in ("non-DP", "DP"):
            result = results[name]["attacks"].get(attack)
            if result is None:
                cells += ["not run", "-"]
                continue
            low, high = result["auc_ci"] or (float("nan"), float("nan"))
            cells += [f"{result['auc']:.3f} ({low:.3f}–{high:.3f})", f"{result['eps_lower_bound']:.3f}"]
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse options, run the comparison, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (reused when it exists)")
    parser.add_argument("--quick", action="store_true", help="the small plan the slow test runs")
    parser.add_argument("--epsilon", type=float, help="override the DP run's target ε")
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    if args.epsilon is not None:
        plan = dataclasses.replace(plan, epsilon=args.epsilon)
    results = run_comparison(args.out, plan)
    print(results_table(results))


if __name__ == "__main__":
    main()
