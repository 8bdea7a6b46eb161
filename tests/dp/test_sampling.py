"""Poisson sampling of privacy units: one image per sampled patient, reproducible, sharded without overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.optimizers import DPOptimizer

from cxrsynth.data.prepared import load_prepared
from cxrsynth.dp.sampling import PoissonRecordStream, PrivacyRecords
from tests.factories import make_prepared_folder


@pytest.fixture
def many_images_per_patient(tmp_path: Path):
    """12 patients × 5 images (8 member patients, 40 member images)."""
    return load_prepared(make_prepared_folder(tmp_path / "prepared", n_patients=12, images_per_patient=5,
                                              split_cycle=("member", "member", "holdout")))


def _patient_of_row(data) -> dict[int, str]:
    return dict(zip(data.index["row"].tolist(), data.index["patient_id"].astype(str).tolist()))


def test_patient_records_hold_all_of_each_members_images(many_images_per_patient) -> None:
    data = many_images_per_patient
    records = PrivacyRecords.from_prepared(data, "member", "patient")
    assert len(records) == 8
    assert sorted(np.concatenate(records.image_rows).tolist()) == sorted(data.rows("member").tolist())
    patient = _patient_of_row(data)
    assert all(len({patient[int(row)] for row in rows}) == 1 for rows in records.image_rows)
    assert len(PrivacyRecords.from_prepared(data, "member", "image")) == 40


def test_each_step_draws_at_most_one_image_per_patient_and_every_image_in_time(many_images_per_patient) -> None:
    data = many_images_per_patient
    stream = PoissonRecordStream(data.images, PrivacyRecords.from_prepared(data, "member", "patient"), None,
                                 seed=3, sample_rate=0.5, physical_batch_size=4)
    patient = _patient_of_row(data)
    seen, sizes = set(), []
    for step in range(400):
        rows = stream.image_rows(step)
        patients = [patient[int(row)] for row in rows]
        assert len(patients) == len(set(patients)), "a patient contributed twice to one step"
        seen.update(rows.tolist())
        sizes.append(len(rows))
    assert seen == set(data.rows("member").tolist())
    assert np.mean(sizes) == pytest.approx(0.5 * 8, rel=0.1)
    assert 0 in sizes or min(sizes) <= 1, "Poisson sampling varies the batch size"


def test_steps_are_reproducible_and_processes_partition_them(many_images_per_patient) -> None:
    data = many_images_per_patient
    records = PrivacyRecords.from_prepared(data, "member", "patient")
    single = PoissonRecordStream(data.images, records, None, seed=1, sample_rate=0.4, physical_batch_size=4)
    again = PoissonRecordStream(data.images, records, None, seed=1, sample_rate=0.4, physical_batch_size=4)
    shards = [PoissonRecordStream(data.images, records, None, seed=1, sample_rate=0.4, physical_batch_size=4,
                                  process_index=rank, num_processes=2) for rank in range(2)]
    for step in range(50):
        rows = single.image_rows(step)
        assert rows.tolist() == again.image_rows(step).tolist()
        parts = [shard.image_rows(step) for shard in shards]
        assert sorted(np.concatenate(parts).tolist()) == sorted(rows.tolist())
        assert not set(parts[0].tolist()) & set(parts[1].tolist())


def test_batch_memory_manager_splits_a_step_and_marks_only_its_last_batch(many_images_per_patient) -> None:
    data = many_images_per_patient
    records = PrivacyRecords.from_prepared(data, "member", "image")
    stream = PoissonRecordStream(data.images, records, np.arange(len(data.index)), seed=0, sample_rate=0.5,
                                 physical_batch_size=3)
    expected_rows = stream.image_rows(0)
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = DPOptimizer(torch.optim.SGD([parameter], lr=1.0), noise_multiplier=0.0, max_grad_norm=1.0,
                            expected_batch_size=20)
    got, real_steps = [], 0
    with stream.next_step(optimizer) as batches:
        for batch in batches:
            assert len(batch.rows) <= 3
            assert batch.images.shape[1:] == (1, data.size, data.size) and batch.images.dtype == torch.uint8
            assert batch.class_ids.tolist() == batch.rows.tolist()
            got.extend(batch.rows.tolist())
            parameter.grad_sample = torch.ones(len(batch.rows), 2)
            optimizer.step()
            real_steps += not optimizer._is_last_step_skipped
            optimizer.zero_grad()
    assert got == expected_rows.tolist() and stream.step == 1
    assert real_steps == 1


def test_state_resumes_the_saved_secret_seed_and_step_and_refuses_another_run(many_images_per_patient) -> None:
    data = many_images_per_patient
    records = PrivacyRecords.from_prepared(data, "member", "patient")
    stream = PoissonRecordStream(data.images, records, None, seed=123456789, sample_rate=0.5, physical_batch_size=4)
    stream.step = 17
    # A restarted DP run draws a fresh secret seed; loading the checkpoint must bring back the saved one.
    resumed = PoissonRecordStream(data.images, records, None, seed=9, sample_rate=0.5, physical_batch_size=4)
    resumed.load_state_dict(stream.state_dict())
    assert resumed.step == 17 and resumed.epoch == pytest.approx(8.5)
    assert resumed.image_rows(17).tolist() == stream.image_rows(17).tolist()
    other = PoissonRecordStream(data.images, records, None, seed=0, sample_rate=0.25, physical_batch_size=4)
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict(stream.state_dict())
