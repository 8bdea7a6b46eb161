"""Artefact rate: real images score about their quantile; speckled images are counted, not averaged away."""

from __future__ import annotations

import numpy as np
import pytest

from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate.artefacts import artefact_rates, noise_scores
from cxrsynth.report.verdict import realism_answer
from tests.factories import smooth_patient_images


def _real(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([smooth_patient_images(rng, 4, 32) for _ in range(count // 4)])


def _speckle(images: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Salt-and-pepper on ``share`` of the pixels, as seen in broken DDIM samples."""
    rng = np.random.default_rng(seed)
    noisy = images.copy()
    mask = rng.random(images.shape) < share
    noisy[mask] = rng.choice(np.array([0, 255], dtype=np.uint8), size=int(mask.sum()))
    return noisy


def test_real_images_score_about_the_quantile_and_speckled_ones_are_flagged() -> None:
    reference, baseline, clean = _real(2000, 0), _real(2000, 1), _real(200, 2)
    speckled = _speckle(clean[:20], 0.05, seed=3)
    synthetic = np.concatenate([clean[20:], speckled])
    rates = artefact_rates(synthetic, reference, baseline)
    assert rates.real_baseline == pytest.approx(0.005, abs=0.006), "real images score ≈ 0.5% by construction"
    clean_only = artefact_rates(clean[20:], reference, baseline)
    assert rates.count - clean_only.count == 20, "every speckled image is counted"
    assert clean_only.rate <= 0.03, "clean images exceed the real 99.5% quantile about as often as real ones"
    assert rates.n_reference == 2000 and rates.n_synthetic == 200 and rates.quantile == 0.995
    scores = noise_scores(np.concatenate([clean[:20], speckled]))
    assert (scores[20:] > scores[:20] + 3).all(), "5% salt-and-pepper raises the score by several gray levels"


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(CxrsynthError, match="uint8"):
        noise_scores(np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(CxrsynthError, match="one size"):
        artefact_rates(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 16, 16), np.uint8), np.zeros((2, 8, 8), np.uint8))


FIDELITY = {"fd_domain": 1.0, "fd_domain_real_baseline": 1.0, "fd_domain_ci": [0.9, 1.1], "n_real": 200,
            "n_synthetic": 200, "reference": "test", "baseline_split": "holdout", "n_real_baseline": 200, "precision_domain": 0.8, "precision_domain_real_baseline": 0.8,
            "recall_domain": 0.8, "recall_domain_real_baseline": 0.8, "image_size": 32}


@pytest.mark.parametrize(("rate", "level"), [(0.005, "good"), (0.05, "caution"), (0.2, "bad")])
def test_the_realism_verdict_counts_broken_samples(rate: float, level: str) -> None:
    found = {"rate": rate, "count": int(rate * 200), "n_synthetic": 200, "real_baseline": 0.005,
             "n_real_baseline": 200, "quantile": 0.995, "threshold": 9.0, "n_reference": 200}
    answer = realism_answer({**FIDELITY, "artefacts": found}, "cxrsynth evaluate")
    assert answer.level == level
    assert any(f"({rate:.1%}) carry pixel-level noise" in line for line in answer.evidence)
