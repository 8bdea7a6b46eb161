"""DDPM training: the Accelerate loop, its parts, checkpoints and exports.

Public entry point: :func:`train` (``cxrsynth train`` only parses options and calls it).
"""

from cxrsynth.train.loop import train

__all__ = ["train"]
