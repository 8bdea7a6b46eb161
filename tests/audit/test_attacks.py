"""Each registered attack on a real (tiny, random) diffusers UNet: finite scores, the NFE it claims."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from cxrsynth.audit.memorization import pixel_vectors
from cxrsynth.audit.registry import (
    NEEDS_MODEL,
    AttackContext,
    AttackSettings,
    attack_names,
    get_attack,
    register_attack,
    registered_attacks,
)
from cxrsynth.audit.whitebox import WhiteBoxModel
from cxrsynth.errors import CxrsynthError

SIZE = 16
WHITE_BOX = ["loss", "recon", "secmi", "pia", "pian"]


def tiny_unet(seed: int = 0, num_class_embeds: int | None = None, size: int = SIZE,
              widths: tuple[int, int] = (32, 64)) -> UNet2DModel:
    """A random 1-channel UNet2DModel with attention at its lowest level."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, block_out_channels=widths, layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=num_class_embeds,
    ).eval()


class ForwardCounter:
    """Counts images passed through a module's forward, independently of the audit's own counter."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.images = 0
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.images += int(args[0].shape[0])


def make_context(images: np.ndarray, unet: UNet2DModel | None = None, batch_size: int = 5, **extra) -> AttackContext:
    settings = AttackSettings(timestep=200, noise_draws=3, batch_size=batch_size, seed=7)
    model = WhiteBoxModel(unet, DDPMScheduler(num_train_timesteps=1000), seed=7) if unet is not None else None
    rows = np.arange(0, len(images), 2)
    return AttackContext(images=images, calibration_rows=rows, calibration_is_member=np.arange(len(rows)) % 2 == 0,
                         settings=settings, model=model, **extra)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(12, SIZE, SIZE), dtype=np.uint8)


def test_registry_lists_the_built_in_attacks_and_refuses_unknown_or_duplicate_names() -> None:
    assert attack_names()[:8] == ["loss", "recon", "secmi", "pia", "pian", "nn", "nn_domain", "blind"]
    assert {spec.access for spec in registered_attacks()} == {"white-box", "black-box", "none"}
    with pytest.raises(CxrsynthError, match="unknown attack"):
        get_attack("nope")
    with pytest.raises(CxrsynthError, match="already registered"):
        register_attack("loss", access="white-box", member_if="lower", description="again")(lambda context: None)


@pytest.mark.parametrize("name", WHITE_BOX)
def test_white_box_attack_scores_are_finite_and_cost_the_nfe_it_claims(name: str, images: np.ndarray) -> None:
    spec = get_attack(name)
    unet = tiny_unet()
    counter = ForwardCounter(unet)
    context = make_context(images, unet)
    scores = spec.score(context)
    assert scores.shape == (len(images),) and np.all(np.isfinite(scores))
    claimed = spec.nfe_per_image(context.settings)
    assert counter.images / len(images) == claimed
    assert context.model.image_forwards == counter.images
    assert claimed == {"loss": 3, "recon": 3, "secmi": 11, "pia": 2, "pian": 2}[name]
    # 12 images in batches of 5: each batch is one forward per evaluation
    assert counter.calls == claimed * 3
    assert NEEDS_MODEL in spec.needs and spec.access == "white-box"


@pytest.mark.parametrize("name", ["loss", "secmi", "pian"])
def test_white_box_scores_do_not_depend_on_batching(name: str, images: np.ndarray) -> None:
    unet = tiny_unet()
    small = get_attack(name).score(make_context(images, unet, batch_size=5))
    whole = get_attack(name).score(make_context(images, unet, batch_size=12))
    np.testing.assert_allclose(small, whole, rtol=1e-4, atol=1e-6)


class ConstantDenoiser(torch.nn.Module):
    """Predicts the same noise whatever x_t and t: DDIM moves with it are exactly invertible."""

    def __init__(self) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.full((1, 1, SIZE, SIZE), 0.3))
        self.config = {"num_train_timesteps": 1000}

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        return (self.value.expand_as(sample).clone(),)


def test_secmi_t_error_vanishes_for_a_self_consistent_denoiser(images: np.ndarray) -> None:
    scores = get_attack("secmi").score(make_context(images, ConstantDenoiser()))
    assert np.all(scores < 1e-8)
    random_model = get_attack("secmi").score(make_context(images, tiny_unet()))
    assert np.all(random_model > 1e-6)


def test_loss_of_a_zero_predictor_is_the_noise_power(images: np.ndarray) -> None:
    zero = ConstantDenoiser()
    with torch.no_grad():
        zero.value.zero_()
    scores = get_attack("loss").score(make_context(images, zero))
    # mean of ε² over 256 pixels × 3 draws: close to 1
    np.testing.assert_allclose(scores, 1.0, atol=0.2)


def test_conditional_unet_is_given_each_rows_label(images: np.ndarray) -> None:
    unet = tiny_unet(num_class_embeds=3)
    seen: list[torch.Tensor] = []
    unet.register_forward_hook(lambda module, args, kwargs, output: seen.append(kwargs["class_labels"]), with_kwargs=True)
    context = make_context(images, unet)
    context.model.class_labels = torch.arange(len(images)) % 3
    get_attack("pia").score(context)
    assert torch.equal(seen[0], torch.tensor([0, 1, 2, 0, 1]))


def test_nearest_neighbour_attacks_find_released_copies(images: np.ndarray) -> None:
    released = np.concatenate([images[[0, 3]], np.random.default_rng(9).integers(0, 256, (5, SIZE, SIZE), dtype=np.uint8)])
    context = make_context(images, synthetic=released, features=pixel_vectors)
    for name in ("nn", "nn_domain"):
        scores = get_attack(name).score(context)
        assert scores[0] == pytest.approx(0, abs=1e-3) and scores[3] == pytest.approx(0, abs=1e-3)
        assert np.all(np.delete(scores, [0, 3]) > 0.5)
        assert get_attack(name).nfe_per_image(context.settings) == 0


def _leaky_split(count: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    base = rng.normal(110, 25, size=(count, SIZE, SIZE))
    is_member = np.arange(count) % 2 == 0
    base[is_member] += shift  # members brighter: a split that leaks by itself
    return np.clip(base, 0, 255).astype(np.uint8), is_member


def test_blind_attack_catches_a_leaky_split_and_is_fitted_on_calibration_only() -> None:
    from cxrsynth.audit import metrics

    images, is_member = _leaky_split(160, shift=12.0)
    calibration = np.arange(160) < 80
    rows = np.flatnonzero(calibration)
    context = AttackContext(images=images, calibration_rows=rows, calibration_is_member=is_member[rows],
                            settings=AttackSettings(seed=0))
    scores = get_attack("blind").score(context)
    assert scores.min() >= 0 and scores.max() <= 1
    evaluation = ~calibration
    assert metrics.roc_auc(is_member[evaluation], scores[evaluation]) > 0.9
    # Flipping the membership of evaluation rows changes nothing: they were never used for fitting.
    context.calibration_is_member = is_member[rows]
    again = get_attack("blind").score(context)
    np.testing.assert_allclose(scores, again)


def official_secmi_t_error(unet: UNet2DModel, scheduler: DDPMScheduler, clean: torch.Tensor,
                           interval: int = 10, t_sec: int = 100) -> np.ndarray:
    """SecMI's ``ddim_loss`` as in the authors' ``mia_evals/secmia.py``, re-written here independently."""
    alphas = scheduler.alphas_cumprod.double()

    def single_step(x: torch.Tensor, t_c: int, t_target: int) -> torch.Tensor:
        with torch.no_grad():
            epsilon = unet(x, torch.full((x.shape[0],), t_c), return_dict=False)[0]
        a_c, a_t = alphas[t_c].float(), alphas[t_target].float()
        pred_x0 = (x - (1 - a_c).sqrt() * epsilon) / a_c.sqrt()
        return a_t.sqrt() * pred_x0 + (1 - a_t).sqrt() * epsilon

    target_steps = list(range(0, t_sec, interval))[1:]
    x, t_c = clean, 0
    for t_target in target_steps:
        x, t_c = single_step(x, t_c, t_target), t_target
    recon = single_step(x, target_steps[-1], target_steps[-1] + interval)
    recon = single_step(recon, target_steps[-1] + interval, target_steps[-1])
    return ((recon - x) ** 2).flatten(1).mean(dim=1).double().numpy()


def test_secmi_follows_the_published_order(images: np.ndarray) -> None:
    unet = tiny_unet(seed=3)
    counter = ForwardCounter(unet)
    context = make_context(images, unet)
    ours = get_attack("secmi").score(context)
    assert counter.images == 11 * len(images)
    clean = torch.as_tensor(images, dtype=torch.float32)[:, None] / 127.5 - 1.0
    np.testing.assert_allclose(ours, official_secmi_t_error(unet, context.model.scheduler, clean), rtol=1e-4)
