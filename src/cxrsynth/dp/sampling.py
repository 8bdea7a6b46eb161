"""Which records a DP step trains on: Poisson sampling of privacy units, one image per sampled patient.

A *record* is one privacy unit: a patient (all of their member images) or a single image. Step s
includes every record independently with probability q (Poisson sampling, which the accountant's
amplification-by-subsampling assumes), and for each included patient draws one of their images
uniformly at random. Both draws are a pure function of ``(seed, s)``, so resuming is setting s.
The seed of a DP run is a secret from OS entropy (:func:`cxrsynth.train.components.draw_secret_seed`),
kept only in its checkpoints: a known seed would let anyone replay which records each step used.

With several processes, record j belongs to process ``j mod P``: all processes draw the same
global inclusion mask and each keeps its own records, so together they realise exactly one
Poisson sample of all records per step.

A step's records may exceed memory: Opacus' ``BatchMemoryManager`` splits them into physical
batches of at most ``physical_batch_size`` and tells the DP optimizer which one ends the step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader

from cxrsynth.data.prepared import PreparedData
from cxrsynth.train.data_stream import Batch

POISSON_STREAM = 7


@dataclass(frozen=True)
class PrivacyRecords:
    """The member split grouped into privacy units.

    Attributes:
        unit: ``patient`` or ``image``.
        image_rows: for each record (sorted by patient id, then row), its rows in ``images.npy``.
    """

    unit: str
    image_rows: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.image_rows)

    @classmethod
    def from_prepared(cls, data: PreparedData, split: str, unit: str) -> "PrivacyRecords":
        """The records of ``split``: one per patient (``unit='patient'``) or one per image."""
        if unit == "patient":
            by_patient = data.patient_rows(split)
            return cls(unit, tuple(np.sort(by_patient[patient]) for patient in sorted(by_patient)))
        return cls(unit, tuple(np.array([row]) for row in data.rows(split)))


class _ImageRows(torch.utils.data.Dataset):
    """Images (and class ids) by row of ``images.npy``, fetched one batch at a time."""

    def __init__(self, images: np.ndarray, class_ids_by_row: np.ndarray | None) -> None:
        self.images = images
        self.class_ids_by_row = class_ids_by_row

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, row: int) -> Batch:
        return self.__getitems__([row])

    def __getitems__(self, rows: list[int]) -> Batch:
        rows_array = np.asarray(rows, dtype=np.int64)
        size = self.images.shape[1:]
        pixels = self.images[rows_array] if len(rows_array) else np.zeros((0, *size), dtype=np.uint8)
        images = torch.from_numpy(np.ascontiguousarray(pixels))[:, None]
        class_ids = None
        if self.class_ids_by_row is not None:
            class_ids = torch.from_numpy(self.class_ids_by_row[rows_array])
        return Batch(images=images, class_ids=class_ids, rows=rows_array)


def _keep_batch(batch: Batch) -> Batch:
    return batch


class PoissonRecordStream:
    """Poisson-sampled records, step by step, as physical batches (see the module docstring).

    Args:
        images: the uint8 N×S×S array of the prepared folder (memory-mapped).
        records: the privacy units of the member split.
        class_ids_by_row: class id of each row of ``images`` for a conditional run, else None.
        seed: sampling seed.
        sample_rate: q, each record's probability of being in a step.
        physical_batch_size: most records per physical batch on one process.
        process_index: this process's rank.
        num_processes: number of processes.
    """

    def __init__(self, images: np.ndarray, records: PrivacyRecords, class_ids_by_row: np.ndarray | None,
                 seed: int, sample_rate: float, physical_batch_size: int, process_index: int = 0,
                 num_processes: int = 1) -> None:
        if len(records) == 0:
            raise ValueError("Poisson sampling needs at least one record")
        self.records = records
        self.dataset = _ImageRows(images, class_ids_by_row)
        self.seed = int(seed)
        self.sample_rate = float(sample_rate)
        self.physical_batch_size = int(physical_batch_size)
        self.process_index = int(process_index)
        self.num_processes = int(num_processes)
        self.step = 0
        self._counts = np.array([len(rows) for rows in records.image_rows], dtype=np.int64)
        self._mine = np.arange(len(records)) % self.num_processes == self.process_index

    @property
    def epoch(self) -> float:
        """Expected passes over the records so far (steps × q)."""
        return self.step * self.sample_rate

    def image_rows(self, step: int) -> np.ndarray:
        """This process's image rows of step ``step``: one random image of each of its sampled records.

        Every process draws the same inclusion mask over all records (and image choices), then keeps its own.
        """
        rng = np.random.default_rng([self.seed, POISSON_STREAM, int(step)])
        included = rng.random(len(self.records)) < self.sample_rate
        choice = (rng.random(len(self.records)) * self._counts).astype(np.int64)
        selected = np.flatnonzero(included & self._mine)
        return np.array([self.records.image_rows[j][choice[j]] for j in selected], dtype=np.int64)

    @contextmanager
    def next_step(self, optimizer: DPOptimizer) -> Iterator[Iterator[Batch]]:
        """The physical batches of the next step (advances the stream); ``optimizer`` learns where it ends.

        Every batch must be followed by ``optimizer.step()``: Opacus' ``BatchMemoryManager`` marks
        all but the last as accumulate-only. A step with no records yields one empty batch.
        """
        rows = self.image_rows(self.step).tolist()
        self.step += 1
        loader = DataLoader(self.dataset, batch_sampler=[rows], collate_fn=_keep_batch, num_workers=0)
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=self.physical_batch_size,
                                optimizer=optimizer) as physical:
            yield iter(physical)

    def state_dict(self) -> dict[str, Any]:
        """The step reached plus what it is relative to (checked on load)."""
        return {"step": self.step, "seed": self.seed, "records": len(self.records), "sample_rate": self.sample_rate,
                "num_processes": self.num_processes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state['step']`` with the saved (secret) seed.

        The saved seed replaces this stream's: a DP run draws a fresh seed from OS entropy at every
        start, and a resumed run must continue the sampling of the run it resumes.

        Raises:
            ValueError: when the state belongs to another record count, rate or process count.
        """
        expected = {"records": len(self.records), "sample_rate": self.sample_rate,
                    "num_processes": self.num_processes}
        found = {key: state.get(key) for key in expected}
        if found != expected:
            raise ValueError(f"DP sampling state {found} does not match this run {expected}")
        self.seed = int(state["seed"])
        self.step = int(state["step"])
