"""Each record — with noise multiplicity, and with the patient unit — contributes at most C to a step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from opacus.optimizers import DPOptimizer

from cxrsynth.config import TrainConfig
from cxrsynth.data.prepared import load_prepared
from cxrsynth.dp.clipping import FusedClipDPOptimizer
from cxrsynth.dp.per_record import per_record_gradients
from cxrsynth.dp.training import attach_ledger, private_optimisation_step, resolve_privacy
from cxrsynth.model.presets import build_unet, get_preset
from cxrsynth.train.components import make_accelerator
from cxrsynth.train.loop import TRAIN_SPLIT, build_parts
from tests.factories import make_prepared_folder

CLIP = 1e-3  # far below the raw gradient norms, so every record is clipped


def _record_gradients(records: int, draws: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    unet = build_unet(get_preset("tiny"), 16)
    clean = (torch.rand(records, 1, 1, 16, 16) * 2 - 1).expand(records, draws, 1, 16, 16).contiguous()
    noise = torch.randn(clean.shape)
    timesteps = torch.randint(0, 1000, (records, draws))
    gradients, _ = per_record_gradients(unet, DDPMScheduler(), clean, noise, timesteps)
    return unet, gradients


def _clipped_sum(unet: torch.nn.Module, *batches: dict[str, torch.Tensor],
                 optimizer_class: type[DPOptimizer] = DPOptimizer) -> list[torch.Tensor]:
    """What Opacus' DP optimizer (σ = 0, mean over an expected batch of 1) leaves in ``p.grad`` after ``batches``."""
    optimizer = optimizer_class(torch.optim.SGD(unet.parameters(), lr=0.0), noise_multiplier=0.0,
                                max_grad_norm=CLIP, expected_batch_size=1)
    for index, gradients in enumerate(batches):
        optimizer.signal_skip_step(do_skip=index < len(batches) - 1)  # accumulate, as BatchMemoryManager does
        for name, parameter in unet.named_parameters():
            parameter.grad_sample = gradients[name].clone()
        optimizer.step()
        if index < len(batches) - 1:
            optimizer.zero_grad(set_to_none=True)
    return [parameter.grad.clone() for _, parameter in unet.named_parameters()]


def _norm(tensors: list[torch.Tensor]) -> float:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)).item()


def test_with_multiplicity_the_k_draws_are_one_record_clipped_once() -> None:
    unet, gradients = _record_gradients(records=3, draws=4)
    names = [name for name, _ in unet.named_parameters()]
    assert all(gradients[name].shape[0] == 3 for name in names), "one gradient per record, not per draw"
    raw_norms = [_norm([gradients[name][r] for name in names]) for r in range(3)]
    assert min(raw_norms) > 10 * CLIP
    for record in range(3):
        alone = _clipped_sum(unet, {name: gradients[name][record:record + 1] for name in names})
        assert _norm(alone) <= CLIP * (1 + 1e-5)
    together = _clipped_sum(unet, gradients)
    expected = [sum(gradients[name][r] * CLIP / (raw_norms[r] + 1e-6) for r in range(3)) for name in names]
    assert max((a - b).abs().max().item() for a, b in zip(together, expected)) < 1e-9
    assert _norm(together) <= 3 * CLIP * (1 + 1e-5)


def test_a_patient_step_clips_one_gradient_per_sampled_patient(tmp_path: Path) -> None:
    data = load_prepared(make_prepared_folder(tmp_path / "prepared", n_patients=12, images_per_patient=5,
                                              size=16, split_cycle=("member", "member", "holdout")))
    config = TrainConfig(data=str(data.root), preset="tiny", max_steps=5, dp=True, epsilon=8.0,
                         noise_multiplicity=3, logical_batch_size=4, physical_batch_size=2, max_grad_norm=CLIP)
    accelerator = make_accelerator(config, str(tmp_path / "run"))
    settings = resolve_privacy(config, data, TRAIN_SPLIT, 1)
    assert settings.unit == "patient" and len(settings.records) == 8
    parts = build_parts(config, data, accelerator, None, settings)
    attach_ledger(parts, config, settings, planned_steps=5, print_fn=lambda *_: None)
    patient_of_row = dict(zip(data.index["row"], data.index["patient_id"]))
    clipped_counts, sampled = [], []
    original = parts.optimizer.clip_and_accumulate

    def spy() -> None:
        clipped_counts.append(len(parts.optimizer.grad_samples[0]))
        original()

    parts.optimizer.clip_and_accumulate = spy
    for step in range(5):
        rows = parts.stream.image_rows(step)
        sampled.append(len(rows))
        assert len({patient_of_row[int(row)] for row in rows}) == len(rows)
        private_optimisation_step(parts)
    assert sum(clipped_counts) == sum(sampled), "one clipped gradient per sampled patient (not per draw)"
    assert max(clipped_counts) <= 2
    assert parts.privacy.steps == 5 and parts.step == 5


def test_the_fused_clip_sums_what_opacus_sums() -> None:
    """Float64: the fused clip (one R×P matrix) equals Opacus' per-parameter clip, over accumulated batches."""
    unet, gradients = _record_gradients(records=3, draws=2)
    unet = unet.double()
    gradients = {name: value.double() for name, value in gradients.items()}
    first = {name: value[:2] for name, value in gradients.items()}
    empty = {name: value[:0] for name, value in gradients.items()}
    last = {name: value[2:] for name, value in gradients.items()}
    expected = _clipped_sum(unet, first, empty, last)
    fused = _clipped_sum(unet, first, empty, last, optimizer_class=FusedClipDPOptimizer)
    assert max((a - b).abs().max().item() for a, b in zip(fused, expected)) < 1e-15
    assert _norm(fused) > CLIP  # the records were clipped, not zeroed
