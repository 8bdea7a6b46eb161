"""Which label set each synthetic image gets (``--label``, ``--label-mix``) and the guidance weight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from cxrsynth.errors import CxrsynthError
from cxrsynth.model.conditioning import LabelVocabulary

LABEL_MIX_FROM_DATA = "from-data"
LABEL_MIX_UNIFORM = "uniform"
LABEL_MIXES: tuple[str, ...] = (LABEL_MIX_FROM_DATA, LABEL_MIX_UNIFORM)
DEFAULT_GUIDANCE = 2.0
"""Classifier-free guidance weight used for conditional runs when none is given."""

_LABEL_STREAM = 1
"""Extra seed word for label draws, so they are independent of the image's noise stream."""


@dataclass(frozen=True)
class LabelPlan:
    """Which class each image index gets.

    Attributes:
        vocabulary: the model's vocabulary; None for an unconditional model (no labels).
        fixed_class: class id of ``--label`` for every image, or None to draw from ``mix``.
        seed: run seed (the draw for image ``i`` is seeded by ``(seed, i)``).
        mix: ``from-data`` (training frequencies) or ``uniform`` (every label set alike), when
            ``fixed_class`` is None.
    """

    vocabulary: LabelVocabulary | None
    fixed_class: int | None
    seed: int
    mix: str = LABEL_MIX_FROM_DATA

    @property
    def description(self) -> str:
        """How labels are chosen, as recorded in ``sampling.json``."""
        if self.vocabulary is None:
            return "unconditional"
        if self.fixed_class is None:
            return self.mix
        return f"label:{self.vocabulary.label_sets[self.fixed_class]}"

    def class_id(self, index: int) -> int | None:
        """Class id of image ``index`` (None for an unconditional model)."""
        if self.vocabulary is None:
            return None
        if self.fixed_class is not None:
            return self.fixed_class
        rng = np.random.default_rng([self.seed, int(index), _LABEL_STREAM])
        if self.mix == LABEL_MIX_UNIFORM:
            return int(self.vocabulary.sample_uniform(1, rng)[0])
        return int(self.vocabulary.sample_from_data(1, rng)[0])

    def class_ids(self, indices: Sequence[int]) -> torch.Tensor | None:
        """Class ids of ``indices`` as an int64 tensor; None for an unconditional model."""
        if self.vocabulary is None:
            return None
        return torch.tensor([self.class_id(i) for i in indices], dtype=torch.long)

    def label_text(self, index: int) -> str:
        """The label set of image ``index`` as written to the manifest ('' when unconditional)."""
        class_id = self.class_id(index)
        return "" if class_id is None or self.vocabulary is None else self.vocabulary.label_sets[class_id]


def plan_labels(
    vocabulary: LabelVocabulary | None, label: str | None, label_mix: str | None, seed: int
) -> LabelPlan:
    """Check ``--label`` / ``--label-mix`` against the model and decide each image's class.

    A conditional model given neither draws labels with the training frequencies (from-data), or
    uniformly over its label sets when it stores no frequencies (a DP run's schema vocabulary).

    Raises:
        CxrsynthError: a label option on an unconditional model, both options at once, an unknown
            ``label_mix``, ``from-data`` on a model without training counts, or a label set the
            model does not know.
    """
    if label is not None and label_mix is not None:
        raise CxrsynthError("--label and --label-mix were both given", "use one of them")
    if label_mix is not None and label_mix not in LABEL_MIXES:
        raise CxrsynthError(f"unknown --label-mix {label_mix!r}", f"use --label-mix {' or '.join(LABEL_MIXES)}")
    if vocabulary is None:
        if label is not None or label_mix is not None:
            option = "--label" if label is not None else "--label-mix"
            raise CxrsynthError(
                f"{option} was given but this model is unconditional (it was trained without labels)",
                "drop the option, or sample from a run trained with `cxrsynth train --conditional`",
            )
        return LabelPlan(None, None, seed)
    fixed = int(vocabulary.encode([label])[0]) if label is not None else None
    if label_mix is None:
        label_mix = LABEL_MIX_FROM_DATA if vocabulary.counts is not None else LABEL_MIX_UNIFORM
    if fixed is None and label_mix == LABEL_MIX_FROM_DATA:
        vocabulary.require_counts()
    return LabelPlan(vocabulary, fixed, seed, label_mix)


def resolve_guidance(vocabulary: LabelVocabulary | None, guidance_scale: float | None) -> float:
    """The guidance weight to use: ``DEFAULT_GUIDANCE`` for conditional models unless given, 1 otherwise.

    Raises:
        CxrsynthError: a guidance other than 1 for an unconditional model, or a negative one.
    """
    if vocabulary is None:
        if guidance_scale is not None and guidance_scale != 1.0:
            raise CxrsynthError(
                f"--guidance-scale {guidance_scale:g} needs a class-conditional model; this one is unconditional",
                "drop --guidance-scale",
            )
        return 1.0
    scale = DEFAULT_GUIDANCE if guidance_scale is None else float(guidance_scale)
    if scale < 0 or not np.isfinite(scale):
        raise CxrsynthError(f"--guidance-scale {scale:g} is invalid", "use a value >= 0 (1 = no guidance)")
    return scale
