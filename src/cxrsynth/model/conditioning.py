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

Two kinds of vocabulary:

* **from the data** (non-DP runs by default): the label sets seen in the member split, with
  their counts (``--label-mix from-data`` samples with them);
* **from the public label schema** (every DP run, or ``--findings``): fixed before seeing the
  data — every set of at most ``max_findings`` findings of the schema (the source format's
  finding list, e.g. the 14 ChestX-ray14 findings, or the list the user passes), ``No Finding``
  first, then by size in schema order. An image with more findings trains on its first
  ``max_findings`` in schema order. No counts are stored. Two DP runs on data with different
  label distributions therefore ship the same vocabulary and the same UNet config: adding or
  removing one patient changes neither (the data-derived vocabulary made ε = ∞).

The vocabulary is saved beside the model as ``label_vocabulary.json``.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from cxrsynth.data.prepared import join_labels, split_labels
from cxrsynth.data.sources.nih import NIH_FINDINGS
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_write_json

VOCABULARY_FILE = "label_vocabulary.json"
PUBLIC_SCHEMAS: dict[str, tuple[str, ...]] = {"nih": NIH_FINDINGS, "chestmnist": NIH_FINDINGS}
"""The published finding list of each source format whose labels come from a fixed schema."""
DEFAULT_MAX_FINDINGS = 2
"""Findings per label set of a schema vocabulary (14 findings → 106 sets: none, 14 single, 91 pairs)."""


def canonical_label_set(labels: str | Iterable[str]) -> str:
    """Normalise ``"B|A"``, ``["A", "B"]`` or ``"No Finding"`` to one sorted, ``|``-joined string."""
    findings = split_labels(labels) if isinstance(labels, str) else [name for name in labels if name]
    findings = [name for name in findings if name != "No Finding"]
    return join_labels(sorted(set(findings)))


