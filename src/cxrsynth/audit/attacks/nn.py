"""``nn`` and ``nn_domain``: black-box nearest-neighbour attacks on the released synthetic images.

An attacker who holds only the synthetic images and a candidate's radiograph measures how close
the candidate is to its nearest synthetic image (Chen et al., GAN-Leaks, CCS 2020, full black-box).
A generator that reproduces its training images puts members closer: lower ⇒ member. No UNet
evaluations.

* ``nn`` — pixel ℓ2 between normalised images (see :mod:`cxrsynth.audit.memorization`);
* ``nn_domain`` — ℓ2 between domain-classifier features (trained on the ``test`` split, so that
  neither members nor non-members are in-sample for it).
"""

from __future__ import annotations

import numpy as np

from cxrsynth.audit.memorization import nearest_neighbours, pixel_vectors
from cxrsynth.audit.registry import NEEDS_FEATURES, NEEDS_SAMPLES, AttackContext, register_attack


@register_attack(
    "nn", access="black-box", member_if="lower",
    description="pixel distance (normalised images) to the nearest synthetic image",
    needs=(NEEDS_SAMPLES,),
)
def pixel_nn_scores(context: AttackContext) -> np.ndarray:
    """Distance from each audited image to its nearest synthetic image, in normalised pixels."""
    return nearest_neighbours(pixel_vectors(context.images), pixel_vectors(context.synthetic))[0][:, 0]


@register_attack(
    "nn_domain", access="black-box", member_if="lower",
    description="domain-feature distance to the nearest synthetic image",
    needs=(NEEDS_SAMPLES, NEEDS_FEATURES),
)
def feature_nn_scores(context: AttackContext) -> np.ndarray:
    """Distance from each audited image to its nearest synthetic image, in domain-classifier features."""
    return nearest_neighbours(context.features(context.images), context.features(context.synthetic))[0][:, 0]
