"""The run-folder contract: where each stage's output lives in ``RUN/``, and how every stage reads it.

A run folder (``cxrsynth train --run RUN``) holds::

    RUN/config.yaml           training settings + resolved facts (cxrsynth.config), naming the prepared data
    RUN/privacy.json          DP accounting (DP runs only)
    RUN/pipeline/             the final model (diffusers layout)
    RUN/samples/              synthetic images + manifest.csv + sampling.json (cxrsynth sample)
    RUN/eval/fidelity.json    cxrsynth evaluate (keys documented in cxrsynth.evaluate.runner)
    RUN/audit/audit.json      cxrsynth audit
    RUN/.cxrsynth.lock        held by the command writing the folder (pid, host, command, started)

This module sits below every stage (it imports none of them): sample, evaluate, audit, release,
report and demo locate and read run-folder files through it, so the layout has one home, and every
command that writes a run (train included) holds its lock. Writing stays with the stage that owns
each file.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import inspect
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
from PIL import Image

from cxrsynth.config import CONFIG_FILE, PRIVACY_FILE, load_run_config
from cxrsynth.data.prepared import PreparedData, load_prepared
from cxrsynth.errors import CxrsynthError

__all__ = [
    "AUDIT_FILE", "AUDIT_FOLDER", "CONFIG_FILE", "EVAL_FOLDER", "FIDELITY_FILE", "LOCK_FILE", "PIPELINE_FOLDER",
    "PRIVACY_FILE", "SAMPLES_FOLDER", "SAMPLE_MANIFEST", "SAMPLE_SETTINGS", "SyntheticSet", "audit_path",
    "count_samples", "fidelity_path", "folder_lock", "load_run_data", "locks_run", "manifest_rows", "read_json_file",
    "read_sample_image", "read_sample_settings", "read_samples", "resolve_pipeline_dir", "run_data_path", "run_lock",
    "samples_folder",
]

SAMPLES_FOLDER = "samples"
SAMPLE_MANIFEST = "manifest.csv"
"""The sample stage's manifest (columns file, index, seed, sampler, steps, label, guidance)."""
SAMPLE_SETTINGS = "sampling.json"
"""The settings that made a samples folder's images (written by ``cxrsynth sample``)."""
EVAL_FOLDER = "eval"
FIDELITY_FILE = "fidelity.json"
AUDIT_FOLDER = "audit"
AUDIT_FILE = "audit.json"
PIPELINE_FOLDER = "pipeline"
LOCK_FILE = ".cxrsynth.lock"
"""Lock file of a run folder: JSON ``pid``, ``host``, ``command``, ``started`` of the process holding it."""


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def samples_folder(run_dir: Path, override: Path | None = None) -> Path:
    """The samples folder of a run: ``override`` (``--samples``) when given, else ``RUN/samples``."""
    return Path(override) if override is not None else Path(run_dir) / SAMPLES_FOLDER


def fidelity_path(run_dir: Path) -> Path:
    """``RUN/eval/fidelity.json`` (written by ``cxrsynth evaluate``)."""
    return Path(run_dir) / EVAL_FOLDER / FIDELITY_FILE


def audit_path(run_dir: Path) -> Path:
    """``RUN/audit/audit.json`` (written by ``cxrsynth audit``)."""
    return Path(run_dir) / AUDIT_FOLDER / AUDIT_FILE


def read_json_file(path: Path, problems: list[str]) -> dict | None:
    """The JSON object in ``path``; None when it is absent, or unreadable (recorded in ``problems``)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path} could not be read ({exc}); shown as not run")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path} does not hold a JSON object; shown as not run")
        return None
    return value


def resolve_pipeline_dir(run: str | Path) -> Path:
    """The diffusers pipeline folder of ``run`` (``RUN/pipeline``, or ``run`` itself if it is one).

    Raises:
        CxrsynthError: when neither holds a ``model_index.json``.
    """
    run = Path(run)
    for candidate in (run / PIPELINE_FOLDER, run):
        if (candidate / "model_index.json").is_file():
            return candidate
    raise CxrsynthError(
        f"no trained model in {run}: expected {run / 'pipeline' / 'model_index.json'}",
        "pass the run folder of a finished `cxrsynth train` (it writes RUN/pipeline at the end)",
    )


# ---------------------------------------------------------------------------------------------
# The prepared data a run points at
# ---------------------------------------------------------------------------------------------


def run_data_path(run_dir: Path) -> Path:
    """The prepared-data folder recorded in ``RUN/config.yaml`` (``train.data``).

    A relative path is taken as given (relative to the working directory, as ``cxrsynth train``
    received it), falling back to relative-to-the-run-folder's parent when that does not exist.

    Raises:
        CxrsynthError: when the config is missing or unreadable.
    """
    config, _ = load_run_config(run_dir)
    path = Path(config.data).expanduser()
    if not path.is_absolute() and not path.exists() and (run_dir.parent / path).exists():
        return run_dir.parent / path
    return path


def load_run_data(run_dir: Path, override: Path | None) -> PreparedData:
    """Open the run's prepared data (``override`` when given). Raises CxrsynthError naming the fix."""
    path = override if override is not None else run_data_path(run_dir)
    try:
        return load_prepared(path)
    except CxrsynthError as exc:
        # Shared by evaluate, audit, release and report: the fix names no one stage.
        raise CxrsynthError(exc.problem, f"{exc.fix}; or, if the data moved, pass --data DATA (its new location)") from None


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSet:
    """Synthetic images read from a samples folder.

    Attributes:
        images: uint8 N×S×S.
        labels: label-set text of each image from the manifest (conditional runs), else None.
        folder: where they came from.
        files: the file of each image, in the same order.
    """

    images: np.ndarray
    labels: list[str] | None
    folder: Path
    files: tuple[Path, ...] = ()


