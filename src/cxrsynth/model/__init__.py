"""The diffusion model: UNet presets, label conditioning, schedulers and samplers."""
