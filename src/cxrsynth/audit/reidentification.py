"""Patient re-identification: does a synthetic image point to a real training patient?

Packhäuser et al. ("Deep learning-based patient re-identification is able to exploit the
biometric nature of medical chest X-ray data", Sci. Rep. 2022) showed that a Siamese network
recognises whether two chest X-rays show the same patient with AUC ≈ 0.99 on ChestX-ray14. If a
generator reproduces its training patients, such a network links its images to *member* patients
more often than to comparable patients it never saw.

Procedure (:func:`reidentify`)
------------------------------
1. **Gallery**: ``g`` member patients and ``g`` holdout patients (seeded), ``g`` = min(``max_gallery``,
   member patients, ⌊holdout patients / 2⌋); all their images.
2. **Verification network**, trained only on patients that are neither members nor in the gallery:
   the ``test`` patients plus the holdout patients left out of the gallery. Training on gallery
   holdout patients would make the network better at recognising exactly those patients and bias
   the matching towards them. Its patients are split 80/20; the network trains on pairs of the 80%
   and its **verification AUC** is measured on same-patient vs different-patient pairs of the
   unseen 20%.
3. **Matching**: each synthetic image is linked to the gallery patient with the most similar image
   (cosine similarity of embeddings). The number linked to members is compared with random
   relabellings of which gallery patients are members (:func:`cxrsynth.audit.hypothesis.linked_patients_p`):
   patients have different numbers of images and synthetic images are not independent given one
   gallery, so a binomial test over images (½ per image) would reject far more often than its level
   when nothing leaks; the relabelling test is exact whatever the images per patient.

The network (:class:`PatientVerifier`) is the compact CNN of :mod:`cxrsynth.evaluate.domain` with a
64-d embedding head, trained from scratch with a contrastive (NT-Xent) loss over batches of
same-patient image pairs and random shifts / exposure jitter, at min(64, S)² input — about
20–40 s on 2 CPU cores with the default 300 steps. For the ``release`` command,
:func:`member_gallery` embeds every member image once (with a network that may be kept from
some patients, so that a threshold can be calibrated on them) and links samples to their most
similar member patient; :func:`score_against_members` does both in one call, and
:func:`match_patients` links samples to any gallery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Collection

import numpy as np

from cxrsynth.data.prepared import PreparedData
from cxrsynth.errors import CxrsynthError

DEFAULT_STEPS = 300
DEFAULT_MAX_GALLERY = 200
MAX_INPUT_SIZE = 64
MIN_TRAIN_PATIENTS = 4
"""Patients with at least two images needed in each of the network's training and evaluation parts."""
VERIFICATION_FRACTION = 0.2
MAX_VERIFICATION_PAIRS = 2000


@dataclass(frozen=True)
class VerifierConfig:
    """How the patient-verification network is built and trained.

    Attributes:
        input_size: side of the network's input (images are resized to it).
        widths: channels of the CNN's stem and stages.
        embedding_dim: width of the (L2-normalised) embedding.
        steps: optimizer steps.
        patients_per_batch: patients per step (two images each).
        learning_rate: peak AdamW learning rate (one-cycle schedule).
        temperature: NT-Xent temperature.
        seed: seed of initialisation, batches and augmentation.
    """

    input_size: int = MAX_INPUT_SIZE
    widths: tuple[int, ...] = (16, 32, 64)
    embedding_dim: int = 64
    steps: int = DEFAULT_STEPS
    patients_per_batch: int = 32
    learning_rate: float = 3e-3
    temperature: float = 0.1
    seed: int = 0


def _network_input(images: np.ndarray, size: int, device):
    import torch.nn.functional as F

    from cxrsynth.data.dataset import to_model_range

    tensor = to_model_range(np.ascontiguousarray(images))[:, None].to(device)
    if tensor.shape[-1] != size:
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return tensor


def _study_jitter(images, rng: np.random.Generator):
    """Shifts up to 1/8 of the side and exposure (gain, offset) changes: what differs between studies."""
    from cxrsynth.evaluate.domain import random_shift_and_exposure

    return random_shift_and_exposure(images, rng, max_shift=1 / 8, gain=0.2, bias=0.2)


