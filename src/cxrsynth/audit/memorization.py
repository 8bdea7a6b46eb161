"""Memorization: is any synthetic image a near-copy of a training image?

Distances
---------
* **pixel**: ℓ2 between *normalised* images — each image standardised to zero mean and unit
  variance (so a global change of exposure or contrast does not hide a copy), divided by √pixels
  (so the distance is an RMS difference, comparable across image sizes). Identical images are at 0;
  unrelated ones near √2.
* **domain**: ℓ2 between the penultimate features of the domain classifier
  (:mod:`cxrsynth.evaluate.domain`), trained on the ``test`` split so that neither ``member`` nor
  ``holdout`` features are in-sample.

Copy test (Carlini et al., "Extracting Training Data from Diffusion Models", USENIX Security 2023)
-------------------------------------------------------------------------------------------------
For a synthetic image x̂ with nearest training (``member``) image x at pixel distance d₁, and the
mean pixel distance d̄₅₀ to its 50 nearest training images, the ratio ``d₁ / d̄₅₀`` is small only
when x̂ is much closer to one training image than to the others. Carlini et al. flag
``d₁ / (α·d̄₅₀) < δ`` with α = 0.5 and δ = 1/3, i.e. ``d₁ / d̄₅₀ <`` :data:`CARLINI_RATIO_THRESHOLD`
= 1/6. With fewer than 50 training images all of them are used. :func:`flag_memorized` is the
reusable test (the ``release`` command drops flagged samples with it).

Distance to closest record (DCR)
--------------------------------
Each synthetic image's distance to the nearest audited ``member`` image and to the nearest audited
``holdout`` image — two sets of equal size, one image per patient — so the two distributions match
when nothing leaks. The fraction of samples closer to a member than to a holdout image is tested
against 1/2 with a one-sided binomial test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrsynth.errors import CxrsynthError

CARLINI_NEIGHBOURS = 50
"""Training images averaged in the denominator of the copy ratio."""

CARLINI_RATIO_THRESHOLD = 1.0 / 6.0
"""Flag when d₁/d̄₅₀ is below this: Carlini et al.'s δ = 1/3 with α = 0.5."""

CLOSEST_PAIRS = 16
"""Pairs (synthetic, nearest member) shown in memorization.png."""

DCR_QUANTILES = (0.05, 0.25, 0.5, 0.75)


def _check(images: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1] != array.shape[2] or len(array) == 0:
        raise CxrsynthError(f"{what} must be a non-empty uint8 N×S×S array, got {array.dtype} {array.shape}")
    return array


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """Normalised pixel vectors (float32 N×S²): each image standardised, divided by √(S²).

    A constant image (zero variance) becomes the zero vector.

    Raises:
        CxrsynthError: unless ``images`` is a non-empty uint8 N×S×S array.
    """
    array = _check(images, "images").reshape(len(images), -1).astype(np.float32)
    centred = array - array.mean(axis=1, keepdims=True)
    scale = centred.std(axis=1, keepdims=True)
    safe = np.where(scale > 0, scale, 1.0)
    return (centred / safe / np.sqrt(array.shape[1])).astype(np.float32)


