"""The from-scratch CXR classifier: determinism, saving, caching, proxy task, and a sanity check on real-ish data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cxrsynth.cli import main
from cxrsynth.data.phantom import generate_phantom
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate.domain import (
    ClassifierConfig,
    classifier_folder,
    classifier_steps_for,
    domain_classifier_for_run,
    load_classifier,
    train_classifier,
)
from cxrsynth.evaluate.frechet import frechet_distance
from tests.factories import make_prepared_folder


def _images(count: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size), dtype=np.uint8)


def test_training_is_deterministic_for_a_seed_and_saves_without_pickle(tmp_path: Path) -> None:
    images = _images(40)
    labels = (np.random.default_rng(1).random((40, 2)) < 0.3).astype(np.float32)
    config = ClassifierConfig(image_size=16, label_names=("A", "B"), steps=6, batch_size=8, seed=3)
    global_state = torch.random.get_rng_state()
    first = train_classifier(images, labels, config, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), global_state)  # the global RNG is left alone
    second = train_classifier(images, labels, config, device="cpu")
    for (name, a), (_, b) in zip(first.net.state_dict().items(), second.net.state_dict().items()):
        assert torch.equal(a, b), name
    features = first.features(images)
    assert features.shape == (40, 128) and features.dtype == np.float32 and features.std() > 0
    assert first.predict_proba(images).shape == (40, 2)

    first.save(tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf", device="cpu")
    assert loaded.config == config
    np.testing.assert_array_equal(loaded.features(images), features)
    other_seed = train_classifier(images, labels, dataclasses.replace(config, seed=4), device="cpu")
    assert not np.allclose(other_seed.features(images), features)


def test_unlabelled_data_uses_the_rotation_proxy(tmp_path: Path) -> None:
    root = make_prepared_folder(tmp_path / "data", n_patients=8, findings=(), size=16)
    data = load_prepared(root)
    classifier, reused = domain_classifier_for_run(tmp_path / "run", data, steps=3, device="cpu")
    assert classifier.config.task == "rotation" and not reused
    assert classifier.features(np.asarray(data.images[:3])).shape == (3, 128)
    with pytest.raises(CxrsynthError, match="rotation"):
        classifier.predict_proba(np.asarray(data.images[:3]))


def test_cache_is_reused_until_seed_budget_or_split_change(tmp_path: Path) -> None:
    data = load_prepared(make_prepared_folder(tmp_path / "data", n_patients=8, size=16))
    run = tmp_path / "run"
    first, reused = domain_classifier_for_run(run, data, steps=3, device="cpu")
    assert not reused and (classifier_folder(run) / "model.safetensors").is_file()
    again, reused = domain_classifier_for_run(run, data, steps=3, device="cpu")
    assert reused
    np.testing.assert_array_equal(again.features(np.asarray(data.images[:4])), first.features(np.asarray(data.images[:4])))
    assert not domain_classifier_for_run(run, data, steps=3, seed=1, device="cpu")[1]
    assert not domain_classifier_for_run(run, data, steps=4, seed=1, device="cpu")[1]
    test_trained, reused = domain_classifier_for_run(run, data, split="test", steps=3, device="cpu")
    assert not reused and test_trained.info["data"]["split"] == "test"
    assert (classifier_folder(run, "test") / "classifier.json").is_file()
    assert domain_classifier_for_run(run, data, steps=4, seed=1, device="cpu")[1]  # member cache untouched


def test_steps_are_capped_by_epochs() -> None:
    assert classifier_steps_for(n_train=100_000, steps=400, batch_size=64) == 400
    assert classifier_steps_for(n_train=320, steps=400, batch_size=64) == 50
    assert classifier_steps_for(n_train=1000, steps=400, batch_size=64) == 125
    assert classifier_steps_for(n_train=10, steps=20, batch_size=64) == 20


def test_bad_images_are_refused() -> None:
    with pytest.raises(CxrsynthError, match="uint8"):
        train_classifier(np.zeros((4, 8, 8), np.float32), None, ClassifierConfig(image_size=8, task="rotation", steps=1))
    with pytest.raises(CxrsynthError, match="label matrix"):
        train_classifier(_images(4, 8), np.zeros((3, 1)), ClassifierConfig(image_size=8, label_names=("A",), steps=1))


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory: pytest.TempPathFactory):
    """The built-in phantom (chest-like anatomy, visible findings) prepared at 32²."""
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root / "source", patients=80, studies_per_patient=3.0, size=32, seed=0)
    with pytest.raises(SystemExit) as exited:
        main(["data", "prepare", str(root / "source"), "--format", "nih", "--size", "32", "--out", str(root / "data")])
    assert exited.value.code == 0
    return load_prepared(root / "data")


def test_domain_distance_separates_real_from_noise_and_blur(phantom_data, tmp_path: Path) -> None:
    data = phantom_data
    classifier, _ = domain_classifier_for_run(tmp_path / "run", data, steps=30, batch_size=32, device="cpu")
    assert classifier.config.task == "findings"
    member = np.asarray(data.images[data.rows("member")])
    test = np.asarray(data.images[data.rows("test")])
    noise = np.random.default_rng(0).integers(0, 256, size=test.shape, dtype=np.uint8)
    blurred = np.stack([gaussian_filter(image.astype(float), 2.0) for image in test]).round().astype(np.uint8)
    reference = classifier.features(member)
    real = frechet_distance(reference, classifier.features(test))
    to_noise = frechet_distance(reference, classifier.features(noise))
    to_blurred = frechet_distance(reference, classifier.features(blurred))
    print(f"fd_domain member vs test {real:.3g}, vs noise {to_noise:.3g}, vs blurred {to_blurred:.3g}")
    assert to_noise > 10 * real
    assert to_blurred > 2 * real
