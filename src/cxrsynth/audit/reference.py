"""Reference models for LiRA and RMIA (``cxrsynth audit --reference-models K``).

A reference-model attack asks how the *audited* model's statistic on an image compares with the
same statistic on models that did, and did not, train on that image's patient. This module trains
those models, records which patients each one saw, and scores images on them.

Design
------
* **Pool**: the patients of the ``member`` and ``holdout`` splits (the audited patients all come
  from it). ``test`` patients are in no reference model: they are RMIA's population samples z.
* **Halves by patient, paired**: model 2j trains on a seeded random half of the pool's patients
  (all images of a patient are in, or all out); model 2j+1 trains on the complementary half. With
  K even every pool patient is "in" for exactly K/2 models and "out" for K/2; with K odd the last
  model has no partner. The halves of pair j depend only on (seed, j, pool), so a later audit with
  a larger K reuses the first models.
* **Data view, no image copy**: each model k gets ``RUN/audit/reference/data-<k>/``, a
  prepared-data folder whose ``images.npy`` is a hard link (or, across file systems, a symbolic
  link) to the run's images, whose ``index.csv`` is the run's with the split column relabelled —
  the half → ``member``, the rest of the pool → ``holdout``, ``test`` unchanged — and whose
  ``meta.json`` is the run's plus a ``reference_view`` entry. :func:`cxrsynth.train.train` reads it
  like any prepared folder, so the in/out mask of a model is exactly the ``member`` split it
  trained on (:meth:`ReferenceModels.trained_patients` reads it back from the view).
* **Runs**: model k is a normal run folder ``RUN/audit/reference/ref-<k>/`` trained by
  ``train(config, folder, resume=True)`` — an interrupted audit resumes it from its newest
  checkpoint. The configuration is the run's own ``config.yaml`` (preset, recipe, batch, image size,
  conditioning, learning-rate schedule) with: ``data`` = the view, ``max_steps`` = ``--reference-steps``
  (default: the run's own total steps), ``seed`` derived from the audit seed and k, gradient
  accumulation scaled so the global batch equals the run's when the process counts differ, no
  progress grids, no tracker, one checkpoint kept, and **DP and canaries dropped** (a reference
  model estimates how the *recipe* fits an image in or out of training; DP-SGD reference models
  would cost the DP slowdown K times, and the canaries belong to the one-run audit). Checkpoints are
  deleted once a model's ``pipeline/`` is written (reuse needs only the pipeline).
* **Manifest** ``RUN/audit/reference/reference.json`` (private: it lists patient ids; it stays in
  the run folder): ``format``, ``seed``, ``count``, ``steps``, ``pool_sha256``, ``settings`` (the
  reference TrainConfig less data and seed), ``dp_dropped``, ``models`` (per model: ``index``,
  ``seed``, ``in_patients`` (ids), ``in_patients_sha256``, ``n_in_patients``, ``n_in_images``,
  ``steps``, ``train_seconds``, ``resumed``). Each model also keeps its own record,
  ``ref-<k>/reference_model.json``, written when it finishes, so processes training different
  models never write the same file. A later audit reuses every finished model whose record matches
  (same seed, steps, settings and pool); a mismatch is refused with the fix (delete the folder, or
  give the same ``--reference-steps``/``--seed``).
* **Several processes**: under ``accelerate launch`` (``WORLD_SIZE`` > 1) every process trains
  each missing model together (``train`` is data-parallel), so K models take K data-parallel runs.
  To train models *concurrently* instead (one per GPU), run ``python -m cxrsynth.audit.reference
  RUN --count K --only k1,k2,…`` once per device (e.g. ``CUDA_VISIBLE_DEVICES=i``); the audit then
  finds them finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cxrsynth.data.prepared import INDEX_FILE, IMAGES_FILE, META_FILE, PreparedData, load_prepared
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_write_json, atomic_write_text
from cxrsynth.runfolder import load_run_data

REFERENCE_FOLDER = "reference"
"""Folder of the reference models under ``RUN/audit/`` (kept across audits)."""
MANIFEST_FILE = "reference.json"
MODEL_RECORD_FILE = "reference_model.json"
MANIFEST_FORMAT = 1
POOL_SPLITS: tuple[str, ...] = ("member", "holdout")
MIN_REFERENCE_MODELS = 4
"""Fewest models with which every pool patient is in ≥ 2 and out of ≥ 2 of them (a variance per side)."""
DEFAULT_POPULATION = 500
"""Most ``test`` images RMIA compares against (its population samples z)."""
HALVES_STREAM = 0x5EF
SEED_STREAM = 0x5EE

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    """Default log: discard."""


# ---------------------------------------------------------------------------------------------
# Halves
# ---------------------------------------------------------------------------------------------


def pool_patients(data: PreparedData) -> list[str]:
    """Sorted patient ids of the ``member`` and ``holdout`` splits (the pool the halves are drawn from)."""
    pool = data.index.loc[data.index["split"].isin(POOL_SPLITS), "patient_id"].astype(str)
    return sorted(set(pool))


def pool_fingerprint(data: PreparedData) -> str:
    """SHA-256 over the pool's (patient id, image id) pairs in sorted order: changes when the pool does."""
    pool = data.index.loc[data.index["split"].isin(POOL_SPLITS), ["patient_id", "image_id"]].astype(str)
    digest = hashlib.sha256()
    for patient, image in sorted(pool.itertuples(index=False)):
        digest.update(f"{patient}\t{image}\n".encode())
    return digest.hexdigest()


