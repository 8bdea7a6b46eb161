"""A small chest X-ray classifier trained from scratch: the feature space of every download-free metric.

Evaluation needs a feature extractor that knows what chest radiographs look like but needs no
download. This module trains one on the real ``member`` images of the prepared data:

* **Architecture** (:class:`CompactCxrNet`): a VGG-style CNN — a stride-2 3×3 stem, then for each further
  width a stride-2 3×3 conv and a 3×3 conv, each followed by BatchNorm and ReLU — then global
  average pooling and one linear head. The pooled vector (``widths[-1]`` = 128 numbers) is the
  *penultimate feature* used by the Fréchet distance, k-NN precision/recall, the audit's
  nearest-neighbour search and the utility check. Images larger than ``MAX_INPUT_SIZE`` are
  downscaled (antialiased) first, so the cost stays bounded at 256².
* **Task** (:data:`TASKS`): ``findings`` — multi-label binary cross-entropy over the prepared data's
  finding names (``meta.json`` ``labels``). When the data has no finding labels at all (no names, or
  no positive label among the training images), the documented proxy ``rotation`` is used instead:
  predict which of 0/90/180/270° an image was rotated by (Gidaris et al., ICLR 2018). Solving it
  requires recognising chest anatomy and its orientation, so the features still describe
  radiographs; the choice is recorded in the saved config and in ``fidelity.json``.
* **Budget**: a fixed number of AdamW steps with a one-cycle learning rate (default 400 steps of
  64 images; ~0.1 s per step at 64² on 2 lightly loaded CPU cores, 0.35 s on one thread of a
  heavily shared machine — see ``bench/evaluate.py``), capped at 8 passes over the training images
  (at least 50 steps), with random shifts and brightness/contrast jitter: a network that memorises
  its training images gives them features unlike those of unseen images. The same budget is used
  for every classifier the utility check compares (TSTR and TRTR).
* **Determinism**: weights, batch order and rotations are all drawn from ``seed``; the global torch
  RNG is left untouched.
* **Saving**: ``model.safetensors`` (weights, no pickle) and ``classifier.json`` (the
  :class:`ClassifierConfig`, the training-data key and training statistics) in one folder, written
  atomically. :func:`domain_classifier_for_run` caches it in ``RUN/eval/domain_classifier/`` and
  reuses it while the data, seed and budget are unchanged — the audit and utility call it too.

Caveat for reuse: features of the classifier's own training images are in-sample. On 240 member
images with random labels (``tests.factories``), 100 steps without the cap and augmentation gave
FD(member, test) = 25.8 against FD(holdout, test) = 0.67; with them, 1.34 against 1.02. The gap is
small but not zero, so comparisons of
``member`` with unseen images in this feature space (the audit's nearest-neighbour attack) should
use a classifier trained on another split (``domain_classifier_for_run(..., split="test")``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from cxrsynth.data.dataset import to_model_range
from cxrsynth.data.prepared import INDEX_FILE, PreparedData
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_directory, atomic_write_json

TASKS: tuple[str, ...] = ("findings", "rotation")
"""``findings``: multi-label BCE over finding names; ``rotation``: 4-way proxy task for unlabelled data."""

ARCHITECTURE_VERSION = 1
"""Bumped whenever :class:`CompactCxrNet` changes, so cached classifiers are retrained."""

MAX_INPUT_SIZE = 128
"""Images larger than this are downscaled to it before the network (bounded cost at 256²)."""

DEFAULT_STEPS = 400
DEFAULT_BATCH_SIZE = 64
MAX_EPOCHS = 8
"""Training passes over the training images at most (see :func:`classifier_steps_for`)."""
MIN_STEPS = 50
DOMAIN_FOLDER = Path("eval") / "domain_classifier"
"""Where :func:`domain_classifier_for_run` caches the classifier, relative to the run folder."""

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "classifier.json"


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that defines a trained classifier; saved beside its weights.

    Attributes:
        image_size: side of the images it was trained on (inputs of another size are resized).
        task: one of :data:`TASKS`.
        label_names: finding names of the output units (``findings`` task), in order.
        widths: channels of the stem and of each downsampling stage.
        steps: optimizer steps.
        batch_size: images per step.
        learning_rate: peak AdamW learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        seed: seed of initialisation, batch order and rotations.
        architecture_version: :data:`ARCHITECTURE_VERSION` at training time.
    """

    image_size: int
    task: str = "findings"
    label_names: tuple[str, ...] = ()
    widths: tuple[int, ...] = (16, 32, 64, 128)
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    architecture_version: int = ARCHITECTURE_VERSION

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise CxrsynthError(f"unknown classifier task {self.task!r}", f"use one of {', '.join(TASKS)}")
        if self.task == "findings" and not self.label_names:
            raise CxrsynthError("a findings classifier needs at least one finding name")
        if self.steps < 1 or self.batch_size < 1:
            raise CxrsynthError(
                f"classifier steps ({self.steps}) and batch size ({self.batch_size}) must be >= 1",
                "pass a positive --classifier-steps",
            )

    @property
    def num_outputs(self) -> int:
        """Output units: one per finding, or 4 rotations."""
        return len(self.label_names) if self.task == "findings" else 4

    @property
    def input_size(self) -> int:
        """Side of the images the network actually sees."""
        return min(self.image_size, MAX_INPUT_SIZE)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        data = asdict(self)
        data["label_names"] = list(self.label_names)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassifierConfig":
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["label_names"] = tuple(values.get("label_names", ()))
        values["widths"] = tuple(values.get("widths", ()))
        return cls(**values)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CompactCxrNet(nn.Module):
    """The compact CNN (see the module docstring): ``features`` → pooled vector, ``forward`` → logits.

    Args:
        widths: channels of the stem and of each stride-2 stage.
        num_outputs: logits of the head.
    """

    def __init__(self, widths: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        # A stride-2 stem: full-resolution feature maps cost most of the time and add little here.
        layers: list[nn.Module] = [_conv_bn_relu(1, widths[0], stride=2)]
        for in_channels, out_channels in zip(widths[:-1], widths[1:]):
            layers += [_conv_bn_relu(in_channels, out_channels, 2), _conv_bn_relu(out_channels, out_channels, 1)]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_outputs)

    @property
    def feature_dim(self) -> int:
        """Width of the penultimate features."""
        return self.head.in_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B×feature_dim) of images B×1×S×S in [-1, 1]."""
        return self.trunk(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B×num_outputs)."""
        return self.head(self.features(images))


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise CxrsynthError(f"{what} must be uint8 N×S×S, got {array.dtype} {tuple(array.shape)}")
    if len(array) == 0:
        raise CxrsynthError(f"{what} is empty", "check the image folder or split")
    return array


