"""Resumable checkpoints: ``RUN/checkpoints/step_XXXXXXX/``, written atomically, read without pickle.

A checkpoint folder holds

* ``unet.safetensors`` — the trained weights;
* ``ema.safetensors`` — the EMA weights (by parameter name);
* ``optimizer.safetensors`` — AdamW moments and step counts (``<param index>.<name>``);
* ``rng_rank<r>.safetensors`` — per process: torch CPU (and CUDA) RNG state and the noise
  generator's state as tensors; Python's and numpy's RNG states as JSON in the file metadata;
* ``state.json`` — step, data-order position, LR schedule, EMA counters, optimizer
  hyper-parameters, gradient scaler, process count, and ``extra`` (other trainers' entries,
  e.g. a privacy accountant).

Every file is safetensors or JSON: nothing is unpickled, so a checkpoint from an untrusted place
cannot run code; a pickle where safetensors belongs is refused with a clear error.

The folder is built as ``checkpoints/.step_XXXXXXX.partial`` (every process writes its RNG file
there) and renamed by the main process once complete, so a crash never leaves a half checkpoint
under a real name; ``state.json`` is written last.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from cxrsynth.errors import CxrsynthError
from cxrsynth.train.components import NOISE_STREAM, TrainingParts, derived_seed

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"^step_(\d{7,})$")
UNET_FILE = "unet.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, folder)``, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive; plain pickles start with the PROTO opcode.
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (on CPU) and metadata of a safetensors file.

    Raises:
        CxrsynthError: when the file is missing, is a pickle / ``torch.save`` file (refused:
            unpickling can run arbitrary code), or is not a valid safetensors file.
    """
    if not path.is_file():
        raise CxrsynthError(f"checkpoint file {path} is missing", "resume from another checkpoint (delete this one)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        # Parse from bytes, not a memory map: the tensors (e.g. optimizer moments, updated in place)
        # must not stay backed by a checkpoint file that pruning later deletes.
        return load_safetensors_bytes(path.read_bytes()), metadata
    except (SafetensorError, OSError, ValueError) as exc:
        if _looks_pickled(path):
            raise CxrsynthError(
                f"{path} is a Python pickle / torch.save file, not safetensors; cxrsynth never unpickles "
                "checkpoint files because unpickling can run arbitrary code",
                "delete this checkpoint folder (resume falls back to an earlier one) or retrain",
            ) from None
        raise CxrsynthError(f"{path} is not a valid safetensors file ({exc})", "delete this checkpoint folder") from None


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"not JSON-serialisable in a checkpoint: {type(value).__name__}")


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.safetensors"


def _write_rng_state(folder: Path, parts: TrainingParts) -> None:
    """This process's RNG states (torch, CUDA, noise generator, Python, numpy)."""
    tensors = {"torch_cpu": torch.get_rng_state(), "noise_generator": parts.noise_generator.get_state()}
    device = parts.accelerator.device
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    metadata = {
        "device_type": device.type,
        "python": json.dumps([version, list(python_state), gauss]),
        "numpy": json.dumps([kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]),
    }
    save_file(_cpu_contiguous(tensors), str(folder / _rng_file(parts.accelerator.process_index)), metadata=metadata)


