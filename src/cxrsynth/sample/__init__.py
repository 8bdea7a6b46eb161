"""Transitional: the former sample.py, split into modules in the next commit."""

from cxrsynth.sample.generate import *  # noqa: F401,F403
