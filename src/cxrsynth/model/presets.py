"""UNet presets: named ``diffusers.UNet2DModel`` architectures (widths, depth, attention).

A preset is an architecture *pattern*. The UNet's ``sample_size`` always comes from the
prepared data: ``tiny``, ``small`` and ``base`` accept any data size that their downsampling
levels divide; the ``nih*`` presets are tuned for one resolution and refuse any other, so a
64² recipe is never silently run at 256².

Parameter counts below are counted from the real model (1 channel in/out, unconditional);
``tests/train/test_presets.py`` checks them. A conditional model adds
``num_class_embeds × time-embedding width`` parameters for its class embedding.

=======  ==========================  =====  ==============================  ==========  ======
preset   block widths                layers attention at                    resolution  params
=======  ==========================  =====  ==============================  ==========  ======
tiny     32, 64, 64                  1      lowest level (S/4) + middle     any         1.1M
small    32, 64, 128, 128            1      lowest level (S/8) + middle     any         4.3M
base     64, 128, 256, 256           2      two lowest levels + middle      any         26.6M
nih64    128, 256, 256, 256          2      16², 8² + middle                64          37.1M
nih128   128, 128, 256, 256, 512     2      16², 8² + middle                128         76.7M
nih256   128, 128, 256, 256, 512, 512 2     16² + middle                    256         113.7M
=======  ==========================  =====  ==============================  ==========  ======

``tiny`` is for tests (≈80 img/s training at 32², batch 32, on 2 CPU cores); ``small`` is the
CPU demo model (64²); ``base`` is a mid-size model for a single GPU; ``nih64``/``nih128``/``nih256``
follow the DDPM paper's CIFAR-10 and LSUN-256 UNets for ChestX-ray14-scale data on GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxrsynth.errors import CxrsynthError

if TYPE_CHECKING:  # torch and diffusers load only when a model is built: keeps `cxrsynth --help` fast
    from diffusers import UNet2DModel


@dataclass(frozen=True)
class UNetPreset:
    """One named UNet architecture.

    Attributes:
        name: the ``--preset`` value.
        block_out_channels: channel width of each resolution level, highest resolution first.
        layers_per_block: ResNet layers per level.
        attention_levels: levels (0 = highest resolution) whose blocks have self-attention.
        attention_head_dim: channels per attention head.
        dropout: dropout inside the ResNet blocks.
        resolution: the only data size this preset accepts, or None for any divisible size.
        parameters: parameter count of the unconditional 1-channel model (documentation; tested).
        purpose: one line for ``--help``.
    """

    name: str
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_levels: frozenset[int]
    attention_head_dim: int
    dropout: float
    resolution: int | None
    parameters: int
    purpose: str

    @property
    def downsampling_factor(self) -> int:
        """Ratio between the input size and the lowest UNet resolution."""
        return 2 ** (len(self.block_out_channels) - 1)

    def unet_kwargs(self, sample_size: int, num_class_embeds: int | None = None) -> dict:
        """Keyword arguments of ``UNet2DModel`` for 1-channel images of side ``sample_size``."""
        levels = range(len(self.block_out_channels))
        down = tuple("AttnDownBlock2D" if i in self.attention_levels else "DownBlock2D" for i in levels)
        up = tuple("AttnUpBlock2D" if i in self.attention_levels else "UpBlock2D" for i in reversed(levels))
        return {
            "sample_size": sample_size,
            "in_channels": 1,
            "out_channels": 1,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "down_block_types": down,
            "up_block_types": up,
            "attention_head_dim": self.attention_head_dim,
            "dropout": self.dropout,
            "num_class_embeds": num_class_embeds,
        }


PRESETS: dict[str, UNetPreset] = {
    preset.name: preset
    for preset in (
        UNetPreset("tiny", (32, 64, 64), 1, frozenset({2}), 8, 0.0, None, 1_112_801,
                   "tests; any size divisible by 4 (e.g. 32²)"),
        UNetPreset("small", (32, 64, 128, 128), 1, frozenset({3}), 8, 0.0, None, 4_327_905,
                   "CPU demo; any size divisible by 8 (e.g. 64²)"),
        UNetPreset("base", (64, 128, 256, 256), 2, frozenset({2, 3}), 64, 0.0, None, 26_621_057,
                   "one GPU; any size divisible by 8"),
        UNetPreset("nih64", (128, 256, 256, 256), 2, frozenset({2, 3}), 64, 0.1, 64, 37_060_097,
                   "GPU, real data at 64²"),
        UNetPreset("nih128", (128, 128, 256, 256, 512), 2, frozenset({3, 4}), 64, 0.1, 128, 76_690_433,
                   "GPU, real data at 128²"),
        UNetPreset("nih256", (128, 128, 256, 256, 512, 512), 2, frozenset({4}), 64, 0.1, 256, 113_668_609,
                   "GPU, real data at 256²"),
    )
}

MIN_LOWEST_RESOLUTION = 4
"""Smallest feature map the UNet may reach (below it, 3×3 convolutions see mostly padding)."""


def get_preset(name: str) -> UNetPreset:
    """The preset called ``name``.

    Raises:
        CxrsynthError: for an unknown name, listing the known ones.
    """
    if name not in PRESETS:
        raise CxrsynthError(f"unknown UNet preset {name!r}", f"use one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def check_preset_resolution(preset: UNetPreset, size: int) -> None:
    """Refuse a data size the preset cannot (or should not) model.

    Raises:
        CxrsynthError: when the preset is tied to another resolution, or ``size`` is not divisible
            by its downsampling factor, or the lowest level would be smaller than 4².
    """
    if preset.resolution is not None and preset.resolution != size:
        matching = [p.name for p in PRESETS.values() if p.resolution == size]
        suggestion = f"use --preset {matching[0]}" if matching else "use --preset tiny, small or base"
        raise CxrsynthError(
            f"preset {preset.name!r} is for {preset.resolution}² images but the data is {size}²",
            f"{suggestion}, or prepare the data with --size {preset.resolution}",
        )
    factor = preset.downsampling_factor
    if size % factor or size // factor < MIN_LOWEST_RESOLUTION:
        raise CxrsynthError(
            f"preset {preset.name!r} halves the image {len(preset.block_out_channels) - 1} times, "
            f"which needs a size divisible by {factor} and at least {factor * MIN_LOWEST_RESOLUTION}; "
            f"the data is {size}²",
            "prepare the data at a suitable --size, or choose a preset with fewer levels (tiny)",
        )


def build_unet(preset: UNetPreset, sample_size: int, num_class_embeds: int | None = None) -> UNet2DModel:
    """A freshly initialised UNet of ``preset`` for 1-channel ``sample_size``² images.

    Args:
        preset: the architecture.
        sample_size: image side in pixels (from the data).
        num_class_embeds: classes of a conditional model (``LabelVocabulary.num_class_embeds``),
            or None for an unconditional one.

    Raises:
        CxrsynthError: when the size does not suit the preset (see :func:`check_preset_resolution`).
    """
    from diffusers import UNet2DModel

    check_preset_resolution(preset, sample_size)
    return UNet2DModel(**preset.unet_kwargs(sample_size, num_class_embeds))


def count_parameters(preset: UNetPreset, sample_size: int | None = None, num_class_embeds: int | None = None) -> int:
    """Parameters of the preset's UNet, counted on the meta device (no memory, instant)."""
    import torch
    from diffusers import UNet2DModel

    size = sample_size or preset.resolution or preset.downsampling_factor * 8
    with torch.device("meta"):
        model = UNet2DModel(**preset.unet_kwargs(size, num_class_embeds))
    return sum(parameter.numel() for parameter in model.parameters())


def preset_help() -> str:
    """One line per preset (name, params, widths, purpose) for ``--help`` texts."""
    lines = []
    for preset in PRESETS.values():
        widths = ",".join(str(width) for width in preset.block_out_channels)
        lines.append(f"{preset.name} ({preset.parameters / 1e6:.1f}M params, widths {widths}): {preset.purpose}")
    return "; ".join(lines)
