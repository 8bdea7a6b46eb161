"""`accelerate launch` with 2 CPU processes: every id written exactly once, each process its share."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrsynth.sample import generate_samples
from tests.sample.conftest import TRAIN_LABELS, make_run
from tests.sample.test_generate import read_manifest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_processes_share_the_ids_and_match_single_process(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", label_cells=TRAIN_LABELS)
    out = tmp_path / "sharded"
    common = ["--num-images", "7", "--sampler", "ddim", "--steps", "3", "--batch-size", "2", "--seed", "11",
              "--label-mix", "from-data", "--device", "cpu"]
    command = [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        "-m", "cxrsynth", "sample", "--run", str(run), "--out", str(out), *common,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    shares = {int(m[0]): int(m[1]) for m in re.findall(r"process (\d) of 2: wrote (\d+) new images", done.stderr)}
    assert shares == {0: 4, 1: 3}, done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("sample_*")) == [f"sample_{i:06d}.png" for i in range(7)]
    rows = read_manifest(out)
    assert [int(row["index"]) for row in rows] == list(range(7))

    single = generate_samples(run, 7, sampler="ddim", steps=3, batch_size=7, seed=11, label_mix="from-data",
                              out=tmp_path / "single", device="cpu", progress=False)
    assert single.written == list(range(7))
    assert read_manifest(tmp_path / "single") == rows
    for i in range(7):
        name = f"sample_{i:06d}.png"
        sharded, alone = (np.asarray(Image.open(folder / name)).astype(int) for folder in (out, tmp_path / "single"))
        assert np.abs(sharded - alone).max() <= 1, name
