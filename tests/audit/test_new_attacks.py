"""SimA, GSA and the automatic timestep selection, on real tiny diffusers UNets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from cxrsynth.audit.attacks.gsa import NOISE_STREAM as GSA_STREAM
from cxrsynth.audit.attacks.gsa import gradient_features, gsa_timesteps
from cxrsynth.audit.attacks.sima import SIMA_CANDIDATES
from cxrsynth.audit.metrics import membership_scores, roc_auc
from cxrsynth.audit.registry import TIMESTEP_CANDIDATES, AttackContext, AttackSettings, get_attack
from cxrsynth.audit.timestep_selection import scores_at_selected_timestep, select_timestep
from cxrsynth.audit.whitebox import WhiteBoxModel
from tests.audit.test_attacks import ForwardCounter, tiny_unet
from tests.audit.test_overfit import overfit_run  # noqa: F401  (the module-scoped overfit run fixture)

SIZE = 16


def context_of(images: np.ndarray, unet: torch.nn.Module, timestep: int | None = None, labels: np.ndarray | None = None,
               class_labels: torch.Tensor | None = None, batch_size: int = 8, noise_draws: int = 2) -> AttackContext:
    """Even rows calibrate (membership ``labels`` of those rows, alternating by default), odd rows evaluate."""
    settings = AttackSettings(timestep=timestep, noise_draws=noise_draws, batch_size=batch_size, seed=7)
    model = WhiteBoxModel(unet, DDPMScheduler(num_train_timesteps=1000), class_labels=class_labels, seed=7)
    rows = np.arange(0, len(images), 2)
    member = np.arange(len(rows)) % 2 == 0 if labels is None else labels[rows]
    return AttackContext(images=images, calibration_rows=rows, calibration_is_member=member, settings=settings,
                         model=model)


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, SIZE, SIZE), dtype=np.uint8)


def null_quantile(labels: np.ndarray, membership: np.ndarray, quantile: float = 0.995, permutations: int = 4000) -> float:
    """Quantile of |AUC − 0.5| under random relabelling of these scores (the no-signal distribution)."""
    from scipy.stats import rankdata

    ranks = rankdata(membership)
    positives = int(np.sum(labels))
    negatives = len(labels) - positives
    rng = np.random.default_rng(1)
    chosen = np.stack([rng.permutation(len(labels))[:positives] for _ in range(permutations)])
    auc = (ranks[chosen].sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
    return float(np.quantile(np.abs(auc - 0.5), quantile))


# --- timestep selection --------------------------------------------------------------------


def separating_score(calls: list) -> callable:
    """Scores that separate the first half of the calibration labels only at t = 50; random elsewhere."""
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(400,))

    def score_at(t: int, rows: np.ndarray) -> np.ndarray:
        calls.append((t, tuple(int(r) for r in rows)))
        base = noise[rows] + 0.01 * t
        # rows ≡ 0 mod 4 are the calibration members (alternating labels on even rows)
        return base + (5.0 * (rows % 4 == 0) if t == 50 else 0.0)

    return score_at


def test_selection_chooses_the_separating_t_and_scores_evaluation_rows_only_at_it() -> None:
    images = random_images(40)
    context = context_of(images, tiny_unet(size=SIZE))
    calls: list = []
    scores = scores_at_selected_timestep(context, "probe", "higher", separating_score(calls), TIMESTEP_CANDIDATES)
    choice = context.choices["probe"]
    assert choice["timestep"] == 50
    assert choice["candidates"] == list(TIMESTEP_CANDIDATES)
    assert choice["calibration_auc"]["50"] == 1.0
    assert all(abs(auc - 0.5) < 0.45 for t, auc in choice["calibration_auc"].items() if t != "50")
    calibration = set(int(r) for r in context.calibration_rows)
    evaluation_calls = [t for t, rows in calls if not set(rows) <= calibration]
    assert evaluation_calls == [50]  # the evaluation half is scored once, at the chosen t
    assert [t for t, rows in calls if set(rows) <= calibration] == list(TIMESTEP_CANDIDATES)
    assert scores.shape == (40,) and np.all(np.isfinite(scores))


def test_selection_never_looks_at_evaluation_membership() -> None:
    images = random_images(40)
    # two contexts differing only in the (hidden) evaluation labels: the attack is given calibration labels only
    first = context_of(images, tiny_unet(size=SIZE), labels=np.arange(40) % 4 == 0)
    second = context_of(images, tiny_unet(size=SIZE), labels=np.where(np.arange(40) % 2 == 0, np.arange(40) % 4 == 0,
                                                                      np.arange(40) % 4 != 1))
    np.testing.assert_array_equal(first.calibration_is_member, second.calibration_is_member)
    a = scores_at_selected_timestep(first, "probe", "higher", separating_score([]), TIMESTEP_CANDIDATES)
    b = scores_at_selected_timestep(second, "probe", "higher", separating_score([]), TIMESTEP_CANDIDATES)
    assert first.choices == second.choices
    np.testing.assert_array_equal(a, b)
    # relabelling the *calibration* half does change what selection sees: it reads those labels
    relabelled = context_of(images, tiny_unet(size=SIZE))
    relabelled.calibration_is_member = np.arange(len(relabelled.calibration_rows)) % 4 < 2
    scores_at_selected_timestep(relabelled, "probe", "higher", separating_score([]), TIMESTEP_CANDIDATES)
    assert relabelled.choices["probe"]["calibration_auc"]["50"] < 0.8


def test_selection_takes_either_direction_and_breaks_ties_by_candidate_order() -> None:
    images = random_images(40)
    context = context_of(images, tiny_unet(size=SIZE))
    inverted = lambda t, rows: -separating_score([])(t, rows)  # noqa: E731
    chosen, table, _ = select_timestep(context, TIMESTEP_CANDIDATES, inverted, "higher")
    assert chosen == 50 and table[50] == 0.0
    constant = lambda t, rows: np.zeros(len(rows))  # noqa: E731
    chosen, table, _ = select_timestep(context, (20, 10, 300), constant, "lower")
    assert chosen == 20 and set(table.values()) == {0.5}


def test_fixed_timestep_skips_the_selection() -> None:
    images = random_images(12)
    context = context_of(images, tiny_unet(size=SIZE), timestep=77)
    calls: list = []
    scores_at_selected_timestep(context, "probe", "lower", separating_score(calls), TIMESTEP_CANDIDATES)
    assert calls == [(77, tuple(range(12)))]
    assert context.choices["probe"] == {"timestep": 77, "selected_by": "--timestep"}


@pytest.mark.parametrize("name", ["loss", "pia", "pian", "sima"])
def test_selected_scores_equal_the_fixed_t_scores_at_the_chosen_t(name: str) -> None:
    """Common random numbers: an image's score at the chosen t is the one a fixed --timestep gives."""
    images = random_images(16)
    unet = tiny_unet(size=SIZE)
    counter = ForwardCounter(unet)
    selected = context_of(images, unet)
    scores = get_attack(name).score(selected)
    chosen = selected.choices[name]["timestep"]
    candidates = SIMA_CANDIDATES if name == "sima" else TIMESTEP_CANDIDATES
    assert selected.choices[name]["candidates"] == list(candidates) and chosen in candidates
    claimed = get_attack(name).nfe_per_image(selected.settings)
    assert selected.model.image_forwards / len(images) == claimed == counter.images / len(images)
    assert claimed == {"loss": 2 * 8 / 2, "pia": 5, "pian": 5, "sima": 3.5}[name]
    fixed = context_of(images, unet, timestep=chosen)
    np.testing.assert_allclose(scores, get_attack(name).score(fixed), rtol=1e-5, atol=1e-7)
    assert fixed.model.image_forwards / len(images) == get_attack(name).nfe_per_image(fixed.settings)