def _restore_rng_state(folder: Path, parts: TrainingParts) -> str | None:
    """Restore this process's RNG states; returns a warning when they cannot be continued exactly."""
    tensors, metadata = read_safetensors(folder / _rng_file(parts.accelerator.process_index))
    version, python_state, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    device = parts.accelerator.device
    if metadata.get("device_type") == device.type:
        parts.noise_generator.set_state(tensors["noise_generator"])
        if "torch_cuda" in tensors:
            torch.cuda.set_rng_state(tensors["torch_cuda"], device)
        return None
    # Generator states are device-specific: continue with a fresh stream determined by the step.
    parts.noise_generator.manual_seed(
        derived_seed(parts.draw_seed, NOISE_STREAM, parts.accelerator.process_index, parts.step)
    )
    return (f"the checkpoint was written on {metadata.get('device_type')} and training continues on "
            f"{device.type}: the noise stream was reseeded, so the result is not bit-identical to an "
            "uninterrupted run")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            tensors[f"{index}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors, state["param_groups"]


def _optimizer_state(tensors: dict[str, torch.Tensor], param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group for group in param_groups]
    return {"state": state, "param_groups": groups}


def _ema_scalars(parts: TrainingParts) -> dict[str, Any] | None:
    if parts.ema is None:
        return None
    return {key: value for key, value in parts.ema.state_dict().items() if key != "shadow_params"}


def _partial_folder(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f".{checkpoint_name(step)}.partial"


def _write_main_files(partial: Path, parts: TrainingParts) -> None:
    """The main process's files of a checkpoint (weights, EMA, optimizer, then state.json), fsynced."""
    accelerator = parts.accelerator
    unet = parts.base_unet
    save_file(_cpu_contiguous(unet.state_dict()), str(partial / UNET_FILE))
    if parts.ema is not None:
        names = [name for name, _ in unet.named_parameters()]
        save_file(_cpu_contiguous(dict(zip(names, parts.ema.shadow_params))), str(partial / EMA_FILE))
    optimizer_tensors, param_groups = _optimizer_tensors(parts.optimizer)
    save_file(_cpu_contiguous(optimizer_tensors), str(partial / OPTIMIZER_FILE))
    scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": parts.step,
        "num_processes": accelerator.num_processes,
        "draw_seed": parts.draw_seed,
        "stream": parts.stream.state_dict(),
        "lr_scheduler": parts.lr_scheduler.state_dict(),
        "ema": _ema_scalars(parts),
        "optimizer_param_groups": param_groups,
        "grad_scaler": scaler,
        "extra": parts.extra_state,
    }
    (partial / STATE_FILE).write_text(json.dumps(state, indent=1, default=_json_default, allow_nan=False))
    for path in partial.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def save_checkpoint(run_dir: str | Path, parts: TrainingParts) -> Path:
    """Write the checkpoint of ``parts.step`` (call on every process; they synchronise).

    Returns:
        The final checkpoint folder.

    Raises:
        OSError: when the main process cannot write (disk full, read-only folder); the partial
            folder is removed first, and earlier checkpoints are untouched.
    """
    accelerator = parts.accelerator
    run_dir = Path(run_dir)
    partial = _partial_folder(run_dir, parts.step)
    final = run_dir / CHECKPOINTS_DIR / checkpoint_name(parts.step)
    try:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        _write_rng_state(partial, parts)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_main_files(partial, parts)
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
    except BaseException:
        # Disk full, a read-only folder, an interrupt: no half checkpoint stays behind (the previous
        # complete one is untouched, so `--resume` continues from it once the cause is fixed).
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def read_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint folder.

    Raises:
        CxrsynthError: when it is missing or not valid JSON.
    """
    path = Path(folder) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CxrsynthError(f"{path} cannot be read ({exc})", "delete this checkpoint folder") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CxrsynthError(f"{path} has checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}",
                            "resume with the cxrsynth version that wrote it")
    return state


def load_checkpoint(folder: str | Path, parts: TrainingParts) -> list[str]:
    """Restore ``parts`` (weights, EMA, optimizer, schedules, data order, RNGs, step, extra) from ``folder``.

    Returns:
        Warnings to show (e.g. a resume on another device type, which cannot be bit-identical).

    Raises:
        CxrsynthError: when a file is missing, unsafe (pickle) or corrupt, when the weights do not
            fit the model of the run's config, or when the process count differs.
    """
    folder = Path(folder)
    state = read_checkpoint_state(folder)
    accelerator = parts.accelerator
    if state["num_processes"] != accelerator.num_processes:
        raise CxrsynthError(
            f"{folder} was written by {state['num_processes']} training process(es); this run has "
            f"{accelerator.num_processes}",
            f"resume with `accelerate launch --num_processes {state['num_processes']} …` "
            "(each process's random state and data slice are part of the checkpoint)",
        )
    unet = parts.base_unet
    weights, _ = read_safetensors(folder / UNET_FILE)
    try:
        unet.load_state_dict(weights)
    except RuntimeError as exc:
        raise CxrsynthError(
            f"{folder / UNET_FILE} does not fit the UNet of this run's config ({str(exc).splitlines()[0]})",
            "resume with the settings the run was trained with (see RUN/config.yaml)",
        ) from None
    if parts.ema is not None:
        ema_weights, _ = read_safetensors(folder / EMA_FILE)
        names = [name for name, _ in unet.named_parameters()]
        if sorted(ema_weights) != sorted(names):
            raise CxrsynthError(f"{folder / EMA_FILE} does not match the UNet's parameters", "delete this checkpoint")
        device = accelerator.device
        shadow = [ema_weights[name].to(device) for name in names]
        parts.ema.load_state_dict({**state["ema"], "shadow_params": shadow})
    optimizer_tensors, _ = read_safetensors(folder / OPTIMIZER_FILE)
    parts.optimizer.load_state_dict(_optimizer_state(optimizer_tensors, state["optimizer_param_groups"]))
    parts.lr_scheduler.load_state_dict(state["lr_scheduler"])
    if state["grad_scaler"] is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["grad_scaler"])
    try:
        parts.stream.load_state_dict(state["stream"])
    except ValueError as exc:
        raise CxrsynthError(f"{folder}: {exc}", "resume with the same data, seed and batch size") from None
    parts.step = int(state["step"])
    parts.draw_seed = int(state.get("draw_seed", parts.draw_seed))
    parts.extra_state = dict(state.get("extra") or {})
    warning = _restore_rng_state(folder, parts)
    return [warning] if warning else []


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints, and leftover partial folders (main process only).

    Returns:
        The folders deleted.
    """
    checkpoints = list_checkpoints(run_dir)
    doomed = [path for _, path in checkpoints[: max(0, len(checkpoints) - keep)]]
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if folder.is_dir():
        doomed += [path for path in folder.glob(".step_*.partial")]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
