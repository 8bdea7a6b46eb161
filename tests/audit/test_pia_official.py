"""PIA and PIAN pinned to the authors' implementation (Kong et al., ICLR 2024, github kong13661/PIA).

``official_distances`` transcribes ``components.PIA`` / ``components.PIAN`` of that repository
(``ddim_reverse``: ε₀ = eps_getter(x₀, t=0), PIAN rescaling ε₀ / mean|ε₀| · √(2/π);
``ddim_denoise``: ε_back = eps_getter(√ᾱ_t x₀ + √(1−ᾱ_t) ε₀, t) for t = interval, 2·interval, …,
interval·attack_num; ``distance``: Σ_pixels |ε₀ − ε_back|⁴), with its schedule
(``noise_level = cumprod(1 − linspace(1e-4, 0.02, 1000))`` in float32) and input normalisation
(x/255·2 − 1). It calls the UNet directly, not through any cxrsynth code. Our scores are the mean over
pixels, i.e. the official sum divided by the pixel count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from cxrsynth.audit.metrics import membership_scores, roc_auc
from cxrsynth.audit.registry import TIMESTEP_CANDIDATES, AttackContext, AttackSettings, get_attack
from cxrsynth.audit.whitebox import WhiteBoxModel
from tests.audit.test_attacks import tiny_unet

SIZE = 16
RTOL = 1e-4
"""float32 precision of a 4th power of a difference: ε₀ and ε_back agree to ~1e-7 each, their difference
is ~10x smaller than either, and the power multiplies relative error by 4 (measured: ≤ 2.6e-5)."""
INTERVAL, ATTACK_NUM = 10, 30
"""The official defaults: the sweep t = 10, 20, …, 300."""


@torch.no_grad()
def official_distances(unet: torch.nn.Module, images: np.ndarray, normalised: bool) -> dict[int, np.ndarray]:
    """The official PIA (or PIAN) distance of each image at every step of the official sweep."""
    betas = torch.from_numpy(np.linspace(0.0001, 0.02, 1000))
    noise_level = torch.cumprod(1 - betas, dim=0).float()
    x0 = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None] * 2 - 1

    def eps_getter(xt: torch.Tensor, t: int) -> torch.Tensor:
        return unet(xt, torch.ones([xt.shape[0]]).long() * t, return_dict=False)[0]

    eps = eps_getter(x0, 0)
    if normalised:
        eps = eps / eps.abs().mean(list(range(1, eps.ndim)), keepdim=True) * (2 / torch.pi) ** 0.5
    distances = {}
    for step in range(INTERVAL, INTERVAL * ATTACK_NUM + INTERVAL, INTERVAL):
        a_t, b_t = noise_level[step] ** 0.5, (1 - noise_level[step]) ** 0.5
        eps_back = eps_getter(a_t * x0 + b_t * eps, step)
        distances[step] = ((eps - eps_back).abs() ** 4).flatten(1).sum(dim=-1).double().numpy()
    return distances


def context_of(images: np.ndarray, unet: torch.nn.Module, timestep: int | None) -> AttackContext:
    settings = AttackSettings(timestep=timestep, batch_size=5, seed=3)
    rows = np.arange(0, len(images), 2)
    return AttackContext(images=images, calibration_rows=rows, calibration_is_member=np.arange(len(rows)) % 3 == 0,
                         settings=settings, model=WhiteBoxModel(unet, DDPMScheduler(num_train_timesteps=1000), seed=3))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, size=(14, SIZE, SIZE), dtype=np.uint8)


def test_our_schedule_is_the_official_one() -> None:
    ours = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    official = torch.cumprod(1 - torch.from_numpy(np.linspace(0.0001, 0.02, 1000)), dim=0)
    torch.testing.assert_close(ours, official, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["pia", "pian"])
def test_scores_at_each_candidate_equal_the_official_distance(name: str, images: np.ndarray) -> None:
    unet = tiny_unet(size=SIZE)
    official = official_distances(unet, images, normalised=name == "pian")
    assert set(TIMESTEP_CANDIDATES) <= set(official)  # our candidates lie on the official sweep
    for t in TIMESTEP_CANDIDATES:
        ours = get_attack(name).score(context_of(images, unet, timestep=t))
        np.testing.assert_allclose(ours * SIZE * SIZE, official[t], rtol=RTOL, atol=0)


@pytest.mark.parametrize("name", ["pia", "pian"])
def test_selected_t_is_the_official_sweeps_best_on_the_calibration_half(name: str, images: np.ndarray) -> None:
    unet = tiny_unet(size=SIZE, seed=1)
    official = official_distances(unet, images, normalised=name == "pian")
    context = context_of(images, unet, timestep=None)
    ours = get_attack(name).score(context)
    rows, labels = context.calibration_rows, context.calibration_is_member
    gaps = [abs(roc_auc(labels, membership_scores(official[t][rows], "lower")) - 0.5) for t in TIMESTEP_CANDIDATES]
    expected = TIMESTEP_CANDIDATES[int(np.argmax(gaps))]
    assert context.choices[name]["timestep"] == expected
    np.testing.assert_allclose(ours * SIZE * SIZE, official[expected], rtol=RTOL, atol=0)
    assert math.isclose(context.model.image_forwards / len(images), (len(TIMESTEP_CANDIDATES) + 3) / 2)
