"""Canary patients (``cxrsynth train --canaries M``): what they are, where they live, how they are trained.

Real tiny trainings at 16² (a few steps each): the canaries and their inclusion mask are stored
only in ``RUN/canaries/`` (private modes), the prepared data is untouched, a DP run counts the
included canaries as privacy units, an exact resume keeps them, and release refuses the run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from cxrsynth.config import TrainConfig
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError
from cxrsynth.train import train
from cxrsynth.train.canaries import (
    BACKGROUND,
    Canaries,
    load_canaries,
    make_canaries,
    marker_cell,
    run_canary_count,
    save_canaries,
    with_canaries,
)
from cxrsynth.train.data_stream import MemberImageStream
from tests.factories import make_prepared_folder


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny trainings: one torch thread (see the root conftest)."""


def _data(tmp_path: Path) -> Path:
    return make_prepared_folder(tmp_path / "data", n_patients=8, images_per_patient=1, size=16,
                                split_cycle=("member", "holdout"))


def _config(data: Path, **changes) -> TrainConfig:
    settings = dict(data=str(data), preset="tiny", max_steps=4, batch_size=8, lr=1e-3, warmup_steps=1, seed=1,
                    checkpoint_every=100, progress_every=0, log_every=2, canaries=16)
    settings.update(changes)
    return TrainConfig(**settings)


def test_canaries_are_distinct_out_of_distribution_markers() -> None:
    canaries = make_canaries(400, 32, seed=5)
    images = canaries.images.astype(int)
    assert canaries.images.shape == (400, 32, 32) and canaries.images.dtype == np.uint8
    cell = marker_cell(32)
    marker_pixels = (cell * 6) ** 2
    # Grey everywhere but the marker, whose cells are black or white.
    assert ((images != BACKGROUND).sum(axis=(1, 2)) == marker_pixels).all()
    assert set(np.unique(images)) == {0, BACKGROUND, 255}
    flat = images.reshape(400, -1)
    distances = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    assert distances[~np.eye(400, dtype=bool)].min() > 255  # every pair differs in several pixels
    assert 150 < canaries.included.sum() < 250  # each included with probability ½
    again = make_canaries(400, 32, seed=5)
    assert (again.images == canaries.images).all() and (again.included == canaries.included).all()
    assert not (make_canaries(400, 32, seed=6).images == canaries.images).all()


def test_with_canaries_appends_the_included_ones_to_the_member_split(tmp_path: Path) -> None:
    data = load_prepared(_data(tmp_path))
    canaries = make_canaries(10, 16, seed=3)
    view = with_canaries(data, canaries)
    chosen = np.flatnonzero(canaries.included)
    members = view.rows("member")
    assert len(members) == len(data.rows("member")) + len(chosen)
    added = members[members >= len(data.images)]
    assert (view.images[added] == canaries.images[chosen]).all()
    assert (view.images[data.rows("member")] == data.images[data.rows("member")]).all()
    assert sorted(view.patient_rows("member")) == sorted(
        list(data.patient_rows("member")) + [canaries.patient_ids[i] for i in chosen])
    stream = MemberImageStream(view.images, members, None, seed=0, batch_size=len(members))
    assert sorted(stream.next_batch().rows.tolist()) == sorted(members.tolist())  # canaries are trained on
    assert with_canaries(data, None) is data


