"""The training data order: seeded epochs, exact positions, disjoint process slices."""

from __future__ import annotations

import numpy as np

from cxrsynth.train.data_stream import MemberImageStream, epoch_permutation


def _stream(batch_size: int = 4, rank: int = 0, processes: int = 1, seed: int = 3) -> MemberImageStream:
    images = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), dtype=np.uint8)
    rows = np.array([1, 3, 4, 5, 7, 8, 9])  # member rows; image value == row
    return MemberImageStream(images, rows, rows * 10, seed, batch_size, rank, processes)


def _served(stream: MemberImageStream, batches: int) -> list[int]:
    return [int(v) for _ in range(batches) for v in stream.next_batch().images[:, 0, 0, 0]]


def test_each_epoch_serves_every_member_once_in_a_seeded_order() -> None:
    served = _served(_stream(batch_size=7), 3)
    for epoch in range(3):
        chunk = served[epoch * 7:(epoch + 1) * 7]
        assert sorted(chunk) == [1, 3, 4, 5, 7, 8, 9]
        assert chunk == [[1, 3, 4, 5, 7, 8, 9][i] for i in epoch_permutation(3, epoch, 7)]
    assert served[:7] != served[7:14]
    assert _served(_stream(batch_size=7, seed=4), 1) != served[:7]


def test_batches_span_epoch_boundaries_and_may_exceed_the_data() -> None:
    stream = _stream(batch_size=10)
    batch = stream.next_batch()
    assert batch.images.shape == (10, 1, 2, 2) and batch.images.dtype.is_floating_point is False
    assert batch.class_ids.tolist() == [10 * int(v) for v in batch.images[:, 0, 0, 0]]
    assert stream.epoch == 10 / 7


def test_restoring_a_position_continues_exactly_without_replaying() -> None:
    reference = _stream()
    _served(reference, 5)
    expected = _served(reference, 4)
    resumed = _stream()
    resumed.load_state_dict(dict(_stream().state_dict(), position=5 * 4))
    assert _served(resumed, 4) == expected


def test_processes_take_disjoint_slices_of_each_global_batch() -> None:
    single = _served(_stream(batch_size=6), 4)
    ranks = [_stream(batch_size=3, rank=rank, processes=2) for rank in range(2)]
    merged = []
    for _ in range(4):
        for stream in ranks:
            merged += [int(v) for v in stream.next_batch().images[:, 0, 0, 0]]
    assert merged == single