@dataclass
class PatientVerifier:
    """A trained patient-verification network.

    Attributes:
        net: the CNN (eval mode); its output is the embedding before normalisation.
        config: how it was built and trained.
        info: training facts (``n_train_patients``, ``seconds``, ``final_loss``).
    """

    net: object
    config: VerifierConfig
    info: dict = field(default_factory=dict)

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """L2-normalised embeddings (float32 N×embedding_dim) of uint8 images N×S×S."""
        import torch
        import torch.nn.functional as F

        device = next(self.net.parameters()).device
        self.net.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = _network_input(images[start : start + batch_size], self.config.input_size, device)
                outputs.append(F.normalize(self.net(batch), dim=1).float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, self.config.embedding_dim), np.float32)


def _multi_image_patients(patient_index: np.ndarray) -> list[np.ndarray]:
    """Row groups (positions into the arrays) of the patients with at least two images."""
    groups: dict[int, list[int]] = {}
    for position, patient in enumerate(patient_index):
        groups.setdefault(int(patient), []).append(position)
    return [np.array(rows) for _, rows in sorted(groups.items()) if len(rows) >= 2]


def train_patient_verifier(
    images: np.ndarray, patient_index: np.ndarray, config: VerifierConfig, device=None, progress: bool = False
) -> PatientVerifier:
    """Train the verification network on same-patient pairs (NT-Xent loss).

    Args:
        images: uint8 N×S×S training images.
        patient_index: patient of each image (any integers).
        config: architecture, budget and seed.
        device: where to train (default CUDA when available, else CPU).
        progress: show a progress bar.

    Returns:
        The trained :class:`PatientVerifier`.

    Raises:
        CxrsynthError: with fewer than :data:`MIN_TRAIN_PATIENTS` patients that have two images.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from cxrsynth.evaluate.domain import CompactCxrNet, final_loss, optimisation_step

    groups = _multi_image_patients(np.asarray(patient_index))
    if len(groups) < MIN_TRAIN_PATIENTS:
        raise CxrsynthError(
            f"patient verification needs at least {MIN_TRAIN_PATIENTS} training patients with two or more images, "
            f"found {len(groups)}"
        )
    torch_device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng([config.seed, 41])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = CompactCxrNet(config.widths, config.embedding_dim)
    net.to(torch_device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=config.steps)
    per_batch = min(config.patients_per_batch, len(groups))
    targets = torch.cat([torch.arange(per_batch, 2 * per_batch), torch.arange(per_batch)]).to(torch_device)
    self_mask = torch.eye(2 * per_batch, dtype=torch.bool, device=torch_device)
    losses, started = [], time.perf_counter()
    for _ in tqdm(range(config.steps), desc="patient verifier", disable=not progress, leave=False):
        chosen = rng.choice(len(groups), size=per_batch, replace=False)
        pairs = np.array([rng.choice(groups[g], size=2, replace=False) for g in chosen])
        rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
        inputs = _study_jitter(_network_input(images[rows], config.input_size, torch_device), rng)
        embeddings = F.normalize(net(inputs), dim=1)
        logits = (embeddings @ embeddings.T / config.temperature).masked_fill(self_mask, float("-inf"))
        loss = F.cross_entropy(logits, targets)
        losses.append(optimisation_step(loss, optimizer, schedule))
    net.eval()
    info = {
        "n_train_patients": len(groups),
        "seconds": round(time.perf_counter() - started, 2),
        "final_loss": final_loss(losses),
    }
    return PatientVerifier(net=net, config=config, info=info)


def verification_pairs(patient_index: np.ndarray, seed: int, max_pairs: int = MAX_VERIFICATION_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """Same-patient pairs (up to ``max_pairs``) and as many random different-patient pairs.

    Returns:
        ``(pairs, same)``: int array P×2 of positions, bool array P (True for same-patient pairs).

    Raises:
        CxrsynthError: when there are same-patient pairs but a single patient, so no different-patient
            pair exists (drawing until one turned up would never end).
    """
    rng = np.random.default_rng([seed, 43])
    patients = np.asarray(patient_index)
    positive = [(a, b) for group in _multi_image_patients(patients) for i, a in enumerate(group) for b in group[i + 1 :]]
    if len(positive) > max_pairs:
        positive = [positive[i] for i in rng.choice(len(positive), size=max_pairs, replace=False)]
    if positive and len(np.unique(patients)) < 2:
        raise CxrsynthError(
            "patient verification needs images of at least two patients; all verification images belong to one patient",
            "prepare the data with more holdout and test patients (--holdout-fraction, --test-fraction)",
        )
    negative: list[tuple[int, int]] = []
    for _ in range(len(positive)):  # one draw each: b is drawn among the other patients' images
        a = int(rng.integers(0, len(patients)))
        others = np.flatnonzero(patients != patients[a])
        negative.append((a, int(rng.choice(others))))
    pairs = np.array(positive + negative, dtype=np.int64).reshape(-1, 2)
    return pairs, np.array([True] * len(positive) + [False] * len(negative))


def verification_auc(verifier: PatientVerifier, images: np.ndarray, patient_index: np.ndarray, seed: int = 0) -> tuple[float, int]:
    """AUC of cosine similarity for same- vs different-patient pairs of ``images``.

    Returns:
        ``(auc, positive pairs used)``.

    Raises:
        CxrsynthError: when no patient has two images.
    """
    from sklearn.metrics import roc_auc_score

    pairs, same = verification_pairs(patient_index, seed)
    if not same.any():
        raise CxrsynthError("verification AUC needs at least one patient with two images")
    embeddings = verifier.embed(images)
    similarity = (embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]]).sum(axis=1)
    return float(roc_auc_score(same, similarity)), int(same.sum())


@dataclass(frozen=True)
class PatientMatches:
    """The best-matching gallery patient of each synthetic image.

    Attributes:
        patient_ids: patient id of the best match, per sample.
        similarity: cosine similarity of the sample to that patient's most similar image.
    """

    patient_ids: np.ndarray
    similarity: np.ndarray


def match_patients(
    verifier: PatientVerifier, samples: np.ndarray, gallery_images: np.ndarray, gallery_patient_ids: np.ndarray
) -> PatientMatches:
    """Link each sample to the gallery patient whose most similar image is closest in embedding.

    ``release`` uses it with the member images as the gallery: a high ``similarity`` means a sample
    looks like a specific training patient.

    Args:
        verifier: a trained :class:`PatientVerifier`.
        samples: uint8 M×S×S synthetic images.
        gallery_images: uint8 G×S×S real images; ``gallery_patient_ids`` their patients (length G).

    Returns:
        :class:`PatientMatches`.

    Raises:
        CxrsynthError: for an empty gallery or mismatched lengths.
    """
    gallery_patient_ids = np.asarray(gallery_patient_ids)
    if len(gallery_images) == 0 or len(gallery_images) != len(gallery_patient_ids):
        raise CxrsynthError(f"gallery of {len(gallery_images)} images with {len(gallery_patient_ids)} patient ids")
    similarity = verifier.embed(samples) @ verifier.embed(gallery_images).T
    best = similarity.argmax(axis=1)
    return PatientMatches(patient_ids=gallery_patient_ids[best], similarity=similarity[np.arange(len(samples)), best])


@dataclass
class MemberGallery:
    """Every member image embedded once by a verification network that never saw a member.

    Attributes:
        verifier: the trained :class:`PatientVerifier`.
        embeddings: L2-normalised embeddings of every member image (float32 N×D, rows in sorted order).
        patient_ids: the patient of each embedded image.
        train_patients: patients the network was trained on (holdout and test, minus any excluded).
    """

    verifier: PatientVerifier
    embeddings: np.ndarray
    patient_ids: np.ndarray
    train_patients: list[str]

    def match(self, samples: np.ndarray, chunk: int = 4096) -> PatientMatches:
        """The most similar member patient of each sample (cosine similarity, ``chunk`` members at a time).

        Args:
            samples: uint8 M×S×S images.
            chunk: member embeddings compared per block (bounds memory at M × chunk floats).

        Returns:
            :class:`PatientMatches` over the member patients.
        """
        queries = self.verifier.embed(samples)
        best = np.full(len(samples), -np.inf)
        best_patient = np.empty(len(samples), dtype=object)
        for start in range(0, len(self.embeddings), chunk):
            similarity = queries @ self.embeddings[start : start + chunk].T
            position = similarity.argmax(axis=1)
            value = similarity[np.arange(len(samples)), position]
            better = value > best
            best[better] = value[better]
            best_patient[better] = self.patient_ids[start + position[better]]
        return PatientMatches(patient_ids=best_patient, similarity=best)


def member_gallery(
    data: PreparedData,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    device=None,
    exclude_patients: Collection[str] = (),
    chunk: int = 4096,
    progress: bool = False,
) -> MemberGallery:
    """Train the verification network on non-member patients and embed every member image.

    Args:
        data: the run's prepared data.
        seed: seed of the network.
        steps: its training steps.
        device: where to train and embed.
        exclude_patients: holdout/test patients kept out of training (e.g. to calibrate a threshold on
            patients the network never saw).
        chunk: member images read and embedded per block.
        progress: show a progress bar while training.

    Returns:
        The :class:`MemberGallery`.

    Raises:
        CxrsynthError: when there are no member images or too few non-member patients to train on.
    """
    member_rows = np.sort(data.rows("member"))
    if len(member_rows) == 0:
        raise CxrsynthError(f"{data.root} has no member images to compare the samples with")
    excluded = set(exclude_patients)
    pool = sorted((set(data.patient_rows("holdout")) | set(data.patient_rows("test"))) - excluded)
    rows, patients = _rows_of(data, pool)
    config = VerifierConfig(input_size=min(MAX_INPUT_SIZE, data.size), steps=steps, seed=seed)
    verifier = train_patient_verifier(np.asarray(data.images[rows]), patients, config, device, progress)
    embeddings = np.concatenate([verifier.embed(np.asarray(data.images[member_rows[start : start + chunk]]))
                                 for start in range(0, len(member_rows), chunk)])
    member_patients = data.index["patient_id"].to_numpy()[member_rows]
    return MemberGallery(verifier=verifier, embeddings=embeddings, patient_ids=member_patients, train_patients=pool)


def score_against_members(
    data: PreparedData,
    samples: np.ndarray,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    device=None,
    chunk: int = 4096,
) -> PatientMatches:
    """The most similar *member* patient of each sample, for deciding what may be released.

    Trains the verification network on every ``holdout`` and ``test`` patient (never on members),
    then compares each sample with every member image (:func:`member_gallery`).

    Args:
        data: the run's prepared data.
        samples: uint8 M×S×S synthetic images.
        seed: seed of the network.
        steps: its training steps.
        device: where to train and embed.
        chunk: member images embedded per block.

    Returns:
        :class:`PatientMatches` over the member patients: a high ``similarity`` means the sample
        looks like a specific training patient.

    Raises:
        CxrsynthError: when there are no member images or too few non-member patients to train on.
    """
    return member_gallery(data, seed=seed, steps=steps, device=device, chunk=chunk).match(samples, chunk)


@dataclass(frozen=True)
class ReidentificationPlan:
    """Which patients play which role (all ids are ``patient_id`` strings).

    Attributes:
        gallery_members, gallery_holdout: the two equal gallery halves.
        train_patients: patients whose pairs train the network (test + holdout outside the gallery).
        verification_patients: unseen patients whose pairs measure the verification AUC.
    """

    gallery_members: list[str]
    gallery_holdout: list[str]
    train_patients: list[str]
    verification_patients: list[str]


def plan_reidentification(data: PreparedData, seed: int, max_gallery: int = DEFAULT_MAX_GALLERY) -> ReidentificationPlan:
    """Choose gallery and training patients (see the module docstring).

    Raises:
        CxrsynthError: when there are no member or fewer than two holdout patients.
    """
    rng = np.random.default_rng([seed, 47])
    members = sorted(data.patient_rows("member"))
    holdout = sorted(data.patient_rows("holdout"))
    test = sorted(data.patient_rows("test"))
    size = min(max_gallery, len(members), len(holdout) // 2)
    if size < 1:
        raise CxrsynthError(
            f"re-identification needs member patients and at least 2 holdout patients "
            f"(found {len(members)} and {len(holdout)})"
        )
    gallery_members = sorted(rng.choice(members, size=size, replace=False).tolist())
    gallery_holdout = sorted(rng.choice(holdout, size=size, replace=False).tolist())
    pool = sorted(set(test) | (set(holdout) - set(gallery_holdout)))
    pool = rng.permutation(pool).tolist()
    n_verification = max(1, int(round(VERIFICATION_FRACTION * len(pool))))
    return ReidentificationPlan(gallery_members, gallery_holdout, sorted(pool[n_verification:]), sorted(pool[:n_verification]))


def _rows_of(data: PreparedData, patients: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Image rows of ``patients`` and, per row, the patient's position in ``patients``."""
    lookup = {patient: i for i, patient in enumerate(patients)}
    selected = data.index[data.index["patient_id"].isin(lookup)]
    return selected["row"].to_numpy(dtype=np.int64), selected["patient_id"].map(lookup).to_numpy(dtype=np.int64)


