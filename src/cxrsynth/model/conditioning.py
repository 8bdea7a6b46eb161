"""Class conditioning on finding labels through a fixed label-set vocabulary.

Chest X-rays carry several findings at once (multi-label). A conditional model here is a plain
``diffusers.UNet2DModel`` with ``num_class_embeds = len(vocabulary) + 1``: each distinct *set* of
findings seen in the training split (``No Finding`` included) is one class, and the extra last
class is the *null* label used for label dropout during training and for the unconditional branch
of classifier-free guidance at sampling time.

Why a label-set vocabulary rather than summed per-finding embeddings: it keeps the UNet a stock
diffusers model (the pipeline folder loads with plain ``DDPMPipeline.from_pretrained``), and it
models co-occurring findings jointly instead of assuming their effects add. Its cost: a label set
never seen in training cannot be requested (a clear error says which sets exist).

The vocabulary is saved beside the model as ``label_vocabulary.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from cxrsynth.data.prepared import join_labels, split_labels
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_write_json

VOCABULARY_FILE = "label_vocabulary.json"


def canonical_label_set(labels: str | Iterable[str]) -> str:
    """Normalise ``"B|A"``, ``["A", "B"]`` or ``"No Finding"`` to one sorted, ``|``-joined string."""
    findings = split_labels(labels) if isinstance(labels, str) else [name for name in labels if name]
    findings = [name for name in findings if name != "No Finding"]
    return join_labels(sorted(set(findings)))


@dataclass(frozen=True)
class LabelVocabulary:
    """The label sets a conditional model knows, with how often each occurred in training.

    Attributes:
        label_sets: canonical label-set strings; class id ``i`` means ``label_sets[i]``.
        counts: training images per label set (used by ``--label-mix from-data``).
    """

    label_sets: tuple[str, ...]
    counts: tuple[int, ...]

    @property
    def null_class(self) -> int:
        """Class id of the null (unconditional) label."""
        return len(self.label_sets)

    @property
    def num_class_embeds(self) -> int:
        """``num_class_embeds`` for ``UNet2DModel``: every label set plus the null label."""
        return len(self.label_sets) + 1

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> "LabelVocabulary":
        """Build the vocabulary from the ``labels`` cells of the training images."""
        counter = Counter(canonical_label_set(cell) for cell in labels)
        ordered = sorted(counter)
        return cls(label_sets=tuple(ordered), counts=tuple(counter[name] for name in ordered))

    def encode(self, labels: Sequence[str]) -> torch.Tensor:
        """Class ids (int64 tensor) for label cells or label-set strings.

        Raises:
            CxrsynthError: for a label set the model was not trained on.
        """
        lookup = {name: i for i, name in enumerate(self.label_sets)}
        ids = []
        for cell in labels:
            key = canonical_label_set(cell)
            if key not in lookup:
                raise CxrsynthError(
                    f"label set {key!r} was not in this model's training data",
                    f"use one of: {', '.join(self.label_sets)}",
                )
            ids.append(lookup[key])
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, class_ids: Iterable[int]) -> list[str]:
        """Label-set strings for class ids (the null class decodes to ``""``)."""
        return ["" if int(i) == self.null_class else self.label_sets[int(i)] for i in class_ids]

    def sample_from_data(self, count: int, rng: np.random.Generator) -> torch.Tensor:
        """Draw ``count`` class ids with the training frequencies (``--label-mix from-data``)."""
        weights = np.asarray(self.counts, dtype=np.float64)
        return torch.from_numpy(rng.choice(len(self.label_sets), size=count, p=weights / weights.sum())).long()

    def save(self, folder: str | Path) -> Path:
        """Write ``label_vocabulary.json`` into ``folder``; returns its path."""
        return atomic_write_json(
            Path(folder) / VOCABULARY_FILE,
            {"label_sets": list(self.label_sets), "counts": list(self.counts), "null_class": self.null_class},
        )

    @classmethod
    def load(cls, folder: str | Path) -> "LabelVocabulary | None":
        """Read ``label_vocabulary.json`` from ``folder``; None for an unconditional model."""
        path = Path(folder) / VOCABULARY_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(label_sets=tuple(data["label_sets"]), counts=tuple(int(c) for c in data["counts"]))
