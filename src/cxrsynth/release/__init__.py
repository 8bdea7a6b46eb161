"""Transitional: the former release.py, split into modules in the next commit."""

from cxrsynth.release.bundle import *  # noqa: F401,F403