# --- SimA ----------------------------------------------------------------------------------


def test_sima_is_the_norm_of_the_clean_image_prediction_and_costs_one_forward() -> None:
    images = random_images(10)
    unet = tiny_unet(size=SIZE)
    counter = ForwardCounter(unet)
    context = context_of(images, unet, timestep=5, batch_size=4)
    scores = get_attack("sima").score(context)
    assert counter.images == 10 and counter.calls == 3 and get_attack("sima").nfe_per_image(context.settings) == 1
    clean = torch.from_numpy(images[3:4].astype(np.float32)) / 127.5 - 1.0
    with torch.no_grad():
        output = unet(clean[:, None], torch.tensor([5]), return_dict=False)[0]
    assert scores[3] == pytest.approx(float(output.pow(2).mean().sqrt()), rel=1e-5)


def test_sima_auc_on_an_untrained_model_is_within_the_no_signal_range() -> None:
    images = random_images(64, seed=5)
    labels = np.random.default_rng(9).permutation(np.arange(64) % 2 == 0)
    context = context_of(images, tiny_unet(size=SIZE, seed=2), labels=labels, batch_size=32)
    scores = get_attack("sima").score(context)
    evaluation = np.arange(1, 64, 2)
    membership = membership_scores(scores[evaluation], "lower")
    assert np.all(np.isfinite(scores))
    assert abs(roc_auc(labels[evaluation], membership) - 0.5) <= null_quantile(labels[evaluation], membership)


# --- GSA -----------------------------------------------------------------------------------


