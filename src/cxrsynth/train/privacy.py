"""The interface through which private training plugs into the training loop.

The loop (:mod:`cxrsynth.train.loop`) knows what a private run must change, not how: it asks a
:class:`PrivacyPlugin` to resolve the run's settings into a :class:`PrivacyPlan`, then lets the
plan build the private optimizer and record stream, attach the privacy ledger once the checkpoint
is loaded, take each optimisation step and write the report. :mod:`cxrsynth.dp` implements these
with DP-SGD and imports ``train/``; ``train/`` never imports ``dp/`` (``tests/train/test_layering.py``
checks). Which implementation a DP run gets is declared in :mod:`cxrsynth.plugins` and loaded on
the first DP run, so ``cxrsynth.train.train(config, run)`` needs no import of ``cxrsynth.dp`` by its caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from accelerate import Accelerator

from cxrsynth.config import TrainConfig
from cxrsynth.data.prepared import PreparedData
from cxrsynth.model.conditioning import LabelVocabulary
from cxrsynth.plugins import PRIVACY_PLUGIN, load_plugin
from cxrsynth.train.components import TrainingParts
from cxrsynth.train.data_stream import BatchSource


class PrivacyLedger(Protocol):
    """What the loop reads of a private run's accountant (``TrainingParts.privacy``)."""

    target_epsilon: float
    noise_multiplier: float
    planned_steps: int

    def epsilon(self) -> float:
        """ε spent so far."""

    def allowed_steps(self, requested: int) -> int:
        """How many of ``requested`` steps stay within the target ε."""


class PrivacyPlan(Protocol):
    """A private run's settings resolved on its data and processes, and the hooks the loop calls."""

    @property
    def unit(self) -> str:
        """The privacy unit: ``patient`` or ``image``."""

    @property
    def units(self) -> int:
        """How many privacy units the member split holds (the records of an epoch)."""

    @property
    def logical_batch_size(self) -> int:
        """Expected records per optimizer step over all processes."""

    def make_private(self, config: TrainConfig, data: PreparedData, accelerator: Accelerator, unet: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, vocabulary: LabelVocabulary | None,
                     noise_generator: torch.Generator, draw_seed: int
                     ) -> tuple[torch.optim.Optimizer, BatchSource]:
        """The private optimizer around ``optimizer`` and the run's record stream (seeded from ``draw_seed``)."""

    def attach_ledger(self, parts: TrainingParts, config: TrainConfig, planned_steps: int,
                      print_fn: Callable[[str], Any]) -> PrivacyLedger:
        """Restore (from ``parts.extra_state``) or calibrate the ledger; set ``parts.privacy``; return it."""

    def optimisation_step(self, parts: TrainingParts) -> tuple[torch.Tensor, torch.Tensor]:
        """One private optimizer step: ``(loss_sum, records)`` as 0-d tensors."""

    def write_report(self, run_dir: Path, ledger: PrivacyLedger, stopped_early: bool) -> dict[str, Any]:
        """Write the run's privacy report into ``run_dir``; return what was written (``epsilon``, ``delta``, …)."""


class PrivacyPlugin(Protocol):
    """Resolves a private run's options on its data: the entry point of a privacy implementation."""

    def __call__(self, config: TrainConfig, data: PreparedData, split: str, num_processes: int) -> PrivacyPlan:
        """The plan of ``config``'s private run on ``data``'s ``split`` with ``num_processes`` processes.

        Raises:
            CxrsynthError: when the options do not fit the data.
        """


def privacy_plugin() -> PrivacyPlugin:
    """The privacy implementation declared in :data:`cxrsynth.plugins.PRIVACY_PLUGIN` (imported on first use).

    Raises:
        ImportError, ValueError: when the declared implementation cannot be loaded.
    """
    return load_plugin(PRIVACY_PLUGIN)