@dataclass(frozen=True)
class LabelVocabulary:
    """The label sets a conditional model knows (see the module docstring for the two kinds).

    Attributes:
        label_sets: canonical label-set strings; class id ``i`` means ``label_sets[i]``.
        counts: training images per label set (used by ``--label-mix from-data``); None for a
            vocabulary built from the public schema, which stores no counts.
        schema: the public finding list a schema vocabulary was built from; None when built from the data.
        max_findings: findings per label set of a schema vocabulary; None when built from the data.
    """

    label_sets: tuple[str, ...]
    counts: tuple[int, ...] | None = None
    schema: tuple[str, ...] | None = None
    max_findings: int | None = None

    @property
    def null_class(self) -> int:
        """Class id of the null (unconditional) label."""
        return len(self.label_sets)

    @property
    def num_class_embeds(self) -> int:
        """``num_class_embeds`` for ``UNet2DModel``: every label set plus the null label."""
        return len(self.label_sets) + 1

    @property
    def from_schema_only(self) -> bool:
        """True when the vocabulary was fixed from the public schema, without looking at the data."""
        return self.schema is not None

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> "LabelVocabulary":
        """Build the vocabulary from the ``labels`` cells of the training images (with their counts)."""
        counter = Counter(canonical_label_set(cell) for cell in labels)
        ordered = sorted(counter)
        return cls(label_sets=tuple(ordered), counts=tuple(counter[name] for name in ordered))

    @classmethod
    def from_schema(cls, findings: Sequence[str], max_findings: int = DEFAULT_MAX_FINDINGS) -> "LabelVocabulary":
        """Every set of at most ``max_findings`` of ``findings`` (``No Finding`` first), with no counts.

        Raises:
            CxrsynthError: for an empty or repeated finding list, or ``max_findings`` < 1.
        """
        schema = tuple(name.strip() for name in findings if name.strip() and name.strip() != "No Finding")
        if not schema or len(set(schema)) != len(schema):
            raise CxrsynthError(f"the label schema {list(findings)!r} is empty or names a finding twice",
                                "pass each finding of your schema once, e.g. --findings 'Effusion,Nodule,Mass'")
        if max_findings < 1:
            raise CxrsynthError(f"invalid --max-label-findings {max_findings}", "expected an integer >= 1")
        sets = [canonical_label_set(list(combo)) for size in range(max_findings + 1)
                for combo in itertools.combinations(schema, size)]
        return cls(label_sets=tuple(sets), schema=schema, max_findings=max_findings)

    def training_label_set(self, labels: str) -> str:
        """The label set an image with ``labels`` trains as: itself, or for a schema vocabulary its
        first ``max_findings`` findings in schema order.

        Raises:
            CxrsynthError: for a finding outside the schema.
        """
        if self.schema is None:
            return canonical_label_set(labels)
        findings = split_labels(labels) if isinstance(labels, str) else list(labels)
        unknown = sorted(set(findings) - set(self.schema))
        if unknown:
            raise CxrsynthError(
                f"finding(s) {', '.join(unknown)} are not in the label schema ({', '.join(self.schema)})",
                "pass --findings with every finding your labels may carry (the public schema, not the "
                "findings seen in the data)",
            )
        kept = [name for name in self.schema if name in findings][: self.max_findings]
        return canonical_label_set(kept)

    def encode_training_labels(self, labels: Sequence[str]) -> torch.Tensor:
        """Class ids of training images' label cells (:meth:`training_label_set`, then :meth:`encode`)."""
        return self.encode([self.training_label_set(cell) for cell in labels])

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
                if self.schema is not None:
                    raise CxrsynthError(
                        f"label set {key!r} is not one this model conditions on",
                        f"use at most {self.max_findings} of: {', '.join(self.schema)} (or 'No Finding')",
                    )
                raise CxrsynthError(
                    f"label set {key!r} was not in this model's training data",
                    f"use one of: {', '.join(self.label_sets)}",
                )
            ids.append(lookup[key])
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, class_ids: Iterable[int]) -> list[str]:
        """Label-set strings for class ids (the null class decodes to ``""``)."""
        return ["" if int(i) == self.null_class else self.label_sets[int(i)] for i in class_ids]

    def require_counts(self) -> tuple[int, ...]:
        """The training counts (for ``--label-mix from-data``).

        Raises:
            CxrsynthError: for a schema vocabulary, which has no training frequencies.
        """
        if self.counts is None:
            raise CxrsynthError(
                "--label-mix from-data needs the training label frequencies, and this model stores none: its "
                "label sets were fixed from the public schema (a DP run), since exact counts of the member labels "
                "would fall outside the (ε, δ) guarantee",
                "use --label-mix uniform, or --label SET for one label set",
            )
        return self.counts

    def sample_from_data(self, count: int, rng: np.random.Generator) -> torch.Tensor:
        """Draw ``count`` class ids with the training frequencies (``--label-mix from-data``).

        Raises:
            CxrsynthError: for a schema vocabulary, which has no training frequencies.
        """
        weights = np.asarray(self.require_counts(), dtype=np.float64)
        return torch.from_numpy(rng.choice(len(self.label_sets), size=count, p=weights / weights.sum())).long()

    def sample_uniform(self, count: int, rng: np.random.Generator) -> torch.Tensor:
        """Draw ``count`` class ids uniformly over the label sets (``--label-mix uniform``)."""
        return torch.from_numpy(rng.integers(len(self.label_sets), size=count)).long()

    def save(self, folder: str | Path) -> Path:
        """Write ``label_vocabulary.json`` into ``folder``; returns its path.

        Keys: ``label_sets``, ``null_class``, ``counts`` (null for a schema vocabulary),
        ``source`` (``schema`` or ``data``), ``schema`` and ``max_findings`` (null when from data).
        """
        return atomic_write_json(
            Path(folder) / VOCABULARY_FILE,
            {"label_sets": list(self.label_sets), "null_class": self.null_class,
             "counts": list(self.counts) if self.counts is not None else None,
             "source": "schema" if self.schema is not None else "data",
             "schema": list(self.schema) if self.schema is not None else None,
             "max_findings": self.max_findings},
        )

    @classmethod
    def load(cls, folder: str | Path) -> "LabelVocabulary | None":
        """Read ``label_vocabulary.json`` from ``folder``; None for an unconditional model."""
        path = Path(folder) / VOCABULARY_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        counts = data.get("counts")
        schema = data.get("schema")
        return cls(label_sets=tuple(data["label_sets"]),
                   counts=tuple(int(c) for c in counts) if counts is not None else None,
                   schema=tuple(schema) if schema is not None else None,
                   max_findings=int(data["max_findings"]) if data.get("max_findings") is not None else None)


def parse_findings(text: str) -> tuple[str, ...]:
    """``--findings 'A,B|C'`` → ``("A", "B", "C")`` (comma- or ``|``-separated, blanks dropped)."""
    return tuple(name.strip() for name in text.replace("|", ",").split(",") if name.strip())


def run_vocabulary(dp: bool, findings: str | None, max_findings: int, source_format: str | None,
                   member_labels: Sequence[str]) -> LabelVocabulary:
    """The vocabulary of a conditional run: from the public schema for DP runs (or with ``findings``),
    else from the member labels.

    Args:
        dp: the run is differentially private: the vocabulary may not depend on the data.
        findings: the user's public finding list (``--findings``), or None.
        max_findings: findings per label set of a schema vocabulary.
        source_format: the prepared data's ``meta.json`` ``format`` (its schema is used when known).
        member_labels: the ``labels`` cells of the member images.

    Raises:
        CxrsynthError: for a DP run on a source without a public schema and no ``findings``, or a
            member finding outside the schema.
    """
    if findings is not None:
        schema = parse_findings(findings)
    elif dp:
        if source_format not in PUBLIC_SCHEMAS:
            raise CxrsynthError(
                f"a conditional DP run needs the public list of findings its labels may carry, and a "
                f"{source_format!r} source has none built in (the findings seen in the member data would make the "
                "model depend on the data outside the DP guarantee)",
                "pass --findings 'A,B,C' with every finding of your label schema, or train without --conditional",
            )
        schema = PUBLIC_SCHEMAS[str(source_format)]
    else:
        return LabelVocabulary.from_labels(member_labels)
    vocabulary = LabelVocabulary.from_schema(schema, max_findings)
    for cell in member_labels:
        vocabulary.training_label_set(cell)  # refuses findings outside the schema
    return vocabulary
