"""``RUN/train_log.jsonl``: one JSON object per logged step.

Fields: ``step`` (optimizer steps done), ``loss`` (mean training loss since the previous record),
``lr`` (learning rate at that step), ``img_per_s`` (training images per second over all processes,
excluding checkpoint and progress-grid time), ``epoch`` (passes over the member images so far).
Other trainers add their own fields (a DP run adds ``epsilon``). After ``--resume`` from a checkpoint
between two records, the first new record averages the steps since the checkpoint only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxrsynth.fsutil import atomic_write_text

LOG_FILE = "train_log.jsonl"


def read_train_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's log, in order (empty when there is no log). Unparsable lines are skipped."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill while being appended
    return records


class TrainLog:
    """Appends records to ``RUN/train_log.jsonl`` (main process only)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOG_FILE

    def truncate_after(self, step: int) -> None:
        """Drop records after ``step``: a resumed run logs those steps again."""
        records = [record for record in read_train_log(self.path.parent) if int(record.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in records))

    def append(self, record: dict[str, Any]) -> None:
        """Add one record (a line of JSON) and flush it to disk."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
            handle.flush()