def reference_halves(patients: Sequence[str], count: int, seed: int) -> np.ndarray:
    """Which pool patients each reference model trains on: a bool array ``count`` × len(patients).

    Model 2j takes a seeded random half of the patients (⌊P/2⌋ or ⌈P/2⌉, alternating by pair so
    that an odd pool stays balanced) and model 2j+1 the complement. Row k depends only on
    (seed, k // 2, patients), not on ``count``.

    Raises:
        CxrsynthError: when ``count`` < 1 or the pool has fewer than 2 patients.
    """
    if count < 1:
        raise CxrsynthError(f"--reference-models must be >= 1, got {count}")
    if len(patients) < 2:
        raise CxrsynthError(f"the member+holdout pool has {len(patients)} patient(s); reference models need 2 or more",
                            "prepare the data with more patients")
    size = len(patients)
    halves = np.zeros((count, size), dtype=bool)
    for pair in range((count + 1) // 2):
        order = np.random.default_rng([int(seed), HALVES_STREAM, pair]).permutation(size)
        taken = size // 2 + (size % 2) * (pair % 2)
        first = np.zeros(size, dtype=bool)
        first[order[:taken]] = True
        halves[2 * pair] = first
        if 2 * pair + 1 < count:
            halves[2 * pair + 1] = ~first
    return halves


def reference_seed(seed: int, index: int) -> int:
    """Training seed of reference model ``index`` (32-bit, derived from the audit seed)."""
    return int(np.random.SeedSequence([int(seed), SEED_STREAM, int(index)]).generate_state(1)[0])


def patients_sha256(patients: Sequence[str]) -> str:
    """SHA-256 of a sorted patient list (one id per line)."""
    return hashlib.sha256("".join(f"{p}\n" for p in sorted(patients)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Data views and configurations
# ---------------------------------------------------------------------------------------------


def _link_images(source: Path, target: Path) -> str:
    """Hard-link ``source`` at ``target`` (symbolic link across file systems); returns how."""
    if target.exists() and os.path.samefile(source, target):
        return "existing"
    if target.exists() or target.is_symlink():  # stale (the run's images were prepared again) or dangling
        target.unlink()
    try:
        os.link(source, target)
        return "hard link"
    except FileExistsError:  # another process linked it first
        return "existing"
    except OSError:
        os.symlink(source.resolve(), target)
        return "symbolic link"


def write_data_view(data: PreparedData, in_patients: set[str], folder: Path, index: int) -> Path:
    """Write the prepared-data view of reference model ``index``: its half → ``member``.

    ``images.npy`` is linked, not copied; ``index.csv`` relabels the pool (half → member, rest →
    holdout), ``test`` rows unchanged; ``meta.json`` gains ``reference_view``. Writes are atomic, so
    several processes may write the same view.

    Returns:
        ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _link_images(data.root / IMAGES_FILE, folder / IMAGES_FILE)
    index_frame = data.index.copy()
    in_pool = index_frame["split"].isin(POOL_SPLITS)
    chosen = index_frame["patient_id"].astype(str).isin(in_patients)
    index_frame.loc[in_pool & chosen, "split"] = "member"
    index_frame.loc[in_pool & ~chosen, "split"] = "holdout"
    atomic_write_text(folder / INDEX_FILE, index_frame.to_csv(index=False))
    meta = dict(data.meta)
    meta["counts"] = {split: int((index_frame["split"] == split).sum()) for split in ("member", "holdout", "test")}
    meta["reference_view"] = {"of": str(data.root), "model": int(index)}
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2))
    return folder


DP_FIELDS: tuple[str, ...] = ("dp", "epsilon", "delta", "noise_multiplicity", "privacy_unit", "accountant",
                              "logical_batch_size", "physical_batch_size")


def reference_config(run_dir: Path, data_view: Path, steps: int | None, seed: int, processes: int):
    """The TrainConfig of a reference model: the run's own, adapted (see the module docstring).

    Returns:
        ``(config, notes)``: notes say what differs from the run (DP dropped, batch mismatch).

    Raises:
        CxrsynthError: when ``RUN/config.yaml`` is missing or invalid.
    """
    from cxrsynth.config import TrainConfig, load_run_config

    base, facts = load_run_config(run_dir)
    defaults = TrainConfig(data="")
    notes: list[str] = []
    changes: dict = {name: getattr(defaults, name) for name in DP_FIELDS}
    if base.dp:
        notes.append("the run is differentially private; its reference models are trained without DP-SGD "
                     "(same preset, recipe and steps), so they model the recipe, not the DP noise")
    if base.canaries:
        notes.append("the run's canaries are not in the reference models")
    total = int(steps) if steps is not None else int(facts.total_steps)
    grad_accum = base.grad_accum
    global_batch = int(facts.global_batch_size)
    if global_batch % (base.batch_size * processes) == 0:
        grad_accum = global_batch // (base.batch_size * processes)
    else:
        notes.append(f"the reference models' global batch ({base.batch_size * base.grad_accum * processes}) differs "
                     f"from the run's ({global_batch}): it is not a multiple of batch × processes")
    changes.update(data=str(data_view), max_steps=total, epochs=None, seed=int(seed), canaries=0, progress_every=0,
                   log_with=None, keep_checkpoints=1, checkpoint_every=min(base.checkpoint_every, total),
                   grad_accum=grad_accum)
    return dataclasses.replace(base, **changes), notes


SPEED_AND_LOGGING_SETTINGS: tuple[str, ...] = (
    "threads", "progress_every", "progress_sampler", "progress_steps", "progress_images", "log_every", "log_with",
    "checkpoint_every", "keep_checkpoints",
)
"""Settings that change how a reference model is trained (speed, logs, checkpoints), not its weights'
recipe: a cached model trained with other values is reused."""


def _comparable(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if key not in SPEED_AND_LOGGING_SETTINGS}


def _settings_of(config) -> dict:
    """The reference configuration as recorded in the manifest (without ``data`` and ``seed``)."""
    from cxrsynth.config import config_to_dict

    settings = config_to_dict(config)
    for name in ("data", "seed"):
        settings.pop(name)
    return settings


# ---------------------------------------------------------------------------------------------
# Training and reuse
# ---------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    """(rank, processes) of an ``accelerate launch``/``torchrun`` start (``(0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _read_record(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CxrsynthError(f"{path} is not valid JSON ({exc})", f"delete {path.parent} to train that reference model again") from None


def _check_record(record: dict, expected: dict, path: Path) -> None:
    """Refuse a finished model trained differently from what this audit asks for."""
    for key in ("seed", "steps", "pool_sha256", "in_patients_sha256", "settings"):
        recorded, wanted = record.get(key), expected[key]
        if key == "settings" and isinstance(recorded, dict):
            recorded, wanted = _comparable(recorded), _comparable(wanted)
        if recorded != wanted:
            raise CxrsynthError(
                f"{path}: this reference model was trained with another {key} than this audit asks for "
                f"(another --seed, --reference-steps, training recipe or data)",
                f"give the same --seed and --reference-steps as before, or delete {path.parent.parent} to train "
                "the reference models again",
            )


def train_reference_model(run_dir: Path, data: PreparedData, index: int, count: int, steps: int | None, seed: int,
                          log: Log = _quiet) -> dict:
    """Train (or resume, or reuse) reference model ``index`` of ``count``; returns its manifest record.

    Raises:
        CxrsynthError: for an unusable run folder, or a finished model trained with other settings.
    """
    from cxrsynth.train import train
    from cxrsynth.train.checkpoint import CHECKPOINTS_DIR
    from cxrsynth.train.export import PIPELINE_DIR

    root = Path(run_dir) / "audit" / REFERENCE_FOLDER
    patients = pool_patients(data)
    half = reference_halves(patients, count, seed)[index]
    in_patients = [p for p, chosen in zip(patients, half) if chosen]
    rank, processes = _world()
    model_seed = reference_seed(seed, index)
    view = write_data_view(data, set(in_patients), root / f"data-{index}", index)
    config, notes = reference_config(Path(run_dir), view, steps, model_seed, processes)
    folder = root / f"ref-{index}"
    n_in_images = int(data.index["patient_id"].astype(str).isin(set(in_patients)).sum())
    expected = {
        "index": index, "seed": model_seed, "steps": config.max_steps, "pool_sha256": pool_fingerprint(data),
        "in_patients_sha256": patients_sha256(in_patients), "settings": _settings_of(config),
        "n_in_patients": len(in_patients), "n_in_images": n_in_images, "notes": notes,
    }
    record_path = folder / MODEL_RECORD_FILE
    record = _read_record(record_path)
    if record is not None and (folder / PIPELINE_DIR).is_dir():
        _check_record(record, expected, record_path)
        return {**record, "reused": True}
    resumed = (folder / CHECKPOINTS_DIR).is_dir()
    log(f"reference model {index + 1}/{count}: {len(in_patients)} patients ({n_in_images} images), "
        f"{config.max_steps} steps{' (resuming)' if resumed else ''}")
    started = time.perf_counter()
    train(config, folder, resume=True)
    seconds = time.perf_counter() - started
    record = {**expected, "in_patients": in_patients, "train_seconds": seconds, "resumed": resumed, "reused": False}
    if rank == 0:
        atomic_write_json(record_path, record)
        shutil.rmtree(folder / CHECKPOINTS_DIR, ignore_errors=True)  # reuse needs only pipeline/
    return record


def prepare_reference_models(run_dir: Path, data: PreparedData, count: int, steps: int | None, seed: int,
                             device, log: Log = _quiet, population: int = DEFAULT_POPULATION) -> "ReferenceModels":
    """K reference models of the run, trained now or reused from ``RUN/audit/reference/``.

    Args:
        run_dir: the audited run (its ``config.yaml`` gives the recipe).
        data: the run's prepared data (the pool is its member + holdout patients).
        count: K (at least :data:`MIN_REFERENCE_MODELS`).
        steps: optimizer steps per model; None: the run's own total steps.
        seed: the audit seed (halves and model seeds derive from it).
        device: where the models are loaded for scoring.
        log: receives one line per model.
        population: most ``test`` images used as RMIA's population samples.

    Returns:
        The :class:`ReferenceModels` (models are loaded one at a time when scoring).

    Raises:
        CxrsynthError: for K below the minimum, a pool too small, or cached models trained otherwise.
    """
    if count < MIN_REFERENCE_MODELS:
        raise CxrsynthError(
            f"--reference-models {count} is too few: LiRA and RMIA fit a Gaussian per image to the models that "
            f"trained on it and to those that did not, which needs at least {MIN_REFERENCE_MODELS} models",
            f"use --reference-models {MIN_REFERENCE_MODELS} or more (Carlini et al. use 16 to 256; even K keeps every "
            "patient in exactly half of them)",
        )
    run_dir = Path(run_dir)
    records = [train_reference_model(run_dir, data, k, count, steps, seed, log) for k in range(count)]
    patients = pool_patients(data)
    root = run_dir / "audit" / REFERENCE_FOLDER
    if _world()[0] == 0:
        manifest = {
            "format": MANIFEST_FORMAT, "seed": int(seed), "count": int(count), "steps": records[0]["steps"],
            "pool_sha256": records[0]["pool_sha256"], "settings": records[0]["settings"],
            "dp_dropped": _run_is_dp(run_dir),
            "models": records,
        }
        atomic_write_json(root / MANIFEST_FILE, manifest)
    test_rows = data.rows("test")
    if len(test_rows) > population:
        test_rows = np.sort(np.random.default_rng([int(seed), 0x20]).choice(test_rows, population, replace=False))
    return ReferenceModels(
        run_dir=run_dir, data=data, folders=[root / f"ref-{k}" for k in range(count)], patients=np.array(patients),
        membership=reference_halves(patients, count, seed), records=records, device=device,
        population_rows=np.asarray(test_rows, dtype=np.int64),
    )


def _run_is_dp(run_dir: Path) -> bool:
    from cxrsynth.config import load_run_config

    return bool(load_run_config(run_dir)[0].dp)


# ---------------------------------------------------------------------------------------------
# The models as attacks use them
# ---------------------------------------------------------------------------------------------


@dataclass
class ReferenceStatistics:
    """Per-image losses of the reference models, shared by LiRA and RMIA within one audit.

    Attributes:
        audited: K × N losses of the audited images.
        population: K × Z losses of the population images (RMIA's z; Z may be 0).
        image_forwards: UNet forwards made over the K models (audited + population).
    """

    audited: np.ndarray
    population: np.ndarray
    image_forwards: int


@dataclass
class ReferenceModels:
    """K trained reference models and the patients each one trained on.

    Attributes:
        run_dir: the audited run.
        data: its prepared data.
        folders: run folder of each model (``ref-<k>``).
        patients: sorted pool patient ids (columns of ``membership``).
        membership: K × P bool, True where model k trained on pool patient p.
        records: per-model manifest records (seed, steps, train seconds, …).
        device: where models are loaded for scoring.
        population_rows: ``test`` rows used as RMIA's population samples (in no model).
    """

    run_dir: Path
    data: PreparedData
    folders: list[Path]
    patients: np.ndarray
    membership: np.ndarray
    records: list[dict]
    device: object = "cpu"
    population_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def count(self) -> int:
        """K, the number of reference models."""
        return len(self.folders)

    @property
    def steps(self) -> int:
        """Optimizer steps of each model."""
        return int(self.records[0]["steps"])

    @property
    def train_seconds(self) -> float:
        """Wall-clock seconds spent training the models (when they were trained, not reused)."""
        return float(sum(record["train_seconds"] for record in self.records))

    def in_mask(self, patient_ids: Sequence[str]) -> np.ndarray:
        """K × N bool: True where model k trained on the patient of image n (patients outside the pool: False)."""
        position = {str(p): i for i, p in enumerate(self.patients)}
        columns = np.array([position.get(str(p), -1) for p in patient_ids], dtype=np.int64)
        mask = np.zeros((self.count, len(columns)), dtype=bool)
        known = columns >= 0
        mask[:, known] = self.membership[:, columns[known]]
        return mask

    def trained_patients(self, index: int) -> set[str]:
        """Patients of the ``member`` split model ``index`` really trained on, read back from its data view."""
        from cxrsynth.config import load_run_config

        view = load_prepared(load_run_config(self.folders[index])[0].data)
        return set(view.index.loc[view.index["split"] == "member", "patient_id"].astype(str))

    def report(self) -> dict:
        """audit.json ``reference_models``: counts and cost, no patient ids.

        Keys: ``count``, ``steps``, ``train_seconds`` (sum over the models, as measured when each was
        trained — also for models reused from an earlier audit, listed in ``reused``),
        ``train_seconds_per_model``, ``n_pool_patients``, ``n_population`` (RMIA's z), ``design``,
        ``resumed`` (models continued from a checkpoint), ``reused``, ``folder``, ``notes``.
        """
        notes = sorted({note for record in self.records for note in record.get("notes", [])})
        return {"count": self.count, "steps": self.steps, "train_seconds": self.train_seconds,
                "train_seconds_per_model": self.train_seconds / self.count,
                "n_pool_patients": int(len(self.patients)), "n_population": int(len(self.population_rows)),
                "design": "paired complementary patient halves of member+holdout",
                "resumed": [record["index"] for record in self.records if record.get("resumed")],
                "reused": [record["index"] for record in self.records if record.get("reused")],
                "folder": str(self.folders[0].parent), "notes": notes}

    def load(self, index: int):
        """The :class:`cxrsynth.sample.SamplingModel` of model ``index`` on :attr:`device`."""
        from cxrsynth.sample import load_sampling_model

        return load_sampling_model(self.folders[index], self.device)

    def target_vocabulary(self):
        """The audited run's label vocabulary (None for an unconditional run)."""
        from cxrsynth.model.conditioning import LabelVocabulary
        from cxrsynth.train.export import PIPELINE_DIR

        if "vocabulary" not in self._cache:
            self._cache["vocabulary"] = LabelVocabulary.load(self.run_dir / PIPELINE_DIR)
        return self._cache["vocabulary"]

    def statistics(self, context) -> ReferenceStatistics:
        """Losses of every reference model on the audited and population images (the ``loss`` attack's
        statistic, same noise draws), computed once per audit and cached.

        Conditional models see each image's label set in their own vocabulary (null class for all
        when some label set is unknown to them), as the target does.
        """
        from cxrsynth.audit.attacks.loss import loss_scores
        from cxrsynth.audit.whitebox import WhiteBoxModel

        key = self._statistics_key(context)
        if key in self._cache:
            return self._cache[key]
        population_images = self.population_images()
        audited = np.zeros((self.count, len(context.images)))
        population = np.zeros((self.count, len(population_images)))
        forwards = 0
        for k in range(self.count):
            loaded = self.load(k)
            labels = translate_labels(context.model.class_labels, self.target_vocabulary(), loaded.vocabulary)
            audited_model = WhiteBoxModel(loaded.unet, loaded.scheduler, labels, seed=context.model.seed)
            audited[k] = loss_scores(dataclasses.replace(context, model=audited_model))
            forwards += audited_model.image_forwards
            if len(population_images):
                population_model = self.population_model(loaded.unet, loaded.scheduler, loaded.vocabulary,
                                                         context.model.seed)
                population[k] = loss_scores(dataclasses.replace(context, images=population_images,
                                                                model=population_model))
                forwards += population_model.image_forwards
            del loaded
        self._cache[key] = ReferenceStatistics(audited, population, forwards)
        return self._cache[key]

    @staticmethod
    def _statistics_key(context) -> tuple:
        settings = context.settings
        return ("statistics", id(context.images), len(context.images), settings.fixed_timestep,
                settings.noise_draws, settings.seed)

    def has_statistics(self, context) -> bool:
        """Whether :meth:`statistics` of this context were already computed (shared by several attacks)."""
        return self._statistics_key(context) in self._cache

    def population_images(self) -> np.ndarray:
        """The population images z (uint8 Z×S×S, ``test`` rows)."""
        return np.asarray(self.data.images[self.population_rows])

    def population_model(self, unet, scheduler, vocabulary, seed: int):
        """A WhiteBoxModel of a UNet for the population images, each with its own label set when the
        vocabulary knows them all (else the null class), as the audit conditions the audited images."""
        from types import SimpleNamespace

        from cxrsynth.audit.runner import conditioning_labels
        from cxrsynth.audit.whitebox import WhiteBoxModel

        labels, _ = conditioning_labels(SimpleNamespace(vocabulary=vocabulary), self.data, self.population_rows)
        return WhiteBoxModel(unet, scheduler, labels, seed=seed)

    def target_population_losses(self, context) -> np.ndarray:
        """The target model's losses on the population images; its forwards are added to
        ``context.model``'s counter (they are target NFE of the attack)."""
        from cxrsynth.audit.attacks.loss import loss_scores

        population_images = self.population_images()
        if not len(population_images):
            return np.zeros(0)
        model = self.population_model(context.model.unet, context.model.scheduler, self.target_vocabulary(),
                                      context.model.seed)
        losses = loss_scores(dataclasses.replace(context, images=population_images, model=model))
        context.model.image_forwards += model.image_forwards
        return losses


def translate_labels(class_labels, source_vocabulary, target_vocabulary):
    """Class ids of one conditional model's vocabulary re-encoded in another's.

    Returns:
        None when either model is unconditional; the target's ids of the same label sets; or its null
        class for every image when the source used the null class or some label set is unknown.
    """
    import torch

    if target_vocabulary is None or class_labels is None:
        return None
    null = torch.full((len(class_labels),), target_vocabulary.null_class, dtype=torch.long)
    if source_vocabulary is None:
        return null
    decoded = source_vocabulary.decode(class_labels.tolist())
    if any(label == "" for label in decoded):
        return null
    try:
        return target_vocabulary.encode_training_labels(decoded)
    except CxrsynthError:
        return null


# ---------------------------------------------------------------------------------------------
# Command line: train some of the models in this process (one call per GPU for concurrency)
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cxrsynth.audit.reference RUN --count K [--only 0,2] [--steps S] [--seed N]``."""
    parser = argparse.ArgumentParser(description="Train reference models of a run for cxrsynth audit's LiRA/RMIA.")
    parser.add_argument("run", type=Path)
    parser.add_argument("--count", type=int, required=True, help="K, as --reference-models")
    parser.add_argument("--only", default=None, help="comma-separated model indices to train (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="as --reference-steps (default: the run's own)")
    parser.add_argument("--seed", type=int, default=0, help="the audit's --seed")
    parser.add_argument("--data", type=Path, default=None, help="prepared data (default: the run's)")
    args = parser.parse_args(argv)
    data = load_run_data(args.run, args.data)
    indices = range(args.count) if args.only is None else [int(i) for i in args.only.split(",")]
    for index in indices:
        if not 0 <= index < args.count:
            raise SystemExit(f"--only {index} is outside 0..{args.count - 1}")
        train_reference_model(args.run, data, index, args.count, args.steps, args.seed, print)


if __name__ == "__main__":
    main()
