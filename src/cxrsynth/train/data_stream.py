"""Training data order: the member images as an endless stream of seeded epochs.

Epoch ``e`` visits the member images in the order ``permutation(seed, e)``; epochs follow each
other without gaps, and micro-batch ``k`` of the run takes stream positions
``[k·B·P, (k+1)·B·P)`` (B images per process, P processes), process ``r`` its ``r``-th slice of B.
So the data order is a pure function of ``(seed, epoch)`` plus a position, batches may span an
epoch boundary (no image is dropped, and a batch may exceed the data set), and resuming is setting
the position: no skipped batch is ever loaded.

Images are read from the memory-mapped ``images.npy`` by fancy indexing, one array per batch:
no per-item Python work, no decoding, no worker processes.

A privacy-preserving run replaces this stream with another :class:`BatchSource` (e.g. Poisson
sampling of patients); the training step only needs ``next_batch`` and the state methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class Batch:
    """One process's micro-batch.

    Attributes:
        images: uint8 tensor B×1×S×S (convert with :func:`cxrsynth.data.dataset.to_model_range`).
        class_ids: int64 class ids (B,) of a conditional run, else None.
        rows: the images' rows in ``images.npy``.
    """

    images: torch.Tensor
    class_ids: torch.Tensor | None
    rows: np.ndarray


class BatchSource(Protocol):
    """What the training loop needs from a data source."""

    @property
    def epoch(self) -> float:
        """Passes over the training records so far (fractional)."""

    def next_batch(self) -> Batch:
        """The next micro-batch of this process."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state from which :meth:`load_state_dict` continues exactly."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""


def epoch_permutation(seed: int, epoch: int, count: int) -> np.ndarray:
    """Order in which epoch ``epoch`` visits ``count`` records: a pure function of its arguments."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(count)


class MemberImageStream:
    """Seeded, position-addressable stream of member-image micro-batches (see the module docstring).

    Args:
        images: the uint8 N×S×S array of the prepared folder (memory-mapped).
        rows: rows of the training images (the ``member`` split).
        class_ids: class id of each of ``rows`` for a conditional run, else None.
        seed: data-order seed.
        batch_size: images per process per micro-batch.
        process_index: this process's rank.
        num_processes: number of processes.
    """

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        class_ids: np.ndarray | None,
        seed: int,
        batch_size: int,
        process_index: int = 0,
        num_processes: int = 1,
    ) -> None:
        if len(rows) == 0:
            raise ValueError("the stream needs at least one image")
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.class_ids = None if class_ids is None else np.asarray(class_ids, dtype=np.int64)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.process_index = int(process_index)
        self.num_processes = int(num_processes)
        self.position = 0
        self._orders: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> float:
        """Epochs completed so far, fractional (across all processes)."""
        return self.position / len(self.rows)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            # A batch spans at most a few epochs; keep only the ones still ahead.
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = epoch_permutation(self.seed, epoch, len(self.rows))
        return self._orders[epoch]

    def indices_at(self, position: int, count: int) -> np.ndarray:
        """Indices into ``rows`` of stream positions ``[position, position + count)``."""
        positions = np.arange(position, position + count, dtype=np.int64)
        epochs, offsets = np.divmod(positions, len(self.rows))
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            selected = epochs == epoch
            out[selected] = self._order(int(epoch))[offsets[selected]]
        return out

    def next_batch(self) -> Batch:
        """This process's slice of the next global micro-batch; advances the stream."""
        start = self.position + self.process_index * self.batch_size
        indices = self.indices_at(start, self.batch_size)
        self.position += self.batch_size * self.num_processes
        rows = self.rows[indices]
        images = torch.from_numpy(np.ascontiguousarray(self.images[rows]))[:, None]
        class_ids = None if self.class_ids is None else torch.from_numpy(self.class_ids[indices])
        return Batch(images=images, class_ids=class_ids, rows=rows)

    def state_dict(self) -> dict[str, Any]:
        """The stream position plus what it is relative to (checked on load)."""
        return {
            "position": self.position,
            "seed": self.seed,
            "records": len(self.rows),
            "global_batch": self.batch_size * self.num_processes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state['position']``.

        Raises:
            ValueError: when the state belongs to another seed, data set size or batch layout.
        """
        expected = {"seed": self.seed, "records": len(self.rows), "global_batch": self.batch_size * self.num_processes}
        found = {key: state.get(key) for key in expected}
        if found != expected:
            raise ValueError(f"data-order state {found} does not match this run {expected}")
        self.position = int(state["position"])