def test_canary_run_stores_canaries_only_in_the_private_run_folder(tmp_path: Path) -> None:
    data = _data(tmp_path)
    before = hashlib.sha256((data / "images.npy").read_bytes()).hexdigest()
    index_before = (data / "index.csv").read_text()
    run = tmp_path / "run"
    train(_config(data), run)
    folder = run / "canaries"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("canaries.safetensors", "inclusion.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    canaries = load_canaries(run)
    assert len(canaries) == 16
    record = json.loads((folder / "inclusion.json").read_text())
    assert record["included"] == canaries.included.tolist()
    # config.yaml says only how many; the prepared data is untouched and its fingerprint is the real one.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["canaries"] == 16
    assert "canary" not in json.dumps(saved["facts"]) and saved["facts"]["member_images"] == 4
    assert hashlib.sha256((data / "images.npy").read_bytes()).hexdigest() == before
    assert (data / "index.csv").read_text() == index_before
    assert run_canary_count(run) == 16 and run_canary_count(run / "pipeline") == 16


def test_dp_run_counts_included_canaries_as_privacy_units(tmp_path: Path) -> None:
    data = _data(tmp_path)
    run = tmp_path / "run"
    train(_config(data, max_steps=2, dp=True, epsilon=8.0, noise_multiplicity=1, logical_batch_size=4), run)
    privacy = json.loads((run / "privacy.json").read_text())
    included = int(load_canaries(run).included.sum())
    assert privacy["privacy_units"] == 4 + included
    assert privacy["sample_rate"] == pytest.approx(4 / (4 + included))
    assert privacy["delta"] == pytest.approx(1 / (10 * (4 + included)))


def test_resume_keeps_the_canaries_and_is_exact(tmp_path: Path) -> None:
    data = _data(tmp_path)
    straight = tmp_path / "straight"
    train(_config(data, max_steps=6, checkpoint_every=3, keep_checkpoints=2), straight)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    shutil.rmtree(resumed / "pipeline")
    canary_bytes = (resumed / "canaries" / "canaries.safetensors").read_bytes()
    mask = (resumed / "canaries" / "inclusion.json").read_text()
    train(_config(data, max_steps=6, checkpoint_every=3, keep_checkpoints=2), resumed, resume=True)
    assert (resumed / "canaries" / "canaries.safetensors").read_bytes() == canary_bytes
    assert (resumed / "canaries" / "inclusion.json").read_text() == mask
    weights = "pipeline/unet/diffusion_pytorch_model.safetensors"
    expected, found = load_file(straight / weights), load_file(resumed / weights)
    assert all((expected[name] == found[name]).all() for name in expected)
    # A new run may not reuse the folder, and a resumed one may not change the number of canaries.
    with pytest.raises(CxrsynthError, match="already holds"):
        train(_config(data, max_steps=6), resumed)
    with pytest.raises(CxrsynthError, match="canaries"):
        train(_config(data, max_steps=6, canaries=8), resumed, resume=True)


def test_lost_canaries_refuse_resume(tmp_path: Path) -> None:
    data = _data(tmp_path)
    run = tmp_path / "run"
    train(_config(data, max_steps=2), run)
    shutil.rmtree(run / "canaries")
    with pytest.raises(CxrsynthError, match="canaries"):
        train(_config(data, max_steps=4), run, resume=True)


def test_canaries_need_an_unconditional_run(tmp_path: Path) -> None:
    with pytest.raises(CxrsynthError, match="--conditional"):
        _config(_data(tmp_path), conditional=True).validate()
    with pytest.raises(CxrsynthError, match="--canaries"):
        _config(_data(tmp_path), canaries=-1).validate()


def test_release_refuses_and_sample_warns_for_a_canary_run(tiny_run: Path, tmp_path: Path) -> None:
    from cxrsynth.release import ReleaseOptions, release_run
    from cxrsynth.sample import generate_samples
    from tests.tiny_run import copy_run

    run = copy_run(tiny_run, tmp_path / "run")
    save_canaries(run, Canaries(images=make_canaries(4, 32, seed=0).images, included=np.ones(4, bool)))
    with pytest.raises(CxrsynthError, match="audit run"):
        release_run(run, tmp_path / "release", ReleaseOptions(num_images=2))
    assert not (tmp_path / "release").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate_samples(run, 2, sampler="dpmsolver", steps=2, batch_size=2, out=tmp_path / "samples",
                         device="cpu", progress=False, label="No Finding")
    AcceleratorState._reset_state(reset_partial_state=True)
    assert any("canary" in str(item.message) for item in caught)
    sampling = json.loads((tmp_path / "samples" / "sampling.json").read_text())
    assert sampling["canaries"] == 4 and "audit run" in sampling["note"]


def test_model_card_says_the_run_carries_canaries(tiny_run: Path, tmp_path: Path) -> None:
    from cxrsynth.report.runner import write_report
    from tests.tiny_run import copy_run

    run = copy_run(tiny_run, tmp_path / "run")
    assert "canary" not in write_report(run).model_card.read_text()
    document = yaml.safe_load((run / "config.yaml").read_text())
    document["train"]["canaries"] = 4
    document["train"]["conditional"] = False  # as a canary run is (the card reads the config only)
    (run / "config.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    assert "4 synthetic canary patients" in write_report(run).model_card.read_text()
