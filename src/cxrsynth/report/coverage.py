"""What a DP run's (ε, δ) guarantee does not cover, and the words the report puts next to it.

The guarantee covers the trained model and whatever is computed from the model alone (synthetic
images and their comparison with never-trained-on images, ε against step, which depends only on the
noise and sampling schedule). It does not cover what is computed from the member images directly:

* the training log's loss (the members' un-noised loss) and throughput (img/s, hence the training
  time: it reveals the realised batch sizes of Poisson sampling);
* the evaluation's domain classifier (trained on the members): ``fd_domain``, ``precision_domain``,
  ``recall_domain`` and the domain-feature plot; the TRTR classifier (trained on the members): the
  TRTR AUROC and the TSTR/TRTR ratio; every fidelity number when the reference split is ``member``;
* the audit: every number in it compares the model with the member images;
* real images: they are real patients (the memorization pairs show training images);
* the member split's image count and its findings list (the number of privacy units is treated
  as public; the number of images per patient and which findings occur are not).

The report labels each of these, right where it is shown, with :data:`NOT_COVERED` (or the fidelity
table's :data:`MARK`); the training seed of a DP run is never printed (:func:`show_training_seed`).
One home for these rules, so the HTML page, the model card and the verdict say the same.
"""

from __future__ import annotations

from typing import Sequence

NOT_COVERED = "not covered by the DP guarantee"

MARK = "†"
"""Marks a fidelity-table row computed with a model trained on the members (see :func:`mark_fidelity_rows`)."""

LOSS_LABEL = f"{NOT_COVERED}: the un-noised training loss of the member images"
THROUGHPUT_LABEL = f"{NOT_COVERED}: the logged throughput reflects the realised batch sizes"
DOMAIN_LABEL = f"{NOT_COVERED}: computed with a classifier trained on the member images"
TRTR_LABEL = f"TRTR and the ratio are {NOT_COVERED}: the TRTR classifier is trained on the member images"
AUDIT_LABEL = (f"The audit's numbers are {NOT_COVERED}: every attack, the memorization test and re-identification "
               "compare the model with the member images themselves.")
REAL_IMAGES_LABEL = f"real patients, not synthetic: {NOT_COVERED}"
MEMBER_IMAGES_LABEL = (f"{NOT_COVERED}: the exact member image count (only the number of privacy units is treated "
                      "as public)")
FINDINGS_LABEL = f"{NOT_COVERED}: the findings present in the prepared data, member images included"

SEED_HIDDEN = "not shown for a DP run (it stays in the run folder's config.yaml)"

MEMBER_TRAINED_METRICS: tuple[str, ...] = ("FD (domain)", "precision (domain", "recall (domain", "AUROC macro",
                                           "utility ratio")
"""Prefixes of the fidelity-table metrics (:func:`cxrsynth.evaluate.table.table_rows`) that use a classifier
trained on the member images (the domain classifier, the TRTR classifier)."""


def show_training_seed(dp: bool) -> bool:
    """Whether an artefact meant to leave the run folder may name the training seed (never for a DP run)."""
    return not dp


def fidelity_row_private(metric: str, fidelity: dict) -> bool:
    """True when a fidelity-table row is computed from the member images (so not covered by DP)."""
    return fidelity.get("reference") == "member" or metric.startswith(MEMBER_TRAINED_METRICS)


def mark_fidelity_rows(rows: Sequence[Sequence[str]], fidelity: dict, dp: bool) -> list[tuple[str, ...]]:
    """The fidelity table's rows, each row not covered by DP marked with :data:`MARK` (unchanged without DP)."""
    if not dp:
        return [tuple(row) for row in rows]
    return [(f"{row[0]} {MARK}", *row[1:]) if fidelity_row_private(row[0], fidelity) else tuple(row) for row in rows]


def fidelity_footnote(fidelity: dict) -> str:
    """The note under a DP run's fidelity table explaining :data:`MARK`."""
    if fidelity.get("reference") == "member":
        return (f"{MARK} {NOT_COVERED}: the reference images are the member images, so every number here is computed "
                "from them.")
    return (f"{MARK} {NOT_COVERED}: computed with a classifier trained on the member images (the domain classifier; "
            "the TRTR classifier). The other rows compare the DP model's images with never-trained-on images.")


def conditioning_text(config, label_sets: int | None) -> str:
    """How a run conditions on labels, in words that are true for both vocabulary kinds.

    A DP run (or one given ``--findings``) fixes its label sets from the public schema; the others
    take them from the member split (:mod:`cxrsynth.model.conditioning`).
    """
    if not config.conditional:
        return "unconditional"
    sets = f" ({label_sets} sets)" if label_sets is not None else ""
    if config.dp or config.findings is not None:
        return (f"label-conditional: one class per set of at most {config.max_label_findings} findings of the public "
                f"label schema{sets}, fixed before training (no counts), plus a null class for classifier-free guidance")
    return (f"label-conditional: one class per finding label set seen in the member split{sets} plus a null class "
            "for classifier-free guidance")


def release_advice(dp: bool) -> str:
    """What ``cxrsynth release`` does with this run's images, for the sentences that recommend it."""
    if not dp:
        return "it drops near-copies of training images and images linked to training patients"
    return ("a DP run's images are released unscreened, covered by (ε, δ); with `--screen` it also drops near-copies "
            "and images linked to training patients, but the release is then no longer covered by the guarantee")
