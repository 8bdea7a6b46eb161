"""FID, KID and precision/recall in Inception space, through torch-fidelity, with offline weights.

The numbers are torch-fidelity's own (``calculate_metrics`` with the ``inception-v3-compat``
extractor, 2048-d pool features, the standard TF-ported FID weights), fed with in-memory datasets:
real and synthetic images both go through :class:`GrayscaleUint8Dataset` — uint8 N×S×S, grayscale
repeated to 3 channels, no resizing here (the extractor resizes to 299² like TF does) — so both
sides take exactly the same path. torch-fidelity's precision/recall default extractor is VGG16; we
pin Inception for all four metrics so only one network (and one weights file) is needed.

Weights are never downloaded unless asked. :func:`resolve_inception_weights` looks at
``--inception-weights PATH``, then torch-fidelity's cache (``torch.hub`` checkpoints), then
downloads only when ``allow_download`` is true, with a socket timeout so an offline machine fails
fast. When no weights can be had, it returns the reason and the exact way to provide the file; the
runner records it as ``fid_skipped`` (etc.) and carries on.

A weights file is read once (:func:`checked_weights`): those bytes are loaded with
``torch.load(weights_only=True)`` (no arbitrary unpickling), checked for the Inception layout, and
only the checked tensors reach torch-fidelity (which itself unpickles freely), through a private
copy, never the user's path again. Its SHA-256 is compared with the standard file's, and a
different file is reported (FIDs then don't compare with published ones).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrsynth.errors import CxrsynthError

STANDARD_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
"""The file torch-fidelity downloads for ``inception-v3-compat`` (FID weights ported from TensorFlow)."""

STANDARD_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
STANDARD_WEIGHTS_BYTES = 95_628_359
FEATURE_EXTRACTOR = "inception-v3-compat"
KID_SUBSET_SIZE = 1000
"""torch-fidelity's default KID subset size; smaller sets use their own size."""

DOWNLOAD_TIMEOUT_S = 20.0

INCEPTION_METRICS: tuple[str, ...] = ("fid", "kid", "prc")
"""Names accepted by :func:`inception_metrics` (``prc`` = precision and recall)."""


def torch_fidelity_cache_path() -> Path:
    """Where torch-fidelity (``torch.hub.load_state_dict_from_url``) keeps the downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / STANDARD_WEIGHTS_URL.rsplit("/", 1)[-1]


def how_to_provide_weights() -> str:
    """The sentence telling a user how to supply the Inception weights on an offline machine."""
    return (
        f"download {STANDARD_WEIGHTS_URL} (95.6 MB, sha256 {STANDARD_WEIGHTS_SHA256}) on a machine with internet, "
        f"then either pass it with --inception-weights PATH, or copy it to {torch_fidelity_cache_path()} "
        "(torch-fidelity's cache), or rerun with --download-inception on a machine that can reach github.com"
    )


@dataclass(frozen=True)
class InceptionWeights:
    """The outcome of looking for the Inception weights.

    Attributes:
        path: the weights file, or None when none could be had.
        source: ``option`` (--inception-weights), ``cache``, ``download``, or ``none``.
        skip_reason: when ``path`` is None: why, and how to provide the file.
    """

    path: Path | None
    source: str
    skip_reason: str | None = None


def _download(target: Path, timeout_s: float) -> str | None:
    """Download the standard weights to ``target``; returns an error text on failure, None on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        torch.hub.download_url_to_file(STANDARD_WEIGHTS_URL, str(target), hash_prefix=STANDARD_WEIGHTS_SHA256[:8], progress=False)
    except Exception as exc:  # any network/SSL/hash failure means "not available", never a crash
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        return f"{type(exc).__name__}: {exc}"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def resolve_inception_weights(
    weights_path: str | Path | None = None, allow_download: bool = False, timeout_s: float = DOWNLOAD_TIMEOUT_S
) -> InceptionWeights:
    """Find the Inception weights: the given path, else torch-fidelity's cache, else (if allowed) a download.

    Args:
        weights_path: ``--inception-weights``; a missing file is reported, not fatal.
        allow_download: try to download into torch-fidelity's cache when nothing is found locally.
        timeout_s: socket timeout of that download.

    Returns:
        :class:`InceptionWeights`; ``path`` None with ``skip_reason`` when no weights are available.
    """
    problems = []
    if weights_path is not None:
        given = Path(weights_path).expanduser()
        if given.is_file():
            return InceptionWeights(path=given, source="option")
        problems.append(f"--inception-weights {given} does not exist")
    cached = torch_fidelity_cache_path()
    if cached.is_file():
        return InceptionWeights(path=cached, source="cache")
    problems.append(f"the weights are not in torch-fidelity's cache ({cached})")
    if allow_download:
        error = _download(cached, timeout_s)
        if error is None:
            return InceptionWeights(path=cached, source="download")
        problems.append(f"downloading {STANDARD_WEIGHTS_URL} failed ({error})")
    else:
        problems.append("downloading was not requested (--download-inception)")
    reason = "Inception weights unavailable: " + "; ".join(problems) + ". To enable FID/KID/precision/recall: " + how_to_provide_weights()
    return InceptionWeights(path=None, source="none", skip_reason=reason)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_state(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``data`` (the bytes of ``path``), loaded without arbitrary unpickling and checked.

    Raises:
        CxrsynthError: when the bytes need unpickling of arbitrary objects, or are not that layout.
    """
    fix = f"pass the standard weights file: {how_to_provide_weights()}"
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CxrsynthError(f"{path} cannot be read as a safe torch state dict ({type(exc).__name__}: {exc})", fix) from None
    expected = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048)}
    if not isinstance(state, dict) or any(
        not isinstance(state.get(name), torch.Tensor) or tuple(state[name].shape) != shape
        for name, shape in expected.items()
    ) or not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise CxrsynthError(f"{path} is not a torch-fidelity InceptionV3 state dict", fix)
    return state


def _read_weights(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CxrsynthError(f"Inception weights {path} cannot be read ({exc.strerror or exc})",
                            "check the path given to --inception-weights") from None


def check_weights_file(path: Path) -> str:
    """Check that ``path`` is a plain tensor state dict in torch-fidelity's Inception layout.

    Returns:
        The file's SHA-256 (hex).

    Raises:
        CxrsynthError: when the file needs unpickling of arbitrary objects, or is not that layout.
    """
    data = _read_weights(path)
    _checked_state(data, path)
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def checked_weights(path: Path) -> Iterator[tuple[Path, str]]:
    """Read ``path`` once, check those bytes, and give torch-fidelity only a private copy of what was checked.

    torch-fidelity loads its weights file with ``torch.load(weights_only=False)``, which runs any
    code a pickle carries. Checking ``path`` and then handing torch-fidelity the same *path* would
    let whoever can replace the file between the two reads run code; so the checked tensors are
    saved to a file in a private temporary folder (mode 0700) and that file is what it loads.

    Args:
        path: the weights file (``--inception-weights``, or torch-fidelity's cache).

    Yields:
        ``(private_file, sha256)``: the copy to pass to torch-fidelity, and the SHA-256 of the bytes read.

    Raises:
        CxrsynthError: as :func:`check_weights_file`.
    """
    data = _read_weights(path)
    state = _checked_state(data, path)
    sha256 = hashlib.sha256(data).hexdigest()
    del data
    with tempfile.TemporaryDirectory(prefix="cxrsynth-inception-") as private:
        copy = Path(private) / "inception-checked.pth"
        torch.save(state, copy)  # only the checked tensors: nothing else can be unpickled from it
        del state
        yield copy, sha256


class GrayscaleUint8Dataset(Dataset):
    """uint8 N×S×S images served as uint8 3×S×S tensors (grayscale repeated), torch-fidelity's input format."""

    def __init__(self, images: np.ndarray) -> None:
        array = np.asarray(images)
        if array.dtype != np.uint8 or array.ndim != 3:
            raise CxrsynthError(f"images must be uint8 N×H×W, got {array.dtype} {tuple(array.shape)}")
        self.images = array

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[item]))[None].expand(3, -1, -1).contiguous()