def nearest_neighbours(
    queries: np.ndarray, references: np.ndarray, k: int = 1, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest references (ℓ2) of each query, nearest first.

    Args:
        queries: float vectors Q×D.
        references: float vectors R×D (R ≥ 1; ``k`` is capped at R).
        k: neighbours wanted.
        chunk: queries per distance block (bounds memory at chunk × R floats).

    Returns:
        ``(distances, indices)``, each Q×min(k, R).
    """
    import torch

    query = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    reference = torch.from_numpy(np.ascontiguousarray(references, dtype=np.float32))
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1] or len(reference) == 0:
        raise CxrsynthError(f"nearest neighbours need Q×D and R×D arrays, got {tuple(query.shape)} and {tuple(reference.shape)}")
    k = min(k, len(reference))
    distances, indices = [], []
    for start in range(0, len(query), chunk):
        block = torch.cdist(query[start : start + chunk], reference).clamp_min(0.0)
        values, where = torch.topk(block, k, dim=1, largest=False, sorted=True)
        distances.append(values)
        indices.append(where)
    return torch.cat(distances).numpy().astype(np.float64), torch.cat(indices).numpy()


@dataclass(frozen=True)
class MemorizationFlags:
    """The copy test of every synthetic image.

    Attributes:
        nearest_member: index (into the member images given) of each sample's nearest member.
        nearest_distance: pixel distance d₁ to it.
        ratio: d₁ / d̄_k (k = min(50, members)).
        flagged: True where ``ratio`` is below the threshold.
        threshold: the threshold used.
        neighbours: k actually used.
    """

    nearest_member: np.ndarray
    nearest_distance: np.ndarray
    ratio: np.ndarray
    flagged: np.ndarray
    threshold: float
    neighbours: int


def nearest_images(
    queries: np.ndarray, images: np.ndarray, rows: np.ndarray | None = None, k: int = 1, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest images (normalised-pixel ℓ2) of each query vector, read ``chunk`` images at a time.

    Args:
        queries: normalised pixel vectors Q×S² (:func:`pixel_vectors`).
        images: uint8 N×S×S array (a memory map is fine: only ``chunk`` images are in memory at once).
        rows: the rows of ``images`` to search (all when None).
        k: neighbours wanted (capped at the number of rows).
        chunk: images per block.

    Returns:
        ``(distances, positions)``, each Q×k, nearest first; positions index into ``rows``.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    best_distances = best_positions = None
    for start in range(0, len(rows), chunk):
        block = pixel_vectors(np.asarray(images[rows[start : start + chunk]]))
        distances, positions = nearest_neighbours(queries, block, k)
        positions = positions + start
        if best_distances is not None:
            distances = np.concatenate([best_distances, distances], axis=1)
            positions = np.concatenate([best_positions, positions], axis=1)
            order = np.argsort(distances, axis=1, kind="stable")[:, :k]
            distances, positions = np.take_along_axis(distances, order, 1), np.take_along_axis(positions, order, 1)
        best_distances, best_positions = distances, positions
    return best_distances, best_positions


def flag_memorized(
    synthetic: np.ndarray,
    members: np.ndarray,
    rows: np.ndarray | None = None,
    threshold: float = CARLINI_RATIO_THRESHOLD,
    neighbours: int = CARLINI_NEIGHBOURS,
) -> MemorizationFlags:
    """Carlini et al.'s copy test of each synthetic image against the training (member) images.

    Args:
        synthetic: uint8 M×S×S synthetic images.
        members: uint8 images holding the training images (e.g. the prepared ``images.npy``
            memory map); read in blocks, never all at once.
        rows: the training images' rows in ``members`` (all rows when None), e.g.
            ``data.rows("member")``.
        threshold: flag when d₁/d̄_k is below it (default 1/6, see the module docstring).
        neighbours: k of the denominator (capped at the number of training images).

    Returns:
        :class:`MemorizationFlags` (``nearest_member`` indexes ``rows``); ``flagged`` marks the
        samples to withhold from a release.

    Raises:
        CxrsynthError: for malformed image arrays or images of different sizes.
    """
    synthetic = _check(synthetic, "synthetic images")
    if np.asarray(members[:1]).dtype != np.uint8 or tuple(members.shape[1:]) != synthetic.shape[1:]:
        raise CxrsynthError(f"member images must be uint8 N×{synthetic.shape[1]}×{synthetic.shape[2]} like the "
                            f"synthetic ones, got {members.dtype} {tuple(members.shape)}")
    if rows is not None and len(rows) == 0 or len(members) == 0:
        raise CxrsynthError("there are no member images to compare the synthetic images with")
    distances, positions = nearest_images(pixel_vectors(synthetic), members, rows, k=neighbours)
    mean_distance = distances.mean(axis=1)
    ratio = np.divide(distances[:, 0], mean_distance, out=np.zeros(len(distances)), where=mean_distance > 0)
    return MemorizationFlags(
        nearest_member=positions[:, 0],
        nearest_distance=distances[:, 0],
        ratio=ratio,
        flagged=ratio < threshold,
        threshold=float(threshold),
        neighbours=int(distances.shape[1]),
    )


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in DCR_QUANTILES} | {"mean": float(np.mean(values))}


def dcr_comparison(synthetic_vectors: np.ndarray, member_vectors: np.ndarray, holdout_vectors: np.ndarray) -> dict:
    """Distance-to-closest-record of each synthetic vector to two equal-size real sets.

    Returns:
        A JSON-ready dict: ``member`` and ``holdout`` (quantiles q05/q25/q50/q75 and mean of the
        DCR), ``fraction_closer_to_member``, ``binomial_p_value`` (one-sided, more samples closer
        to members than 1/2), ``mannwhitney_p_value`` (one-sided, member DCR smaller), and the raw
        ``member_dcr``/``holdout_dcr`` arrays under keys starting with ``_`` (for plotting).
    """
    from scipy.stats import binomtest, mannwhitneyu

    to_member = nearest_neighbours(synthetic_vectors, member_vectors)[0][:, 0]
    to_holdout = nearest_neighbours(synthetic_vectors, holdout_vectors)[0][:, 0]
    closer = int((to_member < to_holdout).sum()) + 0.5 * int((to_member == to_holdout).sum())
    return {
        "member": _quantiles(to_member),
        "holdout": _quantiles(to_holdout),
        "fraction_closer_to_member": closer / len(to_member),
        "binomial_p_value": float(binomtest(int(round(closer)), len(to_member), 0.5, alternative="greater").pvalue),
        "mannwhitney_p_value": float(mannwhitneyu(to_member, to_holdout, alternative="less").pvalue),
        "_member_dcr": to_member,
        "_holdout_dcr": to_holdout,
    }


@dataclass
class MemorizationResult:
    """Memorization findings: the JSON part and what the figure needs.

    Attributes:
        report: JSON-ready dict for audit.json ``memorization``.
        pixel_dcr: ``(member DCR, holdout DCR)`` arrays of the pixel distance.
        closest_pairs: ``(synthetic images, their nearest member images)`` of the closest pairs, uint8.
        closest_distances: their pixel distances.
        closest_ratios: their copy ratios.
    """

    report: dict
    pixel_dcr: tuple[np.ndarray, np.ndarray]
    closest_pairs: tuple[np.ndarray, np.ndarray]
    closest_distances: np.ndarray
    closest_ratios: np.ndarray


def measure_memorization(
    synthetic: np.ndarray,
    synthetic_names: list[str],
    images: np.ndarray,
    member_rows: np.ndarray,
    audited_members: np.ndarray,
    audited_holdout: np.ndarray,
    features: "callable | None" = None,
    threshold: float = CARLINI_RATIO_THRESHOLD,
) -> MemorizationResult:
    """The copy test against every training image and the DCR comparison, in pixels and features.

    Args:
        synthetic: uint8 M×S×S synthetic images; ``synthetic_names`` their file names.
        images: uint8 array holding the training images (the prepared memory map);
            ``member_rows`` their rows (the whole ``member`` split).
        audited_members, audited_holdout: the audited member and holdout images (equal counts,
            one per patient), uint8.
        features: uint8 images → feature rows (domain classifier), or None to skip the feature DCR.
        threshold: copy-ratio threshold.

    Returns:
        :class:`MemorizationResult`; its ``report`` keys are documented in :mod:`cxrsynth.audit.runner`.
    """
    flags = flag_memorized(synthetic, images, member_rows, threshold=threshold)
    synthetic_vectors = pixel_vectors(synthetic)
    pixel = dcr_comparison(synthetic_vectors, pixel_vectors(audited_members), pixel_vectors(audited_holdout))
    domain = None
    if features is not None:
        domain = dcr_comparison(features(synthetic), features(audited_members), features(audited_holdout))
    order = np.argsort(flags.nearest_distance, kind="stable")[:CLOSEST_PAIRS]
    flagged_names = [synthetic_names[i] for i in np.flatnonzero(flags.flagged)]
    report = {
        "n_synthetic": int(len(synthetic)),
        "n_member_images": int(len(member_rows)),
        "n_dcr_reference_per_split": int(len(audited_members)),
        "pixel_distance": "RMS difference of per-image standardised images",
        "ratio_neighbours": flags.neighbours,
        "ratio_threshold": flags.threshold,
        "n_flagged": int(flags.flagged.sum()),
        "fraction_flagged": float(flags.flagged.mean()),
        "flagged_samples": flagged_names,
        "min_ratio": float(flags.ratio.min()),
        "median_ratio": float(np.median(flags.ratio)),
        "dcr_pixel": {key: value for key, value in pixel.items() if not key.startswith("_")},
        "dcr_domain": None if domain is None else {key: value for key, value in domain.items() if not key.startswith("_")},
        "closest_pairs": [
            {"sample": synthetic_names[i], "pixel_distance": float(flags.nearest_distance[i]), "ratio": float(flags.ratio[i])}
            for i in order
        ],
    }
    return MemorizationResult(
        report=report,
        pixel_dcr=(pixel["_member_dcr"], pixel["_holdout_dcr"]),
        closest_pairs=(np.asarray(synthetic[order]), np.asarray(images[np.asarray(member_rows)[flags.nearest_member[order]]])),
        closest_distances=flags.nearest_distance[order],
        closest_ratios=flags.ratio[order],
    )