def manifest_rows(folder: Path) -> list[dict[str, str]] | None:
    """The rows of ``folder/manifest.csv`` by index (None without one).

    Raises:
        CxrsynthError: when it is not UTF-8 CSV with ``file`` and ``index`` columns, or a ``file``
            names anything but a file directly in ``folder`` (``../../etc/passwd``, an absolute path).
    """
    path = folder / SAMPLE_MANIFEST
    if not path.is_file():
        return None
    fix = "regenerate it with `cxrsynth sample` (delete the samples folder first)"
    rows: list[dict[str, str]] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        ordered = sorted(rows, key=lambda row: int(row["index"]))
    except UnicodeDecodeError as exc:
        raise CxrsynthError(f"{path} is not UTF-8 text ({exc})", fix) from None
    except (csv.Error, KeyError, TypeError, ValueError) as exc:
        if rows and not {"file", "index"} <= set(rows[0]):
            raise CxrsynthError(f"{path} lacks the 'file' and 'index' columns", fix) from None
        raise CxrsynthError(f"{path} is not a valid manifest ({type(exc).__name__}: {exc})", fix) from None
    for row in ordered:
        name = row.get("file") or ""
        if Path(name).name != name or name in ("", ".", ".."):
            raise CxrsynthError(
                f"{path} lists {name!r}, which is outside the samples folder {folder}; a manifest may only name "
                "files directly inside its folder",
                fix,
            )
    return ordered


def read_sample_image(path: Path) -> np.ndarray:
    """One sample file (PNG or DICOM) as a uint8 H×W array.

    Raises:
        CxrsynthError: when it is missing, unreadable, or not 8-bit grayscale.
    """
    if not path.is_file():
        raise CxrsynthError(f"sample file {path} listed in the manifest is missing", "re-run `cxrsynth sample` into that folder")
    fix = "delete it and re-run `cxrsynth sample` into that folder (it regenerates missing images)"
    try:
        if path.suffix.lower() == ".dcm":
            import pydicom  # only DICOM samples need it: PNG readers stay free of it

            pixels = pydicom.dcmread(path).pixel_array
        else:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L"))
    except Exception as exc:  # PIL and pydicom raise many types for a truncated or corrupt file
        raise CxrsynthError(f"sample file {path} cannot be read ({type(exc).__name__}: {exc})", fix) from None
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise CxrsynthError(f"{path} is not an 8-bit grayscale image ({pixels.dtype}, shape {pixels.shape})")
    return pixels


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS))


def read_samples(folder: Path, limit: int | None, size: int, warnings: list[str]) -> SyntheticSet:
    """Read the samples of ``folder`` (manifest order; or all PNGs when there is no manifest).

    Images of another size than ``size`` are resized (Lanczos) and a warning is added.

    Raises:
        CxrsynthError: when the folder holds no images, a listed file is missing or unreadable,
            or the samples differ in size from each other.
    """
    rows = manifest_rows(folder)
    if rows is not None:
        files = [folder / row["file"] for row in rows]
        labels: list[str] | None = [row.get("label") or "" for row in rows]
    else:
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        labels = None
    if limit is not None:
        files, labels = files[:limit], (labels[:limit] if labels is not None else None)
    if not files:
        raise CxrsynthError(f"no synthetic images in {folder}", "run `cxrsynth sample --run RUN` or pass --samples DIR")
    images = [read_sample_image(path) for path in files]
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise CxrsynthError(f"samples in {folder} have different sizes {sorted(shapes)}", "regenerate them in one run")
    shape = shapes.pop()
    if shape != (size, size):
        warnings.append(f"synthetic images are {shape[0]}×{shape[1]}, resized (Lanczos) to the data's {size}×{size}")
        images = [_resize(image, size) for image in images]
    if labels is not None and not all(text.strip() for text in labels):
        labels = None  # unconditional samples: the manifest's label column is empty
    return SyntheticSet(images=np.stack(images), labels=labels, folder=folder, files=tuple(files))


