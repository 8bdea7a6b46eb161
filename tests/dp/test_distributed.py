"""DP training on two processes (`accelerate launch`, CPU/gloo): one model, every record once, noise once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import make_prepared_folder
from tests.sample.test_sharding import free_port

SCRIPT = Path(__file__).with_name("two_process_steps.py")


@pytest.mark.slow
def test_two_processes_keep_one_model(tmp_path: Path) -> None:
    data = make_prepared_folder(tmp_path / "prepared", n_patients=15, images_per_patient=2, size=16,
                                split_cycle=("member", "member", "holdout"))
    out = tmp_path / "out"
    out.mkdir()
    command = [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(SCRIPT), str(data), str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(rank["world"] == 2 for rank in ranks)
    assert ranks[0]["initial"] == ranks[1]["initial"], "rank 0's initial weights were broadcast"
    assert ranks[0]["final"] == ranks[1]["final"], "after the steps both processes hold the same weights"
    assert sum(ranks[0]["final"]) != pytest.approx(ranks[0]["initial"], abs=1e-9), "the steps changed the weights"
    assert ranks[0]["epsilon"] == ranks[1]["epsilon"] > 0
    assert ranks[0]["records"] + ranks[1]["records"] > 0
