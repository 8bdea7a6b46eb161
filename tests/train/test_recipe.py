"""Training recipes: ε or v prediction and min-SNR-γ weighting, saved with the run and honoured by
plain diffusers, our samplers, DP per-record gradients and the white-box audit."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from cxrsynth.config import TrainConfig, load_run_config
from cxrsynth.dp.per_record import per_record_gradients
from cxrsynth.model.prediction import epsilon_from_output, loss_weights, training_target
from cxrsynth.model.presets import PRESETS
from cxrsynth.model.samplers import sample_batch
from cxrsynth.train import train
from cxrsynth.train.objective import per_example_denoising_loss
from tests.factories import make_prepared_folder

SIZE = 8


class OracleUNet(torch.nn.Module):
    """The exact denoiser of data that is always the image ``target``: predicts ε or v without error."""

    def __init__(self, scheduler: DDPMScheduler, target: torch.Tensor, prediction: str) -> None:
        super().__init__()
        self.scheduler, self.target, self.prediction = scheduler, target, prediction
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device and dtype
        self.config = SimpleNamespace(sample_size=SIZE, in_channels=1, out_channels=1)

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        t = torch.as_tensor(timestep).reshape(-1).expand(sample.shape[0]).long()
        alpha_bar = self.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).to(sample.dtype)
        eps = (sample - alpha_bar.sqrt() * self.target) / (1 - alpha_bar).sqrt()
        out = eps if self.prediction == "epsilon" else alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * self.target
        return (out,) if not return_dict else SimpleNamespace(sample=out)


@pytest.fixture(scope="module")
def v_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    data = make_prepared_folder(root / "data", n_patients=6, images_per_patient=2, size=16)
    config = TrainConfig(data=str(data), preset="tiny", max_steps=3, batch_size=4, warmup_steps=1,
                         progress_every=0, prediction_type="v_prediction", snr_gamma=5.0)
    train(config, root / "run")
    return root / "run"


def _target_image() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    return (0.8 * torch.exp(-(yy**2 + xx**2) * 2) - 0.3).view(1, 1, SIZE, SIZE)


def test_the_recipe_round_trips_through_config_yaml_and_the_pipeline(v_run: Path) -> None:
    config, _ = load_run_config(v_run)
    assert (config.prediction_type, config.snr_gamma) == ("v_prediction", 5.0)
    scheduler_config = json.loads((v_run / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["prediction_type"] == "v_prediction"
    assert DDPMPipeline.from_pretrained(v_run / "pipeline").scheduler.config.prediction_type == "v_prediction"


def test_plain_diffusers_samples_a_v_prediction_model_with_the_exported_scheduler(v_run: Path) -> None:
    scheduler = DDPMPipeline.from_pretrained(v_run / "pipeline").scheduler
    target = _target_image()
    pipeline = DDPMPipeline(unet=OracleUNet(scheduler, target, "v_prediction"), scheduler=scheduler)
    images = pipeline(batch_size=2, num_inference_steps=50, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    expected = ((target[0, 0].numpy() + 1) / 2)
    assert abs(images[..., 0] - expected).max() < 0.02, "the v-prediction oracle reproduces its data"


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver", "ddpm"])
def test_our_samplers_follow_the_prediction_type(sampler: str) -> None:
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    target = _target_image()
    images = sample_batch(OracleUNet(scheduler, target, "v_prediction"), scheduler, sampler, 25, [0, 1], seed=3)
    assert (images - target).abs().max() < 0.02


def test_epsilon_from_output_inverts_the_velocity() -> None:
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.rand(4, 1, SIZE, SIZE, generator=generator) * 2 - 1, torch.randn(4, 1, SIZE, SIZE)
    t = torch.tensor([0, 10, 500, 999])
    noisy = scheduler.add_noise(clean, noise, t)
    velocity = training_target(scheduler, clean, noise, t)
    assert torch.allclose(epsilon_from_output(scheduler, velocity, noisy, t), noise, atol=1e-4)
    assert training_target(DDPMScheduler(), clean, noise, t) is noise


def test_min_snr_weights_match_hang_et_al() -> None:
    t = torch.tensor([0, 100, 999])
    for prediction, denominator in (("epsilon", lambda snr: snr), ("v_prediction", lambda snr: snr + 1)):
        scheduler = DDPMScheduler(prediction_type=prediction)
        alpha_bar = scheduler.alphas_cumprod[t].double()
        snr = alpha_bar / (1 - alpha_bar)
        expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / denominator(snr)
        assert torch.allclose(loss_weights(scheduler, t, 5.0).double(), expected, rtol=1e-5)
        assert loss_weights(scheduler, t, None) is None and loss_weights(scheduler, t, 0.0) is None
    assert loss_weights(DDPMScheduler(), torch.tensor([999]), 5.0).item() == pytest.approx(1.0)
    assert loss_weights(DDPMScheduler(), torch.tensor([0]), 5.0).item() < 0.01


def test_dp_per_record_gradients_use_the_same_weighted_v_loss_as_training() -> None:
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    torch.manual_seed(0)
    unet = UNet2DModel(**PRESETS["tiny"].unet_kwargs(SIZE)).double().eval()
    generator = torch.Generator().manual_seed(1)
    clean = (torch.rand(3, 1, 1, SIZE, SIZE, generator=generator, dtype=torch.float64) * 2 - 1)
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    timesteps = torch.tensor([[3], [400], [990]])
    gradients, losses = per_record_gradients(unet, scheduler, clean, noise, timesteps, None, snr_gamma=5.0)
    for record in range(3):
        unet.zero_grad()
        loss = per_example_denoising_loss(unet, scheduler, clean[record], noise[record], timesteps[record],
                                          snr_gamma=5.0).sum()
        loss.backward()
        assert losses[record].item() == pytest.approx(loss.item(), rel=1e-6)  # training loss is float32
        for name, parameter in unet.named_parameters():
            assert torch.allclose(gradients[name][record], parameter.grad, atol=1e-8, rtol=1e-5), name
    plain = per_record_gradients(unet, scheduler, clean, noise, timesteps, None)[1]
    assert not torch.allclose(plain, losses), "the weights change the loss"
    assert math.isfinite(float(losses.sum()))


def test_bad_recipe_options_are_clear_errors(tmp_path: Path) -> None:
    from cxrsynth.errors import CxrsynthError

    with pytest.raises(CxrsynthError, match="--prediction-type"):
        TrainConfig(data="x", max_steps=1, prediction_type="sample").validate()
    with pytest.raises(CxrsynthError, match="--snr-gamma"):
        TrainConfig(data="x", max_steps=1, snr_gamma=-1.0).validate()