def reidentify(
    data: PreparedData,
    synthetic: np.ndarray,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    max_gallery: int = DEFAULT_MAX_GALLERY,
    device=None,
    progress: bool = False,
) -> dict:
    """Train the verification network, check it, and link every synthetic image to a gallery patient.

    Args:
        data: the run's prepared data.
        synthetic: uint8 M×S×S synthetic images.
        seed: seed of the patient choices and of the network.
        steps: training steps of the network.
        max_gallery: most patients per gallery half.
        device: where to train.
        progress: show a progress bar.

    Returns:
        The JSON-ready ``reidentification`` dict of audit.json (keys in :mod:`cxrsynth.audit.runner`).

    Raises:
        CxrsynthError: when the data has too few patients for a gallery or for training.
    """
    from cxrsynth.audit.hypothesis import linked_patients_p

    plan = plan_reidentification(data, seed, max_gallery)
    config = VerifierConfig(input_size=min(MAX_INPUT_SIZE, data.size), steps=steps, seed=seed)
    train_rows, train_patients = _rows_of(data, plan.train_patients)
    verifier = train_patient_verifier(np.asarray(data.images[train_rows]), train_patients, config, device, progress)
    check_rows, check_patients = _rows_of(data, plan.verification_patients)
    if len(_multi_image_patients(check_patients)) == 0:
        raise CxrsynthError("no held-out patient with two images to measure the verification AUC on")
    auc, positive_pairs = verification_auc(verifier, np.asarray(data.images[check_rows]), check_patients, seed)

    gallery = plan.gallery_members + plan.gallery_holdout
    gallery_rows, gallery_positions = _rows_of(data, gallery)
    matches = match_patients(verifier, synthetic, np.asarray(data.images[gallery_rows]), gallery_positions)
    linked_member = matches.patient_ids < len(plan.gallery_members)
    count = int(linked_member.sum())
    n_member_images = int((gallery_positions < len(plan.gallery_members)).sum())
    return {
        "verification_auc": auc,
        "verification_pairs": positive_pairs,
        "n_train_patients": int(verifier.info["n_train_patients"]),
        "n_verification_patients": len(plan.verification_patients),
        "gallery_patients_per_split": len(plan.gallery_members),
        "gallery_images": {"member": n_member_images, "holdout": int(len(gallery_rows) - n_member_images)},
        "n_synthetic": int(len(synthetic)),
        "linked_to_member": count,
        "fraction_linked_to_member": count / len(synthetic),
        "fraction_linked_to_holdout": 1.0 - count / len(synthetic),
        "p_value": linked_patients_p(matches.patient_ids, np.arange(len(gallery)),
                                     np.arange(len(gallery)) < len(plan.gallery_members), seed=seed),
        "test": "synthetic images linked to member patients vs random relabellings of the gallery patients",
        "mean_similarity": float(np.mean(matches.similarity)),
        "network": {
            "steps": config.steps, "input_size": config.input_size, "embedding_dim": config.embedding_dim,
            "seconds": verifier.info["seconds"], "final_loss": verifier.info["final_loss"], "seed": seed,
        },
    }