def inception_metrics(
    real: np.ndarray,
    synthetic: np.ndarray,
    weights_path: Path,
    metrics: tuple[str, ...] = INCEPTION_METRICS,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """FID, KID (mean and std) and precision/recall between real and synthetic images, by torch-fidelity.

    Args:
        real: uint8 N×S×S reference images.
        synthetic: uint8 M×S'×S' synthetic images.
        weights_path: a checked private copy of the Inception weights (:func:`checked_weights`).
        metrics: any of :data:`INCEPTION_METRICS`.
        seed: torch-fidelity's ``rng_seed`` (KID subsets).
        batch_size: images per Inception forward pass.
        progress: let torch-fidelity print progress to stderr.

    Returns:
        A dict with the requested keys among ``fid``, ``kid``, ``kid_std``, ``kid_subset_size``,
        ``precision``, ``recall``. Precision is the fraction of synthetic images inside the real
        manifold; recall the fraction of real images inside the synthetic one.

    Raises:
        CxrsynthError: for unknown metric names, too few images, or weights torch-fidelity rejects.
    """
    import torch_fidelity

    unknown = sorted(set(metrics) - set(INCEPTION_METRICS))
    if unknown:
        raise CxrsynthError(f"unknown Inception metric(s) {unknown}", f"use {', '.join(INCEPTION_METRICS)}")
    if min(len(real), len(synthetic)) < 4:
        raise CxrsynthError("Inception metrics need at least 4 real and 4 synthetic images", "use more samples")
    subset_size = min(KID_SUBSET_SIZE, len(real), len(synthetic))
    try:
        raw = torch_fidelity.calculate_metrics(
            input1=GrayscaleUint8Dataset(synthetic),
            input2=GrayscaleUint8Dataset(real),
            fid="fid" in metrics,
            kid="kid" in metrics,
            prc="prc" in metrics,
            feature_extractor=FEATURE_EXTRACTOR,
            feature_extractor_weights_path=str(weights_path),
            kid_subset_size=subset_size,
            rng_seed=seed,
            batch_size=batch_size,
            cuda=torch.cuda.is_available(),
            cache=False,
            save_cpu_ram=True,
            verbose=progress,
        )
    except RuntimeError as exc:
        if "state_dict" in str(exc):
            raise CxrsynthError(f"torch-fidelity rejected the weights {weights_path} ({exc})", how_to_provide_weights()) from None
        raise
    result: dict[str, float] = {}
    if "fid" in metrics:
        result["fid"] = float(raw[torch_fidelity.KEY_METRIC_FID])
    if "kid" in metrics:
        result["kid"] = float(raw[torch_fidelity.KEY_METRIC_KID_MEAN])
        result["kid_std"] = float(raw[torch_fidelity.KEY_METRIC_KID_STD])
        result["kid_subset_size"] = subset_size
    if "prc" in metrics:
        result["precision"] = float(raw[torch_fidelity.KEY_METRIC_PRECISION])
        result["recall"] = float(raw[torch_fidelity.KEY_METRIC_RECALL])
    return result
