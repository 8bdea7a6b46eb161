"""Run by tests/dp/test_distributed.py under `accelerate launch --num_processes 2`: three DP steps, then
each process writes a checksum of its weights (they must agree: one model, noise added once)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from cxrsynth.config import TrainConfig
from cxrsynth.data.prepared import load_prepared
from cxrsynth.dp.training import attach_ledger, private_optimisation_step, resolve_privacy
from cxrsynth.train.components import make_accelerator
from cxrsynth.train.loop import TRAIN_SPLIT, build_parts


def main(data_dir: str, out_dir: str) -> None:
    """Three DP steps on ``data_dir``; writes ``out_dir/rank<r>.json`` (weight sums, records trained on)."""
    torch.set_num_threads(1)
    data = load_prepared(data_dir)
    config = TrainConfig(data=data_dir, preset="tiny", max_steps=3, dp=True, epsilon=5.0, noise_multiplicity=2,
                         logical_batch_size=6, physical_batch_size=2, warmup_steps=1, lr=1e-2)
    accelerator = make_accelerator(config, out_dir)
    settings = resolve_privacy(config, data, TRAIN_SPLIT, accelerator.num_processes)
    parts = build_parts(config, data, accelerator, None, settings)
    initial = sum(p.double().sum().item() for p in parts.unet.parameters())
    attach_ledger(parts, config, settings, planned_steps=3, print_fn=lambda *_: None)
    records = 0
    for _ in range(3):
        records += int(private_optimisation_step(parts)[1].item())
    final = [p.double().sum().item() for p in parts.unet.parameters()]
    result = {"initial": initial, "final": final, "records": records, "epsilon": parts.privacy.epsilon(),
              "world": accelerator.num_processes}
    (Path(out_dir) / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
