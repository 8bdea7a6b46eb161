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
= 1/6. With fewer than 50 training patients all of them are used. The neighbours are *patients*
(each by their nearest image) when patient ids are known: a patient with 60 follow-ups would
otherwise fill the denominator with near-duplicates of the copied image and hide the copy.
:func:`flag_memorized` is the reusable test (the ``release`` command drops flagged samples with it).

As a test that may raise the audit's leak flag (:func:`copy_test`), the ratio is computed against
the pool of member *and* holdout patients, and the number of flagged samples nearest to a member is
compared with random relabellings of the pool's patients: valid whatever the images per patient.

Distance to closest record (DCR)
--------------------------------
Each synthetic image's distance to the nearest audited ``member`` image and to the nearest audited
``holdout`` image — two sets of equal size, one image per patient — so the two distributions match
when nothing leaks. The number of samples nearest to a member image is tested against random
relabellings of which of the two sets' patients are members (:func:`dcr_comparison`).
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


def _distance_matrix(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Every ℓ2 distance Q×R (float64)."""
    import torch

    query = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    reference = torch.from_numpy(np.ascontiguousarray(references, dtype=np.float32))
    return torch.cdist(query, reference).clamp_min(0.0).numpy().astype(np.float64)


def _blocks_at_patient_boundaries(patients: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` blocks of at least ``chunk`` positions of a patient-sorted array (the last may be
    shorter), never splitting a patient."""
    boundaries = [*(np.flatnonzero(patients[1:] != patients[:-1]) + 1).tolist(), len(patients)]
    blocks, start = [], 0
    for boundary in boundaries:
        if boundary - start >= chunk or boundary == len(patients):
            blocks.append((start, boundary))
            start = boundary
    return blocks


def _nearest_per_patient(distances: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, each patient's nearest-image distance and that image's column (columns sorted by patient)."""
    starts = np.concatenate([[0], np.flatnonzero(patients[1:] != patients[:-1]) + 1])
    nearest = np.minimum.reduceat(distances, starts, axis=1)
    lengths = np.diff(np.concatenate([starts, [distances.shape[1]]]))
    width = distances.shape[1]
    columns = np.where(distances <= np.repeat(nearest, lengths, axis=1), np.arange(width), width)
    return nearest, np.minimum.reduceat(columns, starts, axis=1)


def nearest_images(
    queries: np.ndarray, images: np.ndarray, rows: np.ndarray | None = None, k: int = 1, chunk: int = 2048,
    patients: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest images (normalised-pixel ℓ2) of each query vector, read ``chunk`` images at a time.

    Args:
        queries: normalised pixel vectors Q×S² (:func:`pixel_vectors`).
        images: uint8 N×S×S array (a memory map is fine: only about ``chunk`` images are in memory at once).
        rows: the rows of ``images`` to search (all when None).
        k: neighbours wanted (capped at the number of rows, or of patients).
        chunk: images per block.
        patients: the patient of each searched row (aligned with ``rows``), or None. When given, the
            neighbours are the ``k`` nearest *patients*, each represented by their nearest image, so a
            patient's follow-ups count once.

    Returns:
        ``(distances, positions)``, each Q×k, nearest first; positions index into ``rows``.

    Raises:
        CxrsynthError: when ``patients`` and ``rows`` differ in length.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    if patients is None:
        order = np.arange(len(rows))
        blocks = [(start, min(start + chunk, len(rows))) for start in range(0, len(rows), chunk)]
    else:
        patients = np.asarray(patients).astype(str)
        if len(patients) != len(rows):
            raise CxrsynthError(f"{len(patients)} patient ids for {len(rows)} image rows")
        order = np.argsort(patients, kind="stable")
        patients = patients[order]
        blocks = _blocks_at_patient_boundaries(patients, chunk)
    best_distances = best_positions = None
    for start, stop in blocks:
        block = pixel_vectors(np.asarray(images[rows[order[start:stop]]]))
        if patients is None:
            distances, positions = nearest_neighbours(queries, block, k)
        else:
            per_patient, columns = _nearest_per_patient(_distance_matrix(queries, block), patients[start:stop])
            pick = np.argsort(per_patient, axis=1, kind="stable")[:, :k]
            distances, positions = np.take_along_axis(per_patient, pick, 1), np.take_along_axis(columns, pick, 1)
        positions = order[positions + start]
        if best_distances is not None:
            distances = np.concatenate([best_distances, distances], axis=1)
            positions = np.concatenate([best_positions, positions], axis=1)
            keep = np.argsort(distances, axis=1, kind="stable")[:, :k]
            distances, positions = np.take_along_axis(distances, keep, 1), np.take_along_axis(positions, keep, 1)
        best_distances, best_positions = distances, positions
    return best_distances, best_positions


def _copy_ratio(distances: np.ndarray) -> np.ndarray:
    """d₁ / d̄_k of each row of nearest-first distances (0 where every neighbour is at distance 0)."""
    mean_distance = distances.mean(axis=1)
    return np.divide(distances[:, 0], mean_distance, out=np.zeros(len(distances)), where=mean_distance > 0)


def flag_memorized(
    synthetic: np.ndarray,
    members: np.ndarray,
    rows: np.ndarray | None = None,
    threshold: float = CARLINI_RATIO_THRESHOLD,
    neighbours: int = CARLINI_NEIGHBOURS,
    patients: np.ndarray | None = None,
) -> MemorizationFlags:
    """Carlini et al.'s copy test of each synthetic image against the training (member) images.

    Args:
        synthetic: uint8 M×S×S synthetic images.
        members: uint8 images holding the training images (e.g. the prepared ``images.npy``
            memory map); read in blocks, never all at once.
        rows: the training images' rows in ``members`` (all rows when None), e.g.
            ``data.rows("member")``.
        threshold: flag when d₁/d̄_k is below it (default 1/6, see the module docstring).
        neighbours: k of the denominator (capped at the number of training images, or patients).
        patients: the patient of each row (aligned with ``rows``). When given, the denominator
            averages the nearest image of each of the k nearest *patients*: otherwise a sample that
            copies a patient with many follow-ups has those follow-ups as its 50 "other" neighbours,
            its ratio stays near 1, and the copy is never flagged.

    Returns:
        :class:`MemorizationFlags` (``nearest_member`` indexes ``rows``); ``flagged`` marks the
        samples to withhold from a release.

    Raises:
        CxrsynthError: for malformed image arrays, images of different sizes, or patients not
            aligned with the rows.
    """
    synthetic = _check(synthetic, "synthetic images")
    _check_reference(members, synthetic, rows)
    return _flags(nearest_images(pixel_vectors(synthetic), members, rows, k=neighbours, patients=patients), threshold)


def _flags(neighbours: tuple[np.ndarray, np.ndarray], threshold: float) -> MemorizationFlags:
    """The copy test from :func:`nearest_images` ``(distances, positions)``."""
    distances, positions = neighbours
    ratio = _copy_ratio(distances)
    return MemorizationFlags(nearest_member=positions[:, 0], nearest_distance=distances[:, 0], ratio=ratio,
                             flagged=ratio < threshold, threshold=float(threshold), neighbours=int(distances.shape[1]))


def _check_reference(images: np.ndarray, synthetic: np.ndarray, rows: np.ndarray | None) -> None:
    if np.asarray(images[:1]).dtype != np.uint8 or tuple(images.shape[1:]) != synthetic.shape[1:]:
        raise CxrsynthError(f"member images must be uint8 N×{synthetic.shape[1]}×{synthetic.shape[2]} like the "
                            f"synthetic ones, got {images.dtype} {tuple(images.shape)}")
    if rows is not None and len(rows) == 0 or len(images) == 0:
        raise CxrsynthError("there are no member images to compare the synthetic images with")


def copy_test(
    synthetic_vectors: np.ndarray,
    images: np.ndarray,
    member_rows: np.ndarray,
    member_patients: np.ndarray,
    holdout_rows: np.ndarray,
    holdout_patients: np.ndarray,
    threshold: float = CARLINI_RATIO_THRESHOLD,
    neighbours: int = CARLINI_NEIGHBOURS,
    seed: int = 0,
    member_neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """The copy test as a hypothesis test: are near-copies made of member patients more than of holdout ones?

    Each synthetic image's copy ratio is computed against the *pool* of member and holdout patients
    (one nearest image per patient in the denominator), so that whether it is flagged does not depend
    on who was trained on. The statistic is the number of flagged samples whose nearest patient is a
    member; its null distribution comes from relabelling the pool's patients
    (:func:`cxrsynth.audit.hypothesis.linked_patients_p`). A near-copy of a holdout patient (a
    duplicate in the data, a generic image) thus counts against the evidence instead of raising a flag.

    Args:
        synthetic_vectors: :func:`pixel_vectors` of the synthetic images.
        images: uint8 array holding the real images (the prepared memory map).
        member_rows, member_patients: rows of every member image and their patients (aligned).
        holdout_rows, holdout_patients: the same for every holdout image.
        threshold, neighbours: as :func:`flag_memorized`.
        seed: seed of the relabellings.
        member_neighbours: :func:`nearest_images` of the member rows with ``patients`` and
            ``neighbours``, when already computed.

    Returns:
        ``n_flagged_pool``, ``n_flagged_member``, ``n_flagged_holdout`` (int), ``p_value`` (float),
        ``pool_patients`` (``{"member": int, "holdout": int}``), ``test`` (str).

    Raises:
        CxrsynthError: for misaligned patients or an empty group.
    """
    from cxrsynth.audit.hypothesis import linked_patients_p

    member_patients, holdout_patients = np.asarray(member_patients).astype(str), np.asarray(holdout_patients).astype(str)
    if len(member_rows) == 0 or len(holdout_rows) == 0:
        raise CxrsynthError("the copy test needs member and holdout images")
    if member_neighbours is None:
        member_neighbours = nearest_images(synthetic_vectors, images, member_rows, k=neighbours, patients=member_patients)
    found = [member_neighbours,
             nearest_images(synthetic_vectors, images, holdout_rows, k=neighbours, patients=holdout_patients)]
    distances = np.concatenate([found[0][0], found[1][0]], axis=1)
    patient_of = np.concatenate([member_patients[found[0][1]], holdout_patients[found[1][1]]], axis=1)
    keep = np.argsort(distances, axis=1, kind="stable")[:, :neighbours]
    distances, patient_of = np.take_along_axis(distances, keep, 1), np.take_along_axis(patient_of, keep, 1)
    flagged = _copy_ratio(distances) < threshold
    linked = patient_of[flagged, 0]
    members, holdout = np.unique(member_patients), np.unique(holdout_patients)
    pool = np.concatenate([members, holdout])
    pool_is_member = np.concatenate([np.ones(len(members), bool), np.zeros(len(holdout), bool)])
    n_member = int(np.isin(linked, members).sum())
    return {
        "n_flagged_pool": int(flagged.sum()),
        "n_flagged_member": n_member,
        "n_flagged_holdout": int(flagged.sum()) - n_member,
        "p_value": linked_patients_p(linked, pool, pool_is_member, seed=seed),
        "pool_patients": {"member": int(pool_is_member.sum()), "holdout": int((~pool_is_member).sum())},
        "test": "near-copies (copy ratio against member and holdout patients) of member patients vs random "
                "relabellings of the patients",
    }


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in DCR_QUANTILES} | {"mean": float(np.mean(values))}


def dcr_comparison(synthetic_vectors: np.ndarray, member_vectors: np.ndarray, holdout_vectors: np.ndarray,
                   seed: int = 0) -> dict:
    """Distance-to-closest-record of each synthetic vector to two equal-size real sets, one image per patient.

    The test: each synthetic image is linked to its nearest real image; the number linked to a member
    is compared with random relabellings of which real images (patients) are members
    (:func:`cxrsynth.audit.hypothesis.linked_patients_p`). Synthetic images are not independent given
    one gallery (many may crowd onto one central image), so a binomial test over them is not valid,
    and the two DCRs of one sample are paired, so a Mann–Whitney test between them is not either.

    Returns:
        A JSON-ready dict: ``member`` and ``holdout`` (quantiles q05/q25/q50/q75 and mean of the
        DCR), ``fraction_closer_to_member``, ``p_value`` (the relabelling test, one-sided towards
        members), ``test`` (str), and the raw ``member_dcr``/``holdout_dcr`` arrays under keys
        starting with ``_`` (for plotting).
    """
    from cxrsynth.audit.hypothesis import linked_patients_p

    to_member = nearest_neighbours(synthetic_vectors, member_vectors)[0][:, 0]
    to_holdout = nearest_neighbours(synthetic_vectors, holdout_vectors)[0][:, 0]
    closer = int((to_member < to_holdout).sum()) + 0.5 * int((to_member == to_holdout).sum())
    gallery = np.concatenate([member_vectors, holdout_vectors])
    is_member = np.concatenate([np.ones(len(member_vectors), bool), np.zeros(len(holdout_vectors), bool)])
    nearest = nearest_neighbours(synthetic_vectors, gallery)[1][:, 0]
    return {
        "member": _quantiles(to_member),
        "holdout": _quantiles(to_holdout),
        "fraction_closer_to_member": closer / len(to_member),
        "p_value": linked_patients_p(nearest, np.arange(len(gallery)), is_member, seed=seed),
        "test": "synthetic images nearest to a member image vs random relabellings of the real images (one per patient)",
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
    member_patients: np.ndarray | None = None,
    holdout_rows: np.ndarray | None = None,
    holdout_patients: np.ndarray | None = None,
    seed: int = 0,
) -> MemorizationResult:
    """The copy test against every training image, its relabelling test, and the DCR comparison.

    Args:
        synthetic: uint8 M×S×S synthetic images; ``synthetic_names`` their file names.
        images: uint8 array holding the real images (the prepared memory map);
            ``member_rows`` the training images' rows (the whole ``member`` split).
        audited_members, audited_holdout: the audited member and holdout images (equal counts,
            one per patient), uint8.
        features: uint8 images → feature rows (domain classifier), or None to skip the feature DCR.
        threshold: copy-ratio threshold.
        member_patients: the patient of each member row (one image per patient in the copy ratio's
            denominator); None treats every image as its own patient.
        holdout_rows, holdout_patients: every holdout image and its patient, for the copy test's
            relabelling p-value (:func:`copy_test`); None skips that test.
        seed: seed of the relabelling tests.

    Returns:
        :class:`MemorizationResult`; its ``report`` keys are documented in :mod:`cxrsynth.audit.runner`.
    """
    synthetic = _check(synthetic, "synthetic images")
    _check_reference(images, synthetic, member_rows)
    synthetic_vectors = pixel_vectors(synthetic)
    if member_patients is None:
        member_patients = np.asarray(member_rows).astype(str)
    neighbours = nearest_images(synthetic_vectors, images, member_rows, k=CARLINI_NEIGHBOURS, patients=member_patients)
    flags = _flags(neighbours, threshold)
    copies = None
    if holdout_rows is not None and len(holdout_rows) > 0:
        copies = copy_test(synthetic_vectors, images, member_rows, member_patients, holdout_rows, holdout_patients,
                           threshold=threshold, seed=seed, member_neighbours=neighbours)
    pixel = dcr_comparison(synthetic_vectors, pixel_vectors(audited_members), pixel_vectors(audited_holdout), seed=seed)
    domain = None
    if features is not None:
        domain = dcr_comparison(features(synthetic), features(audited_members), features(audited_holdout), seed=seed)
    order = np.argsort(flags.nearest_distance, kind="stable")[:CLOSEST_PAIRS]
    flagged_names = [synthetic_names[i] for i in np.flatnonzero(flags.flagged)]
    report = {
        "n_synthetic": int(len(synthetic)),
        "n_member_images": int(len(member_rows)),
        "n_member_patients": int(len(np.unique(np.asarray(member_patients).astype(str)))),
        "n_dcr_reference_per_split": int(len(audited_members)),
        "pixel_distance": "RMS difference of per-image standardised images",
        "ratio_neighbours": flags.neighbours,
        "ratio_denominator": "nearest image of each of the nearest member patients (one image per patient)",
        "ratio_threshold": flags.threshold,
        "n_flagged": int(flags.flagged.sum()),
        "fraction_flagged": float(flags.flagged.mean()),
        "flagged_samples": flagged_names,
        "min_ratio": float(flags.ratio.min()),
        "median_ratio": float(np.median(flags.ratio)),
        "copy_test": copies,
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