def random_shift_and_exposure(
    images: torch.Tensor, rng: np.random.Generator, max_shift: float, gain: float, bias: float
) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` of its side (edge-replicated) and change its exposure.

    Args:
        images: float batch N×C×S×S.
        rng: the source of every random draw (offsets, then gains, then biases).
        max_shift: largest shift as a fraction of the side (at least one pixel).
        gain: contrast factor drawn from [1 − gain, 1 + gain].
        bias: brightness offset drawn from [−bias, bias].

    Returns:
        The augmented batch, same shape and device.
    """
    count, _, size, _ = images.shape
    pad = max(1, int(size * max_shift))
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = rng.integers(0, 2 * pad + 1, size=(count, 2))
    shifted = torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets)])
    gains = torch.from_numpy(rng.uniform(1 - gain, 1 + gain, size=(count, 1, 1, 1)).astype(np.float32)).to(images.device)
    biases = torch.from_numpy(rng.uniform(-bias, bias, size=(count, 1, 1, 1)).astype(np.float32)).to(images.device)
    return shifted * gains + biases


def _augment(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random shifts (up to 1/16 of the side) and mild brightness/contrast changes.

    They keep the network from memorising its training images pixel by pixel, which would make
    the features of those images differ from the features of unseen ones.
    """
    return random_shift_and_exposure(images, rng, max_shift=1 / 16, gain=0.1, bias=0.1)


def _to_network_input(batch: np.ndarray, input_size: int, device: torch.device) -> torch.Tensor:
    """uint8 B×S×S → float B×1×s×s in [-1, 1] on ``device``, resized when S ≠ s."""
    tensor = to_model_range(np.ascontiguousarray(batch))[:, None].to(device)
    if tensor.shape[-1] != input_size:
        tensor = F.interpolate(tensor, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
    return tensor


@dataclass
class DomainClassifier:
    """A trained :class:`CompactCxrNet` with its config (and, when trained here, its statistics).

    Attributes:
        net: the network (kept in eval mode).
        config: what defines it.
        info: extra facts saved in ``classifier.json`` (training data key, seconds, final loss, n_train).
    """

    net: CompactCxrNet
    config: ClassifierConfig
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features` rows."""
        return self.net.feature_dim

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return next(self.net.parameters()).device

    @torch.no_grad()
    def _apply(self, images: np.ndarray, fn: str, batch_size: int) -> np.ndarray:
        array = _check_images(images, "images")
        self.net.eval()
        outputs = []
        for start in range(0, len(array), batch_size):
            batch = _to_network_input(array[start : start + batch_size], self.config.input_size, self.device)
            result = self.net.features(batch) if fn == "features" else torch.sigmoid(self.net(batch))
            outputs.append(result.float().cpu().numpy())
        return np.concatenate(outputs)

    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Penultimate features (float32 N×feature_dim) of uint8 images N×S×S.

        Raises:
            CxrsynthError: when ``images`` is not a non-empty uint8 N×S×S array.
        """
        return self._apply(images, "features", batch_size)

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Per-finding probabilities (float32 N×len(label_names)) of uint8 images N×S×S.

        Raises:
            CxrsynthError: for a classifier of the ``rotation`` task, or bad ``images``.
        """
        if self.config.task != "findings":
            raise CxrsynthError("this classifier was trained on the rotation proxy task; it predicts no findings")
        return self._apply(images, "proba", batch_size)

    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` and ``classifier.json`` into ``folder`` (created); returns it."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.net.state_dict().items()}
        save_file(state, str(target / WEIGHTS_FILE))
        atomic_write_json(target / CONFIG_FILE, {"config": self.config.to_dict(), "info": self.info})
        return target


def load_classifier(folder: str | Path, device: torch.device | str | None = None) -> DomainClassifier:
    """Load a classifier saved by :meth:`DomainClassifier.save` (safetensors: no unpickling).

    Raises:
        CxrsynthError: when a file is missing or does not match the saved config.
    """
    root = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (root / name).is_file():
            raise CxrsynthError(f"{root} holds no saved classifier: {name} is missing", "train it again")
    try:
        saved = json.loads((root / CONFIG_FILE).read_text())
        config = ClassifierConfig.from_dict(saved["config"])
        net = CompactCxrNet(config.widths, config.num_outputs)
        net.load_state_dict(load_file(str(root / WEIGHTS_FILE)))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CxrsynthError(f"the classifier in {root} cannot be loaded ({exc})", f"delete {root} and run again") from None
    net.to(torch.device(device) if device is not None else _default_device()).eval()
    return DomainClassifier(net=net, config=config, info=dict(saved.get("info", {})))


def _training_targets(config: ClassifierConfig, labels: np.ndarray | None, count: int) -> np.ndarray | None:
    if config.task == "rotation":
        return None
    if labels is None:
        raise CxrsynthError("a findings classifier needs a label matrix")
    matrix = np.asarray(labels, dtype=np.float32)
    if matrix.shape != (count, len(config.label_names)):
        raise CxrsynthError(
            f"label matrix has shape {matrix.shape}, expected ({count}, {len(config.label_names)})"
        )
    return matrix


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray | None,
    config: ClassifierConfig,
    device: torch.device | str | None = None,
    progress: bool = False,
    description: str = "classifier",
    rows: np.ndarray | None = None,
) -> DomainClassifier:
    """Train a :class:`CompactCxrNet` from scratch on ``images`` for ``config.steps`` steps.

    Args:
        images: uint8 N×S×S images (a memory-mapped array is read one batch at a time).
        labels: multi-hot float matrix (one row per training image, len(config.label_names)
            columns) for the ``findings`` task; ignored (may be None) for ``rotation``.
        config: architecture, task, budget and seed.
        device: where to train (default: CUDA when available, else CPU).
        progress: show a progress bar on stderr.
        description: progress-bar label.
        rows: train on these rows of ``images`` only (default: all), so a large memory-mapped
            array is never copied whole.

    Returns:
        The trained classifier, in eval mode, with ``info`` holding ``n_train``, ``seconds``
        and ``final_loss`` (mean loss over the last 10% of steps).

    Raises:
        CxrsynthError: for malformed images or labels.
    """
    array = _check_images(images, "training images")
    selected = np.arange(len(array)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(selected) == 0:
        raise CxrsynthError("no training images were selected")
    targets = _training_targets(config, labels, len(selected))
    torch_device = torch.device(device) if device is not None else _default_device()
    rng = np.random.default_rng(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = CompactCxrNet(config.widths, config.num_outputs)
    net.to(torch_device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=config.steps)
    order = rng.permutation(len(selected))
    cursor, losses, started = 0, [], time.perf_counter()
    for _ in tqdm(range(config.steps), desc=description, disable=not progress, leave=False):
        if cursor + config.batch_size > len(order):
            order, cursor = rng.permutation(len(selected)), 0
        batch = np.sort(order[cursor : cursor + config.batch_size])
        cursor += config.batch_size
        inputs = _augment(_to_network_input(array[selected[batch]], config.input_size, torch_device), rng)
        if config.task == "findings":
            target = torch.from_numpy(targets[batch]).to(torch_device)
            loss = F.binary_cross_entropy_with_logits(net(inputs), target)
        else:
            turns = rng.integers(0, 4, size=len(batch))
            inputs = torch.stack([torch.rot90(image, int(k), dims=(1, 2)) for image, k in zip(inputs, turns)])
            loss = F.cross_entropy(net(inputs), torch.from_numpy(turns).to(torch_device))
        losses.append(optimisation_step(loss, optimizer, schedule))
    net.eval()
    info = {
        "n_train": int(len(selected)),
        "seconds": round(time.perf_counter() - started, 2),
        "final_loss": final_loss(losses),
    }
    return DomainClassifier(net=net, config=config, info=info)


def optimisation_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      schedule: torch.optim.lr_scheduler.LRScheduler) -> float:
    """Backpropagate ``loss``, step ``optimizer`` and ``schedule``; returns the loss as a float (for the log)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return float(loss.detach())