def read_sample_settings(path: Path) -> dict:
    """The ``sampling.json`` of a samples folder.

    Raises:
        CxrsynthError: when it is unreadable, not UTF-8 JSON, or not an object.
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        record, problem = None, f"{type(exc).__name__}: {exc}"
    else:
        problem = "not a JSON object"
    if not isinstance(record, dict):
        raise CxrsynthError(
            f"{path} is corrupt ({problem}), so the settings of the samples beside it are unknown",
            f"delete {path.parent} (or sample into another --out) and run `cxrsynth sample` again",
        )
    return record


def count_samples(folder: Path) -> int:
    """Samples present: manifest rows, or PNG files when a folder has no manifest.

    Raises:
        CxrsynthError: for an unreadable manifest (as :func:`manifest_rows`).
    """
    rows = manifest_rows(folder)
    if rows is not None:
        return len(rows)
    return len(list(folder.glob("*.png"))) if folder.is_dir() else 0


# ---------------------------------------------------------------------------------------------
# The lock: one writer per run folder
# ---------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


_UNREADABLE_LOCK_GRACE_S = 10.0
"""An empty or torn lock younger than this may be one another process is still writing: not stale yet."""


def _lock_is_stale(holder: dict[str, Any] | None, path: Path) -> bool:
    """A lock whose holder is known to be gone: this host and no process with its pid, or unreadable for a while."""
    if holder is None:  # a crash between create and write leaves empty or torn JSON
        try:
            return time.time() - path.stat().st_mtime > _UNREADABLE_LOCK_GRACE_S
        except FileNotFoundError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # another machine on a shared disk: its pid says nothing here
    pid = holder.get("pid")
    return not isinstance(pid, int) or not _pid_alive(pid)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Hold ``FOLDER/.cxrsynth.lock`` (``O_EXCL``; pid, host, command) while the body runs.

    A lock left by a process that died (same host, pid gone) is taken over; a live holder is
    refused with its pid, so two commands never write one run folder at once. A lock this process
    already holds is re-entered (``evaluate`` generating missing samples takes the sample stage's
    lock inside its own). A folder this call created is removed again when the body left it empty
    (a refused new run leaves nothing).

    Args:
        folder: the folder to lock (created if missing).
        command: what holds it, e.g. ``"cxrsynth train"`` (recorded in the lock).

    Yields:
        The lock file's path.

    Raises:
        CxrsynthError: when another live process holds the lock.
    """
    target = Path(folder)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    path = target / LOCK_FILE
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    nested = False
    for _ in range(3):  # a stale lock removed by another process between our tries: try again
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == record["host"]:
                nested = True  # held by this process further up the stack: that holder releases it
                break
            if not _lock_is_stale(holder, path):
                holder = holder or {}
                raise CxrsynthError(
                    f"{target} is in use by {holder.get('command', 'another process')} (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('started')}); two processes writing one run folder "
                    "would corrupt its checkpoints and log",
                    f"wait for that process to finish (or stop it); if it is gone, delete {path}",
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    target.rmdir()
            raise
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        break
    else:
        raise CxrsynthError(f"could not lock {target} ({path} keeps reappearing)", f"delete {path} and retry")
    if nested:
        yield path
        return
    try:
        yield path
    finally:
        if _read_lock(path) == record:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if created:
            with contextlib.suppress(OSError):
                target.rmdir()  # only when empty


def run_lock(run_dir: str | os.PathLike[str], command: str) -> contextlib.AbstractContextManager:
    """The run folder's lock (:func:`folder_lock`), taken by a launcher's global rank 0 only.

    Under ``accelerate launch`` every process works on the same run: only rank 0 (``RANK``) holds
    the lock, and when it refuses, the launcher stops the other processes.

    Args:
        run_dir: the run folder.
        command: the command taking it, e.g. ``"cxrsynth sample"`` (named to a refused second one).

    Raises:
        CxrsynthError: when another live process holds the run folder.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return folder_lock(run_dir, command)


Stage = TypeVar("Stage", bound=Callable[..., Any])


def locks_run(command: str) -> Callable[[Stage], Stage]:
    """Decorate a stage function whose first parameter is the run folder: it runs under :func:`run_lock`.

    A run folder that does not exist is not created by the lock: the function runs unlocked and
    reports the missing folder itself.

    Args:
        command: the command named in the lock, e.g. ``"cxrsynth evaluate"``.

    Returns:
        The decorator.
    """

    def decorate(function: Stage) -> Stage:
        first = next(iter(inspect.signature(function).parameters))

        @functools.wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            run_dir = args[0] if args else kwargs.get(first)
            if run_dir is None or not Path(run_dir).is_dir():
                return function(*args, **kwargs)
            with run_lock(run_dir, command):
                return function(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
