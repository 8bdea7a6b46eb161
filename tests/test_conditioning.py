"""The label-set vocabulary used by conditional models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrsynth.errors import CxrsynthError
from cxrsynth.model.conditioning import LabelVocabulary, canonical_label_set


def test_canonical_label_set_sorts_and_normalises() -> None:
    assert canonical_label_set("Nodule|Cardiomegaly") == "Cardiomegaly|Nodule"
    assert canonical_label_set(["Nodule", "Cardiomegaly", "Nodule"]) == "Cardiomegaly|Nodule"
    assert canonical_label_set("No Finding") == "No Finding"
    assert canonical_label_set([]) == "No Finding"


def test_vocabulary_encodes_decodes_and_round_trips(tmp_path: Path) -> None:
    vocab = LabelVocabulary.from_labels(["No Finding", "Nodule|Cardiomegaly", "Cardiomegaly|Nodule", "Nodule"])
    assert vocab.label_sets == ("Cardiomegaly|Nodule", "No Finding", "Nodule")
    assert vocab.counts == (2, 1, 1)
    assert vocab.null_class == 3 and vocab.num_class_embeds == 4
    ids = vocab.encode(["Nodule", "Nodule|Cardiomegaly", "No Finding"])
    assert ids.tolist() == [2, 0, 1]
    assert vocab.decode([2, 3]) == ["Nodule", ""]
    vocab.save(tmp_path)
    assert LabelVocabulary.load(tmp_path) == vocab
    assert LabelVocabulary.load(tmp_path / "missing") is None


def test_unknown_label_set_is_a_clear_error() -> None:
    vocab = LabelVocabulary.from_labels(["No Finding", "Nodule"])
    with pytest.raises(CxrsynthError, match="Effusion.*not in this model's training data"):
        vocab.encode(["Effusion"])


def test_sample_from_data_follows_training_frequencies() -> None:
    vocab = LabelVocabulary.from_labels(["No Finding"] * 90 + ["Nodule"] * 10)
    draws = vocab.sample_from_data(5000, np.random.default_rng(0)).numpy()
    assert 0.08 < (draws == 1).mean() < 0.12
