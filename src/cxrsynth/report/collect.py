"""Gather everything a run folder holds into one typed structure, marking what has not run.

A run is reported whatever stage it reached: each stage (:data:`STAGES`) gets a
:class:`StageStatus` that says what was found, or that it was not run and which command runs it.
Unreadable files are not fatal either: they are recorded in :attr:`RunContents.problems` and the
stage is shown as not run, so a report is always produced for an existing run folder.
"""

from __future__ import annotations

import csv
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrsynth.config import load_run_config
from cxrsynth.data.info import summarize_prepared
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError
from cxrsynth.report import coverage
from cxrsynth.runfolder import (AUDIT_FOLDER, CONFIG_FILE, EVAL_FOLDER, PIPELINE_FOLDER, PRIVACY_FILE, SAMPLE_MANIFEST,
                                SAMPLE_SETTINGS, audit_path, fidelity_path, read_json_file, run_data_path, samples_folder)

STAGES: tuple[str, ...] = ("data", "train", "sample", "evaluate", "audit")
"""Pipeline stages whose outputs a report shows, in order."""

PIPELINE_INDEX = Path(PIPELINE_FOLDER) / "model_index.json"
PROGRESS_FOLDER = "progress"

RUN_FIGURES: dict[str, Path] = {
    "pixel_stats": Path(EVAL_FOLDER) / "pixel_stats.png",
    "domain_features": Path(EVAL_FOLDER) / "domain_features.png",
    "utility_auroc": Path(EVAL_FOLDER) / "utility_auroc.png",
    "roc": Path(AUDIT_FOLDER) / "roc.png",
    "memorization": Path(AUDIT_FOLDER) / "memorization.png",
}
"""Figures the evaluate and audit stages write, by the name the report uses."""


@dataclass(frozen=True)
class StageStatus:
    """Whether one stage's output is in the run folder.

    Attributes:
        name: stage name (one of :data:`STAGES`).
        done: True when its output was found and read.
        summary: what was found, or why it counts as not run.
        command: the command that runs (or finishes) the stage for this run.
    """

    name: str
    done: bool
    summary: str
    command: str


@dataclass(frozen=True)
class SamplesInfo:
    """The run's synthetic images (not loaded; :mod:`cxrsynth.report.figures` reads a few).

    Attributes:
        folder: the samples folder.
        count: images listed in its manifest (or image files when it has none).
        settings: its ``sampling.json`` (sampler, steps, seed, labels, guidance), or None.
    """

    folder: Path
    count: int
    settings: dict | None


@dataclass
class RunContents:
    """Everything the report shows about one run.

    Attributes:
        run: the run folder.
        config: ``config.yaml``'s training settings (:class:`cxrsynth.config.TrainConfig`), or None.
        facts: ``config.yaml``'s resolved facts (:class:`cxrsynth.config.RunFacts`), or None.
        data: the prepared data (:class:`cxrsynth.data.prepared.PreparedData`), or None when not found.
        data_summary: :func:`cxrsynth.data.info.summarize_prepared` of it, or None.
        train_log: ``train_log.jsonl`` records (empty when none).
        has_pipeline: the final model (``pipeline/``) exists.
        privacy: ``privacy.json`` (DP runs only), or None.
        samples: the synthetic images, or None when there are none.
        fidelity: ``eval/fidelity.json``, or None.
        audit: ``audit/audit.json``, or None.
        figures: PNG files already in the run folder, by name (keys of :data:`RUN_FIGURES`, and
            ``progress`` for the last training progress grid).
        stages: status of every stage, by name, in :data:`STAGES` order.
        problems: files that exist but could not be read, with the reason.
    """

    run: Path
    config: Any = None
    facts: Any = None
    data: Any = None
    data_summary: dict | None = None
    train_log: list[dict] = field(default_factory=list)
    has_pipeline: bool = False
    privacy: dict | None = None
    samples: SamplesInfo | None = None
    fidelity: dict | None = None
    audit: dict | None = None
    figures: dict[str, Path] = field(default_factory=dict)
    stages: dict[str, StageStatus] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def trained_with_dp(self) -> bool:
        """True when the run has a ``privacy.json`` (written only by differentially private training)."""
        return self.privacy is not None

    @property
    def conditional(self) -> bool | None:
        """Whether the model is label-conditional (None when the config is unknown)."""
        return None if self.config is None else bool(self.config.conditional)

    def done(self, stage: str) -> bool:
        """True when ``stage`` has run (see :class:`StageStatus`)."""
        return self.stages[stage].done


def quoted(path: Path | str) -> str:
    """``path`` as one shell word, for commands shown to the user."""
    return shlex.quote(str(path))


def training_seconds(records: list[dict], images_per_step: int) -> float | None:
    """Training time implied by ``train_log.jsonl``: Σ images per record / img_per_s.

    The log records throughput, not wall-clock time, so this excludes start-up, checkpoints and
    progress grids (the loop excludes those from ``img_per_s``). None when the log is empty or
    lacks throughput.
    """
    total, previous_step = 0.0, 0
    for record in records:
        try:
            step, rate = int(record["step"]), float(record["img_per_s"])
        except (KeyError, TypeError, ValueError):
            return None
        if rate <= 0:
            return None
        total += max(step - previous_step, 0) * images_per_step / rate
        previous_step = step
    return total if records else None


def _count_samples(folder: Path, problems: list[str] | None = None) -> int:
    """Samples in ``folder``: manifest rows, or image files when there is no readable manifest (noted in ``problems``)."""
    manifest = folder / SAMPLE_MANIFEST
    if manifest.is_file():
        try:
            with manifest.open(newline="", encoding="utf-8") as handle:
                return sum(1 for _ in csv.DictReader(handle))
        except (UnicodeDecodeError, csv.Error) as exc:
            if problems is not None:
                problems.append(f"{manifest} is not a readable UTF-8 CSV ({exc}); samples counted from the image files")
    return len(list(folder.glob("*.png"))) + len(list(folder.glob("*.dcm")))


