"""UNet presets: documented parameter counts are the real ones; sizes a preset cannot take are refused."""

from __future__ import annotations

import pytest

import cxrsynth.model.presets as presets_module

from cxrsynth.errors import CxrsynthError
from cxrsynth.model.presets import PRESETS, build_unet, check_preset_resolution, count_parameters, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_documented_parameter_count_is_the_real_one(name: str) -> None:
    preset = PRESETS[name]
    assert count_parameters(preset) == preset.parameters
    assert f"{preset.parameters / 1e6:.1f}M" in presets_module.__doc__  # the table users read


def test_tiny_preset_builds_a_one_channel_unet_for_the_data_size() -> None:
    unet = build_unet(get_preset("tiny"), 32, num_class_embeds=5)
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.sample_size) == (1, 1, 32)
    assert unet.class_embedding.num_embeddings == 5
    assert 1.0e6 < sum(p.numel() for p in unet.parameters()) < 1.2e6


def test_resolution_bound_preset_refuses_other_sizes() -> None:
    with pytest.raises(CxrsynthError, match="nih128.*128².*64²") as caught:
        check_preset_resolution(get_preset("nih128"), 64)
    assert "nih64" in caught.value.fix


@pytest.mark.parametrize(("name", "size"), [("tiny", 30), ("small", 36), ("small", 16)])
def test_sizes_the_levels_cannot_halve_are_refused(name: str, size: int) -> None:
    with pytest.raises(CxrsynthError, match="divisible"):
        check_preset_resolution(get_preset(name), size)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(CxrsynthError) as caught:
        get_preset("huge")
    assert "tiny" in caught.value.fix and "nih256" in caught.value.fix
