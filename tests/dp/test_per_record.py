"""Per-record gradients equal micro-batch gradients, in float64, for every UNet preset (all have attention).

This is the proof the DP guarantee rests on: if a record's gradient were wrong, clipping would
bound the wrong thing (Opacus' hook mode got the convolutions after diffusers' attention wrong).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from cxrsynth.dp import per_record
from cxrsynth.dp.per_record import per_record_gradients, use_vmappable_attention
from cxrsynth.model.presets import PRESETS

TOLERANCE = 1e-9
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]
LARGE_PRESETS = {"base", "nih64", "nih128", "nih256"}


def _preset_and_draws() -> list:
    """Every preset with one draw per record; multiplicity (3 draws) on the small ones (it is not architectural)."""
    cases = []
    for name in PRESETS:
        large = name in LARGE_PRESETS
        for draws in (1,) if large else (1, 3):
            cases.append(pytest.param(name, draws, marks=[pytest.mark.slow] if large else []))
    return cases


def _unet(preset_name: str, device: str, num_class_embeds: int | None = None) -> UNet2DModel:
    """The preset's architecture at the smallest input it halves down to (the layers do not depend on it)."""
    preset = PRESETS[preset_name]
    torch.manual_seed(0)
    kwargs = preset.unet_kwargs(max(8, preset.downsampling_factor), num_class_embeds)
    unet = UNet2DModel(**kwargs).to(device=device, dtype=torch.float64)
    # Dropout (nih presets) draws per call; compare the deterministic function.
    return unet.eval()


def _inputs(records: int, draws: int, size: int, device: str, classes: int | None = None):
    generator = torch.Generator().manual_seed(1)
    clean = torch.rand(records, 1, 1, size, size, generator=generator, dtype=torch.float64) * 2 - 1
    clean = clean.expand(records, draws, 1, size, size).contiguous()
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    timesteps = torch.randint(0, 1000, (records, draws), generator=generator)
    labels = None if classes is None else torch.randint(0, classes, (records, draws), generator=generator)
    return (clean.to(device), noise.to(device), timesteps.to(device), None if labels is None else labels.to(device))


def _micro_batch_gradients(unet, scheduler, clean, noise, timesteps, labels) -> list[dict[str, torch.Tensor]]:
    """Each record alone, through plain autograd: the gradient of its K-draw mean loss."""
    params = dict(unet.named_parameters())
    result = []
    for record in range(clean.shape[0]):
        noisy = scheduler.add_noise(clean[record], noise[record], timesteps[record])
        record_labels = None if labels is None else labels[record]
        prediction = unet(noisy, timesteps[record], class_labels=record_labels).sample
        loss = F.mse_loss(prediction, noise[record])
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        result.append({name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), grads)})
    return result


def _max_difference(unet, clean, noise, timesteps, labels=None, **options) -> float:
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    expected = _micro_batch_gradients(unet, scheduler, clean, noise, timesteps, labels)
    gradients, losses = per_record_gradients(unet, scheduler, clean, noise, timesteps, labels, **options)
    assert set(gradients) == {name for name, _ in unet.named_parameters()}
    assert losses.shape == (clean.shape[0],)
    worst = 0.0
    for record, reference in enumerate(expected):
        for name, value in reference.items():
            assert gradients[name].shape == (clean.shape[0], *value.shape)
            worst = max(worst, (gradients[name][record] - value).abs().max().item())
    return worst


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("preset_name", "draws"), _preset_and_draws())
def test_per_record_gradients_equal_micro_batch_gradients(preset_name: str, draws: int, device: str) -> None:
    unet = _unet(preset_name, device)
    assert use_vmappable_attention(unet) > 0, "every preset has attention: the case that broke Opacus' hooks"
    size = unet.config.sample_size
    assert _max_difference(unet, *_inputs(2, draws, size, device)) <= TOLERANCE


@pytest.mark.parametrize("device", DEVICES)
def test_per_record_gradients_of_a_conditional_unet_with_default_attention(device: str) -> None:
    """Class embedding included; and exact with diffusers' default (SDPA) attention too, only slower."""
    unet = _unet("tiny", device, num_class_embeds=5)
    size = unet.config.sample_size
    assert _max_difference(unet, *_inputs(3, 2, size, device, classes=5)) <= TOLERANCE


def test_mismatched_shapes_are_refused() -> None:
    unet = _unet("tiny", "cpu")
    clean, noise, timesteps, _ = _inputs(2, 2, unet.config.sample_size, "cpu")
    with pytest.raises(ValueError, match="disagree"):
        per_record_gradients(unet, DDPMScheduler(), clean, noise, timesteps[:, :1])


@pytest.mark.parametrize("device", DEVICES)
def test_padded_per_record_gradients_are_exact(device: str) -> None:
    """Zero-weight padding rows (the fixed shape a compiled function needs) change no record's gradient."""
    unet = _unet("tiny", device, num_class_embeds=5)
    use_vmappable_attention(unet)
    inputs = _inputs(3, 2, unet.config.sample_size, device, classes=5)
    assert _max_difference(unet, *inputs, pad_to=5) <= TOLERANCE
    with pytest.raises(ValueError, match="pad_to 2 is below the 3 records"):
        per_record_gradients(unet, DDPMScheduler(), *inputs[:3], inputs[3], pad_to=2)


def test_compiled_per_record_gradients_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile traces vmap(grad(loss)) as one graph and gives the same gradients (float64).

    ``aot_eager`` runs the traced forward and backward graphs without code generation, which on
    this CPU takes minutes per shape; the CUDA test below compiles with inductor.
    """
    monkeypatch.setattr(per_record, "COMPILE_BACKEND", "aot_eager")
    unet = _unet("tiny", "cpu")
    use_vmappable_attention(unet)
    inputs = _inputs(3, 2, unet.config.sample_size, "cpu")
    assert _max_difference(unet, *inputs, compile=True, pad_to=4) <= TOLERANCE
    assert _max_difference(unet, *_inputs(2, 2, unet.config.sample_size, "cpu"), compile=True, pad_to=4) <= TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_compiled_per_record_gradients_are_exact_on_cuda() -> None:
    """Inductor with CUDA graphs (reduce-overhead): still the micro-batch gradients, in float64."""
    unet = _unet("tiny", "cuda")
    use_vmappable_attention(unet)
    for records in (3, 2):
        inputs = _inputs(records, 2, unet.config.sample_size, "cuda")
        assert _max_difference(unet, *inputs, compile=True, pad_to=4) <= TOLERANCE