def _load_config(run: Path, contents: RunContents) -> None:
    if not (run / CONFIG_FILE).is_file():
        return
    try:
        contents.config, contents.facts = load_run_config(run)
    except CxrsynthError as exc:
        contents.problems.append(f"{run / CONFIG_FILE}: {exc.problem}")


def _load_data(run: Path, override: Path | None, contents: RunContents) -> StageStatus:
    command = f"cxrsynth report --run {quoted(run)} --data DATA   (DATA: a folder written by `cxrsynth data prepare`)"
    if override is not None:
        path = Path(override)
    elif contents.config is not None:
        path = run_data_path(run)
    else:
        return StageStatus("data", False, "unknown: the run has no readable config.yaml naming its data", command)
    try:
        contents.data = load_prepared(path)
    except CxrsynthError as exc:
        return StageStatus("data", False, f"not found: {exc.problem}", command)
    contents.data_summary = summarize_prepared(contents.data)
    splits = contents.data_summary["splits"]
    found = ", ".join(f"{split} {counts['images']} images / {counts['patients']} patients" for split, counts in splits.items())
    if (run / PRIVACY_FILE).is_file():
        found += f" (image counts {coverage.NOT_COVERED})"
    return StageStatus("data", True, f"{path}: {found}", command)


def _train_status(run: Path, contents: RunContents) -> StageStatus:
    resume = f"cxrsynth train --run {quoted(run)} --resume"
    if contents.has_pipeline:
        steps = contents.train_log[-1].get("step") if contents.train_log else None
        total = contents.facts.total_steps if contents.facts is not None else None
        told = f"{steps} of {total} steps" if steps is not None and total is not None else "finished"
        return StageStatus("train", True, f"{told}; final model in {run / 'pipeline'}", resume)
    if contents.config is not None:
        last = contents.train_log[-1].get("step") if contents.train_log else 0
        return StageStatus("train", False, f"not finished: {last} steps logged, no pipeline/ yet", resume)
    return StageStatus("train", False, "not run: no config.yaml and no pipeline/",
                       f"cxrsynth train --data DATA --run {quoted(run)} --preset small --max-steps 2000")


def _samples_status(run: Path, folder: Path, contents: RunContents) -> StageStatus:
    command = f"cxrsynth sample --run {quoted(run)} --num-images 1000 --sampler dpmsolver"
    count = _count_samples(folder, contents.problems) if folder.is_dir() else 0
    if count == 0:
        return StageStatus("sample", False, f"not run: no synthetic images in {folder}", command)
    settings = read_json_file(folder / SAMPLE_SETTINGS, contents.problems)
    contents.samples = SamplesInfo(folder=folder, count=count, settings=settings)
    how = f" ({settings['sampler']}, {settings['steps']} steps, seed {settings['seed']})" if settings else ""
    return StageStatus("sample", True, f"{count} images in {folder}{how}", command)


def _result_status(name: str, path: Path, report: dict | None, command: str) -> StageStatus:
    if report is None:
        return StageStatus(name, False, f"not run: no {path}", command)
    return StageStatus(name, True, f"results in {path}", command)


def _figures(run: Path) -> dict[str, Path]:
    figures = {name: run / relative for name, relative in RUN_FIGURES.items() if (run / relative).is_file()}
    grids = sorted((run / PROGRESS_FOLDER).glob("step_*.png")) if (run / PROGRESS_FOLDER).is_dir() else []
    if grids:
        figures["progress"] = grids[-1]
    return figures


def collect_run(run: str | Path, data: str | Path | None = None, samples: str | Path | None = None) -> RunContents:
    """Read a run folder: config, data counts, training log, DP accounting, samples, evaluation, audit.

    Args:
        run: the run folder.
        data: prepared-data folder overriding the one in ``RUN/config.yaml``.
        samples: samples folder (default ``RUN/samples``).

    Returns:
        The :class:`RunContents`, with a :class:`StageStatus` for every stage.

    Raises:
        CxrsynthError: when ``run`` does not exist or holds neither ``config.yaml`` nor ``pipeline/``.
    """
    from cxrsynth.train.run_log import read_train_log

    run = Path(run)
    if not run.is_dir() or not ((run / CONFIG_FILE).is_file() or (run / PIPELINE_INDEX).is_file()):
        raise CxrsynthError(
            f"{run} is not a run folder (no config.yaml and no pipeline/model_index.json)",
            "point --run to a folder written by `cxrsynth train`",
        )
    contents = RunContents(run=run)
    _load_config(run, contents)
    contents.train_log = read_train_log(run)
    contents.has_pipeline = (run / PIPELINE_INDEX).is_file()
    contents.privacy = read_json_file(run / PRIVACY_FILE, contents.problems)
    contents.fidelity = read_json_file(fidelity_path(run), contents.problems)
    contents.audit = read_json_file(audit_path(run), contents.problems)
    contents.figures = _figures(run)
    statuses = [
        _load_data(run, Path(data) if data is not None else None, contents),
        _train_status(run, contents),
        _samples_status(run, samples_folder(run, Path(samples) if samples is not None else None), contents),
        _result_status("evaluate", fidelity_path(run), contents.fidelity, f"cxrsynth evaluate --run {quoted(run)}"),
        _result_status("audit", audit_path(run), contents.audit, f"cxrsynth audit --run {quoted(run)}"),
    ]
    contents.stages = {status.name: status for status in statuses}
    return contents