def test_gsa_features_equal_hand_computed_gradient_norms() -> None:
    images = random_images(3)
    unet = tiny_unet(size=SIZE, num_class_embeds=3)
    class_labels = torch.tensor([2, 0, 1])
    context = context_of(images, unet, class_labels=class_labels)
    gsa1, gsa2, steps = gradient_features(context)
    assert steps == gsa_timesteps(1000) == (100, 300, 500, 700, 900)
    names = context.model.gradient_layer_names()
    assert gsa1.shape == (3, len(names)) and gsa2.shape == (3, 5 * len(names))
    assert context.model.image_forwards == context.model.image_backwards == 3 * 5
    row, name = 1, "down_blocks.1.attentions.0.to_q.weight"
    column = names.index(name)
    parameter = dict(unet.named_parameters())[name]
    clean = torch.from_numpy(images[row:row + 1].astype(np.float32))[:, None] / 127.5 - 1.0
    alphas = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    losses = []
    for k, t in enumerate(steps):
        generator_noise = context.model.noise(np.array([row]), (1, SIZE, SIZE), GSA_STREAM, k)
        noisy = alphas[t].sqrt() * clean + (1 - alphas[t]).sqrt() * generator_noise
        output = unet(noisy, torch.tensor([t]), class_labels=class_labels[row:row + 1], return_dict=False)[0]
        losses.append(((output - generator_noise) ** 2).mean())
    for k, loss in enumerate(losses):
        (gradient,) = torch.autograd.grad(loss, parameter, retain_graph=True)
        assert np.exp(gsa2[row, k * len(names) + column]) == pytest.approx(float(gradient.norm()), rel=1e-4)
    (gradient,) = torch.autograd.grad(torch.stack(losses).mean(), parameter)
    assert np.exp(gsa1[row, column]) == pytest.approx(float(gradient.norm()), rel=1e-4)
    unet.requires_grad_(False)  # the audit loads a frozen UNet: every tensor still gets its gradient
    frozen_first, frozen_second, _ = gradient_features(context_of(images, unet, class_labels=class_labels))
    np.testing.assert_allclose(frozen_first, gsa1, rtol=1e-6)
    np.testing.assert_allclose(frozen_second, gsa2, rtol=1e-6)


def test_gsa_scores_are_honest_on_an_untrained_model_and_cost_what_they_claim() -> None:
    images = random_images(48, seed=4)
    labels = np.random.default_rng(11).permutation(np.arange(48) % 2 == 0)
    context = context_of(images, tiny_unet(size=SIZE, seed=3), labels=labels, batch_size=16)
    scores = get_attack("gsa").score(context)
    assert scores.shape == (48,) and np.all((scores >= 0) & (scores <= 1))
    assert context.model.image_forwards / 48 == get_attack("gsa").nfe_per_image(context.settings) == 5
    choice = context.choices["gsa"]
    assert choice["variant"] in ("gsa1", "gsa2") and choice["out_of_fold"] and choice["timesteps"] == [100, 300, 500, 700, 900]
    # 144 features for 24 calibration images: in-sample scores would separate them perfectly;
    # out-of-fold ones (what the runner's direction and thresholds see) must look like chance
    for rows in (context.calibration_rows, np.arange(1, 48, 2)):
        membership = scores[rows]
        assert abs(roc_auc(labels[rows], membership) - 0.5) <= null_quantile(labels[rows], membership)


# --- a deliberately overfit run ------------------------------------------------------------


@pytest.mark.slow
def test_sima_and_gsa_catch_an_overfit_model(overfit_run: Path) -> None:  # noqa: F811
    from cxrsynth.audit.runner import AuditOptions, audit_run

    report = audit_run(overfit_run, AuditOptions(attacks=("sima", "gsa"), device="cpu"))
    for name, result in report["attacks"].items():
        print(f"{name}: auc {result['auc']:.3f} ci {result['auc_ci']} direction {result['direction']} "
              f"nfe {result['nfe_per_image']} seconds {result['seconds']:.1f} selected {result['selected']}")
    for name in ("sima", "gsa"):
        assert report["attacks"][name]["auc"] >= 0.9
    assert report["attacks"]["sima"]["selected"]["timestep"] in SIMA_CANDIDATES


@pytest.mark.parametrize("name", ["gsa", "loss", "sima"])
def test_attacks_that_fit_on_calibration_refuse_a_one_class_calibration_half(name: str) -> None:
    from cxrsynth.errors import CxrsynthError

    context = context_of(random_images(6), tiny_unet(size=SIZE))
    context.calibration_is_member = np.ones(len(context.calibration_rows), dtype=bool)
    with pytest.raises(CxrsynthError, match="members and non-members"):
        get_attack(name).score(context)
    assert context.model.image_forwards == 0
