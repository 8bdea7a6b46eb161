"""The label-set vocabulary used by conditional models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrsynth.errors import CxrsynthError
from cxrsynth.model.conditioning import LabelVocabulary, canonical_label_set, run_vocabulary


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


def test_a_schema_vocabulary_is_fixed_before_the_data_and_stores_no_counts(tmp_path: Path) -> None:
    vocab = LabelVocabulary.from_schema(("Effusion", "Nodule", "Mass"), max_findings=2)
    assert vocab.label_sets == ("No Finding", "Effusion", "Nodule", "Mass", "Effusion|Nodule", "Effusion|Mass",
                                "Mass|Nodule")
    assert vocab.counts is None and vocab.from_schema_only and vocab.num_class_embeds == 8
    vocab.save(tmp_path)
    assert LabelVocabulary.load(tmp_path) == vocab
    saved = json.loads((tmp_path / "label_vocabulary.json").read_text())
    assert saved["counts"] is None and saved["source"] == "schema"
    # An image with more findings than a label set holds trains on its first ones in schema order.
    assert vocab.training_label_set("Mass|Nodule|Effusion") == "Effusion|Nodule"
    assert vocab.encode_training_labels(["Mass|Nodule|Effusion", "No Finding"]).tolist() == [4, 0]
    with pytest.raises(CxrsynthError, match="Pneumonia are not in the label schema"):
        vocab.training_label_set("Pneumonia|Mass")
    with pytest.raises(CxrsynthError, match="at most 2 of"):
        vocab.encode(["Mass|Nodule|Effusion"])


def test_a_schema_vocabulary_refuses_from_data_and_draws_uniformly() -> None:
    vocab = LabelVocabulary.from_schema(("Effusion", "Nodule"), max_findings=2)
    with pytest.raises(CxrsynthError, match="stores none"):
        vocab.sample_from_data(3, np.random.default_rng(0))
    draws = vocab.sample_uniform(4000, np.random.default_rng(0)).numpy()
    assert set(draws.tolist()) == {0, 1, 2, 3} and abs((draws == 3).mean() - 0.25) < 0.03


def test_run_vocabulary_of_a_dp_run_ignores_the_member_label_distribution() -> None:
    common = run_vocabulary(True, None, 2, "nih", ["Effusion"] * 50 + ["No Finding"] * 50)
    rare = run_vocabulary(True, None, 2, "nih", ["Hernia|Mass|Edema", "No Finding"])
    assert common == rare and len(common.label_sets) == 1 + 14 + 91 and common.counts is None
    assert run_vocabulary(False, None, 2, "nih", ["Effusion", "No Finding"]).counts == (1, 1), \
        "non-DP runs keep the data's label sets and counts"
    with pytest.raises(CxrsynthError, match="pass --findings"):
        run_vocabulary(True, None, 2, "folder", ["Effusion"])
    assert run_vocabulary(True, "Effusion, Nodule", 1, "folder", ["Effusion|Nodule"]).label_sets == (
        "No Finding", "Effusion", "Nodule")