def final_loss(losses: list[float]) -> float:
    """The mean loss over the last tenth of training (at least one step): the figure a network reports."""
    tail = max(1, len(losses) // 10)
    return float(np.mean(losses[-tail:]))


def choose_task(label_names: list[str] | tuple[str, ...], labels: np.ndarray) -> str:
    """``findings`` when there are finding names and at least one positive label, else ``rotation``."""
    return "findings" if len(label_names) and float(np.asarray(labels).sum()) > 0 else "rotation"


def data_key(data: PreparedData) -> dict[str, Any]:
    """What identifies the training data of a cached classifier: path, shape, labels, index hash."""
    index_hash = hashlib.sha256((data.root / INDEX_FILE).read_bytes()).hexdigest()[:16]
    return {
        "path": str(data.root.resolve()),
        "n_images": int(data.images.shape[0]),
        "size": data.size,
        "labels": data.label_names,
        "index_sha256": index_hash,
    }


def classifier_steps_for(n_train: int, steps: int, batch_size: int) -> int:
    """``steps``, capped at :data:`MAX_EPOCHS` passes over ``n_train`` images (but not below :data:`MIN_STEPS`).

    Many passes over a small training set make the network memorise it, and then its training
    images get features unlike those of unseen images — which would bias every comparison that
    involves them.
    """
    return min(steps, max(MIN_STEPS, math.ceil(MAX_EPOCHS * n_train / batch_size)))


def domain_classifier_config(
    data: PreparedData,
    split: str = "member",
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ClassifierConfig:
    """The config of the domain classifier trained on ``split`` of ``data`` (task chosen from its labels)."""
    rows = data.rows(split)
    labels = data.label_matrix(rows)
    task = choose_task(data.label_names, labels)
    return ClassifierConfig(
        image_size=data.size,
        task=task,
        label_names=tuple(data.label_names) if task == "findings" else (),
        steps=classifier_steps_for(len(rows), steps, batch_size),
        batch_size=batch_size,
        seed=seed,
    )


def classifier_folder(run_dir: str | Path, split: str = "member") -> Path:
    """Cache folder of the run's domain classifier trained on ``split`` (``RUN/eval/domain_classifier[_split]``)."""
    name = DOMAIN_FOLDER.name if split == "member" else f"{DOMAIN_FOLDER.name}_{split}"
    return Path(run_dir) / DOMAIN_FOLDER.parent / name


def domain_classifier_for_run(
    run_dir: str | Path,
    data: PreparedData,
    split: str = "member",
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[DomainClassifier, bool]:
    """The run's domain classifier: loaded from its cache folder, or trained on ``split`` and cached.

    The evaluation uses the one trained on ``member`` (the split the generator learned from). Its
    features of ``member`` images are *in-sample*; a caller comparing member images with unseen
    ones through features (the audit) can ask for a classifier trained on another split
    (``test``), cached separately. A classifier is reused while the data (path, image count, size,
    labels, ``index.csv`` hash), split, seed and budget are unchanged; otherwise it is retrained
    and the cache replaced atomically.

    Args:
        run_dir: the run folder.
        data: the run's prepared data.
        split: the split to train on.
        seed: classifier seed.
        steps, batch_size: training budget (steps capped by :func:`classifier_steps_for`).
        device: where to run (default: CUDA when available).
        progress: show a training progress bar.

    Returns:
        ``(classifier, reused)`` — ``reused`` is True when it came from the cache.

    Raises:
        CxrsynthError: when the split is empty or unknown.
    """
    folder = classifier_folder(run_dir, split)
    rows = np.sort(data.rows(split))
    if len(rows) == 0:
        raise CxrsynthError(f"{data.root} has no {split} images to train the domain classifier on")
    config = domain_classifier_config(data, split=split, seed=seed, steps=steps, batch_size=batch_size)
    key = {**data_key(data), "split": split}
    if (folder / CONFIG_FILE).is_file():
        try:
            cached = load_classifier(folder, device=device)
        except CxrsynthError:
            cached = None
        if cached is not None and cached.config == config and cached.info.get("data") == key:
            return cached, True
    labels = data.label_matrix(rows) if config.task == "findings" else None
    classifier = train_classifier(
        data.images, labels, config, device=device, progress=progress, description="domain classifier", rows=rows
    )
    classifier.info["data"] = key
    with atomic_directory(folder, overwrite=True) as tmp:
        classifier.save(tmp)
    return classifier, False
