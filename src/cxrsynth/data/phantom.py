"""The built-in phantom dataset: synthetic frontal chest radiographs in the NIH ChestX-ray14 layout.

There is no internet on many hospital servers, so the pipeline must be able to run on a dataset
it makes itself. :func:`generate_phantom` writes::

    OUT/images/00000001_000.png …        8-bit grayscale, <8-digit patient>_<3-digit follow-up>
    OUT/Data_Entry_2017.csv              the real NIH header, one row per image
    OUT/train_val_list.txt, test_list.txt  about 80/20 by patient, disjoint

so the phantom and the real dataset go through the same ``prepare --format nih`` code path.

How an image is made (all in numpy, vectorised, at the target size):

* Each patient gets an individual :class:`PatientAnatomy` (thorax, lungs, heart, ribs, clavicles,
  spine, sex-dependent body shape) and patient-specific random layers (pulmonary vessel tree,
  fine tissue texture). These are rendered once per patient as an *attenuation* map on a canonical
  grid in coordinates normalised to [0, 1], so any image size works.
* Each study (follow-up) adds the heart (size depends on view and Cardiomegaly) and the findings,
  then positions the patient (small shift, rotation, scale) with one affine warp, turns
  attenuation into film brightness with a study-specific exposure, and adds film-like noise.

Because anatomy and texture are fixed per patient while positioning, exposure, noise and findings
vary per study, follow-ups of one patient resemble each other more than they resemble other
patients: the privacy audit relies on that.

Everything is drawn from ``numpy.random.default_rng([seed, …])`` streams keyed by patient and
study, so the output is byte-identical for a seed.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from cxrsynth.data.prepared import join_labels
from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import atomic_directory

FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Nodule", "Pneumothorax", "Consolidation")

#: Image-level frequencies of these labels in NIH ChestX-ray14 (Wang et al. 2017, 112,120 images).
DEFAULT_PREVALENCE: dict[str, float] = {
    "Cardiomegaly": 0.025,
    "Effusion": 0.119,
    "Nodule": 0.056,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
}

NIH_CSV_NAME = "Data_Entry_2017.csv"
NIH_CSV_HEADER: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
IMAGES_DIR = "images"
TEST_FRACTION = 0.2
MIN_SIZE, MAX_SIZE = 32, 1024
#: Width of the film in millimetres, for the pixel-spacing column (NIH films are ~35-43 cm).
FILM_WIDTH_MM = 400.0
#: Canonical anatomy grids extend this far beyond [0, 1] so positioning never exposes an edge.
_MARGIN = 0.12
_VIEWER_LEFT, _VIEWER_RIGHT = 0, 1  # patient's right lung, patient's left lung (the heart side)
_SIDE_SIGN = (-1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def parse_prevalence(text: str) -> dict[str, float]:
    """Parse a prevalence override such as ``'Cardiomegaly=0.2,Nodule=0.05'``.

    Args:
        text: comma-separated ``Finding=probability`` pairs; names as in :data:`FINDINGS`
            (case-insensitive), probabilities in [0, 1]. Empty text gives an empty dict.

    Returns:
        The overridden findings with their per-image probabilities (canonical spelling).

    Raises:
        CxrsynthError: for a malformed pair, an unknown finding, a repeated finding, or a value
            that is not a number in [0, 1].
    """
    canonical = {name.lower(): name for name in FINDINGS}
    fix = f"write e.g. 'Cardiomegaly=0.2,Nodule=0.05'; findings are {', '.join(FINDINGS)}; values in [0, 1]"
    result: dict[str, float] = {}
    for pair in (part.strip() for part in text.split(",")):
        if not pair:
            continue
        name, sep, value_text = pair.partition("=")
        if not sep:
            raise CxrsynthError(f"prevalence entry {pair!r} is not of the form Finding=probability", fix)
        name = name.strip()
        if name.lower() not in canonical:
            raise CxrsynthError(f"unknown finding {name!r} in prevalence {text!r}", fix)
        name = canonical[name.lower()]
        if name in result:
            raise CxrsynthError(f"finding {name} is given twice in prevalence {text!r}", fix)
        try:
            value = float(value_text)
        except ValueError:
            raise CxrsynthError(f"prevalence of {name} is {value_text.strip()!r}, not a number", fix) from None
        if not 0.0 <= value <= 1.0:
            raise CxrsynthError(f"prevalence of {name} is {value}, outside [0, 1]", fix)
        result[name] = value
    return result


def _resolve_prevalence(override: dict[str, float] | None) -> dict[str, float]:
    """The default prevalences with ``override`` applied, validated like :func:`parse_prevalence`."""
    prevalence = dict(DEFAULT_PREVALENCE)
    for name, value in (override or {}).items():
        if name not in prevalence:
            raise CxrsynthError(f"unknown finding {name!r} in prevalence", f"findings are {', '.join(FINDINGS)}")
        if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
            raise CxrsynthError(f"prevalence of {name} is {value!r}, outside [0, 1]", "use a probability in [0, 1]")
        prevalence[name] = float(value)
    return prevalence


# ---------------------------------------------------------------------------------------------
# Patients and studies
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientAnatomy:
    """One patient's body, in image coordinates normalised to [0, 1] (x to the viewer's right, y down).

    Per-side tuples are (viewer's left = patient's right lung, viewer's right = patient's left lung).
    ``texture_seed`` seeds the patient's vessel tree and fine tissue texture.
    """

    sex: str
    age: int
    midline: float
    thorax_half_width: float
    thorax_taper: float
    shoulder_y: float
    neck_half_width: float
    body_thickness: float
    lung_apex_y: tuple[float, float]
    lung_base_y: tuple[float, float]
    lung_medial: tuple[float, float]
    lung_lateral: tuple[float, float]
    lung_widening: float
    dome_height: tuple[float, float]
    heart_left_extent: float
    heart_right_extent: float
    heart_widest_y: float
    heart_half_height: float
    aortic_knob: float
    rib_top_y: float
    rib_spacing: float
    rib_spacing_growth: float
    rib_half_thickness: float
    rib_rise: float
    rib_drop: float
    anterior_rib_slope: float
    clavicle_y: float
    clavicle_slope: float
    clavicle_half_thickness: float
    spine_half_width: float
    vertebra_period: float
    vertebra_phase: float
    carina_y: float
    trachea_half_width: float
    hilum_y: tuple[float, float]
    bone_density: float
    breast_radius: float
    breast_y: float
    stomach_bubble: float
    ap_propensity: float
    texture_seed: int


@dataclass(frozen=True)
class FindingSites:
    """Where a patient's findings appear when a study has them (fixed per patient, so they recur in place)."""

    cardiomegaly_scale: float
    effusion_sides: tuple[int, ...]
    nodule_center: tuple[float, float]
    nodule_radius: float
    pneumothorax_side: int
    consolidation_center: tuple[float, float]
    consolidation_radii: tuple[float, float]


@dataclass(frozen=True)
class Study:
    """One image: its identity, metadata, findings, and how it was acquired."""

    patient_id: int
    follow_up: int
    age: int
    view: str
    findings: tuple[str, ...]
    shift: tuple[float, float]  # (x, y), fractions of the film
    rotation: float  # radians
    scale: float
    exposure: float
    window: tuple[float, float]
    gamma: float
    noise: float
    effusion_height: float
    pneumothorax_collapse: float
    consolidation_extent: float
    noise_seed: int

    @property
    def image_name(self) -> str:
        """NIH-style file name, e.g. ``00000001_000.png``."""
        return f"{self.patient_id:08d}_{self.follow_up:03d}.png"


@dataclass(frozen=True)
class PatientPlan:
    """A patient with their anatomy, finding sites and studies."""

    patient_id: int
    anatomy: PatientAnatomy
    sites: FindingSites
    studies: tuple[Study, ...]


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent random stream for (seed, keys…), so any patient or study can be redrawn alone."""
    return np.random.default_rng([seed % (1 << 64), *keys])


def sample_anatomy(rng: np.random.Generator) -> PatientAnatomy:
    """Draw one patient's individual anatomy.

    Args:
        rng: the patient's random stream.

    Returns:
        A :class:`PatientAnatomy`; men have broader, less tapered thoraces and larger hearts,
        women narrower shoulders and breast shadows over the lung bases.
    """
    sex = "M" if rng.random() < 0.56 else "F"
    male = sex == "M"
    age = int(np.clip(rng.normal(47.0, 17.0), 2, 94))
    thorax = rng.normal(0.41 if male else 0.385, 0.03)
    apex = rng.normal(0.155, 0.02)
    base = rng.normal(0.785, 0.03)
    base_asymmetry = rng.uniform(0.0, 0.02)
    lateral = thorax - rng.uniform(0.035, 0.05)
    heart_width = rng.normal(0.205 if male else 0.19, 0.018)
    rib_span = base - 0.09 - apex
    return PatientAnatomy(
        sex=sex,
        age=age,
        midline=float(0.5 + rng.normal(0.0, 0.01)),
        thorax_half_width=float(thorax),
        thorax_taper=float(rng.uniform(0.0, 0.03) if male else rng.uniform(0.02, 0.06)),
        shoulder_y=float(rng.normal(0.12, 0.02)),
        neck_half_width=float(rng.normal(0.085 if male else 0.075, 0.006)),
        body_thickness=float(rng.normal(1.0, 0.1)),
        lung_apex_y=(float(apex + rng.normal(0, 0.005)), float(apex + rng.normal(0, 0.005))),
        lung_base_y=(float(base - base_asymmetry), float(base + rng.normal(0, 0.005))),
        lung_medial=(float(rng.normal(0.07, 0.009)), float(rng.normal(0.075, 0.009))),
        lung_lateral=(float(lateral + rng.normal(0, 0.006)), float(lateral + rng.normal(0, 0.006))),
        lung_widening=float(rng.uniform(0.75, 1.0)),
        dome_height=(float(rng.uniform(0.05, 0.08)), float(rng.uniform(0.045, 0.075))),
        heart_left_extent=float(heart_width + rng.normal(0.0, 0.008)),
        heart_right_extent=float(rng.normal(0.112, 0.008)),
        heart_widest_y=float(base - rng.normal(0.085, 0.01)),
        heart_half_height=float(rng.normal(0.24, 0.015)),
        aortic_knob=float(rng.uniform(0.025, 0.045)),
        rib_top_y=float(apex + rng.normal(0.005, 0.006)),
        rib_spacing=float(rib_span / 9.0 * rng.uniform(0.9, 1.0)),
        rib_spacing_growth=float(rng.uniform(0.0, 0.06)),
        rib_half_thickness=float(rng.uniform(0.010, 0.014)),
        rib_rise=float(rng.uniform(0.03, 0.05)),
        rib_drop=float(rng.uniform(0.07, 0.11)),
        anterior_rib_slope=float(rng.uniform(0.45, 0.75)),
        clavicle_y=float(apex + rng.normal(0.06, 0.01)),
        clavicle_slope=float(rng.uniform(0.2, 0.35)),
        clavicle_half_thickness=float(rng.uniform(0.014, 0.019)),
        spine_half_width=float(rng.uniform(0.026, 0.034)),
        vertebra_period=float(rib_span / 9.0 * rng.uniform(0.95, 1.05)),
        vertebra_phase=float(rng.uniform(0.0, 1.0)),
        carina_y=float(apex + rng.normal(0.19, 0.012)),
        trachea_half_width=float(rng.uniform(0.013, 0.018)),
        hilum_y=(float(apex + rng.normal(0.27, 0.012)), float(apex + rng.normal(0.25, 0.012))),
        bone_density=float(np.clip(rng.normal(1.0, 0.08) - 0.004 * max(0, age - 50), 0.65, 1.25)),
        breast_radius=0.0 if male else float(rng.uniform(0.1, 0.16)),
        breast_y=float(base - rng.uniform(0.1, 0.15)),
        stomach_bubble=float(rng.uniform(0.0, 1.0) if rng.random() < 0.7 else 0.0),
        # In-patients are filmed AP at the bedside again and again, out-patients PA: ~40% AP overall as in NIH.
        ap_propensity=float(rng.uniform(0.75, 0.95) if rng.random() < 0.4 else rng.uniform(0.0, 0.15)),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_finding_sites(rng: np.random.Generator, anatomy: PatientAnatomy) -> FindingSites:
    """Draw where each finding would sit in this patient (inside the lungs)."""
    side = int(rng.integers(0, 2))
    nodule = _point_in_lung(rng, anatomy, side, zone=(0.15, 0.85))
    cons_side = int(rng.integers(0, 2))
    consolidation = _point_in_lung(rng, anatomy, cons_side, zone=(0.35, 0.9))
    effusion_choice = rng.choice(3, p=(0.45, 0.35, 0.2))
    effusion_sides = ((_VIEWER_LEFT,), (_VIEWER_RIGHT,), (_VIEWER_LEFT, _VIEWER_RIGHT))[int(effusion_choice)]
    return FindingSites(
        cardiomegaly_scale=float(rng.uniform(1.35, 1.6)),
        effusion_sides=effusion_sides,
        nodule_center=nodule,
        nodule_radius=float(rng.uniform(0.014, 0.024)),
        pneumothorax_side=int(rng.integers(0, 2)),
        consolidation_center=consolidation,
        consolidation_radii=(float(rng.uniform(0.055, 0.085)), float(rng.uniform(0.045, 0.07))),
    )


def _point_in_lung(
    rng: np.random.Generator, anatomy: PatientAnatomy, side: int, zone: tuple[float, float]
) -> tuple[float, float]:
    """A random point well inside one lung, between fractions ``zone`` of its height."""
    apex, base = anatomy.lung_apex_y[side], anatomy.lung_base_y[side]
    sign = _SIDE_SIGN[side]
    for _ in range(200):
        y = apex + (base - apex) * rng.uniform(*zone)
        q = rng.uniform(anatomy.lung_medial[side], anatomy.lung_lateral[side])
        x = anatomy.midline + sign * q
        inside = _lung_mask(anatomy, side, np.array([[x]]), np.array([[y]]), edge=0.004)[0, 0]
        heart = _mediastinum_cover(anatomy, side, np.array([[x]]), np.array([[y]]), 1.0, edge=0.004)[0, 0]
        if inside > 0.99 and heart < 0.01:
            return float(x), float(y)
    return float(anatomy.midline + sign * (anatomy.lung_medial[side] + anatomy.lung_lateral[side]) / 2), float(
        (apex + base) / 2
    )


def _study_count(rng: np.random.Generator, mean: float) -> int:
    """Studies for one patient: between 1 and 2×mean, with expectation ``mean``."""
    value = rng.uniform(1.0, 2.0 * mean - 1.0)
    low = math.floor(value)
    return int(low + (rng.random() < value - low))


def plan_patient(
    seed: int, patient_index: int, studies_per_patient: float, prevalence: dict[str, float]
) -> PatientPlan:
    """Draw one patient: anatomy, finding sites, and all studies (deterministic in seed and index).

    Args:
        seed: dataset seed.
        patient_index: 0-based patient number (patient ID is ``patient_index + 1``).
        studies_per_patient: mean number of studies.
        prevalence: per-image probability of each finding in :data:`FINDINGS`.

    Returns:
        The :class:`PatientPlan`.
    """
    rng = _rng(seed, 1, patient_index)
    anatomy = sample_anatomy(rng)
    sites = sample_finding_sites(rng, anatomy)
    count = _study_count(rng, studies_per_patient)
    patient_id = patient_index + 1
    studies = []
    age = anatomy.age
    for follow_up in range(count):
        study_rng = _rng(seed, 2, patient_index, follow_up)
        if follow_up:
            age = min(99, age + int(study_rng.random() < 0.3))
        view = "AP" if study_rng.random() < anatomy.ap_propensity else "PA"
        findings = tuple(name for name in FINDINGS if study_rng.random() < prevalence[name])
        studies.append(
            Study(
                patient_id=patient_id,
                follow_up=follow_up,
                age=age,
                view=view,
                findings=findings,
                shift=(float(study_rng.normal(0, 0.007)), float(study_rng.normal(0, 0.007))),
                rotation=float(study_rng.normal(0, math.radians(1.0))),
                scale=float((1.04 if view == "AP" else 1.0) * (1 + study_rng.normal(0, 0.012))),
                exposure=float(study_rng.uniform(1.45, 1.8)),
                window=(float(study_rng.normal(0.25, 0.03)), float(study_rng.normal(0.95, 0.02))),
                gamma=float(study_rng.uniform(0.85, 1.2)),
                noise=float(study_rng.uniform(0.01, 0.025) * (1.3 if view == "AP" else 1.0)),
                effusion_height=float(study_rng.uniform(0.1, 0.22)),
                pneumothorax_collapse=float(study_rng.uniform(0.68, 0.85)),
                consolidation_extent=float(study_rng.uniform(0.8, 1.2)),
                noise_seed=int(study_rng.integers(0, 2**31 - 1)),
            )
        )
    return PatientPlan(patient_id=patient_id, anatomy=anatomy, sites=sites, studies=tuple(studies))


# ---------------------------------------------------------------------------------------------
# Geometry on the canonical grid
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Canonical sampling grid covering [-margin, 1+margin]² at ``size`` pixels per unit."""

    size: int
    n: int
    x: np.ndarray  # 1-D coordinates of columns
    y: np.ndarray  # 1-D coordinates of rows
    X: np.ndarray = field(repr=False)
    Y: np.ndarray = field(repr=False)

    @classmethod
    def for_size(cls, size: int) -> _Grid:
        n = int(math.ceil(size * (1 + 2 * _MARGIN)))
        coords = ((np.arange(n, dtype=np.float32) + 0.5) / size - _MARGIN).astype(np.float32)
        Y, X = np.meshgrid(coords, coords, indexing="ij")
        return cls(size=size, n=n, x=coords, y=coords, X=X, Y=Y)

    @property
    def edge(self) -> float:
        """Softness of drawn edges: about one pixel, so shapes are antialiased at any size."""
        return 0.8 / self.size

    def cols(self, x0: float, x1: float) -> slice:
        """Column slice covering x in [x0, x1]."""
        return slice(*self._span(x0, x1))

    def rows(self, y0: float, y1: float) -> slice:
        """Row slice covering y in [y0, y1]."""
        return slice(*self._span(y0, y1))

    def _span(self, low: float, high: float) -> tuple[int, int]:
        start = min(max(math.floor((low + _MARGIN) * self.size - 0.5), 0), self.n)
        stop = min(max(math.ceil((high + _MARGIN) * self.size + 0.5), 0), self.n)
        return start, max(start, stop)


def _inside(distance: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``distance > 0`` (distance in normalised units): a linear ramp over ±``edge``."""
    return np.clip(0.5 + distance * (0.5 / edge), 0.0, 1.0).astype(np.float32)


def _lung_bounds(anatomy: PatientAnatomy, side: int, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Medial and lateral edges (distance from the midline) of one lung at heights ``Y``.

    The lateral edge widens from a narrow rounded apex down to the costophrenic angle
    (an elliptical arc); the medial edge leaves the apex quickly and runs down the mediastinum.
    """
    medial, lateral = anatomy.lung_medial[side], anatomy.lung_lateral[side]
    apex, base = anatomy.lung_apex_y[side], anatomy.lung_base_y[side]
    apex_q = medial + 0.4 * (lateral - medial)
    t = (Y - apex) / (base - apex)
    lateral_t = np.clip(t / anatomy.lung_widening, 0.0, 1.0)
    medial_t = np.clip(t / 0.22, 0.0, 1.0)
    lateral_edge = apex_q + (lateral - apex_q) * np.sqrt(1.0 - (1.0 - lateral_t) ** 2)
    medial_edge = medial + (apex_q - medial) * (1.0 - medial_t) ** 2
    return medial_edge, lateral_edge


def _diaphragm_y(anatomy: PatientAnatomy, side: int, q: np.ndarray) -> np.ndarray:
    """Height of the diaphragm dome under one lung (lowest at the costophrenic angle)."""
    medial, lateral = anatomy.lung_medial[side], anatomy.lung_lateral[side]
    dome_top = anatomy.lung_base_y[side] - anatomy.dome_height[side]
    dome_centre = medial + 0.42 * (lateral - medial)
    reach = np.abs(q - dome_centre) / (lateral - dome_centre)
    return dome_top + anatomy.dome_height[side] * reach**2.2


def _lung_mask(anatomy: PatientAnatomy, side: int, X: np.ndarray, Y: np.ndarray, edge: float) -> np.ndarray:
    """Soft mask of one lung field: between its medial and lateral edges, below the apex, above the dome."""
    q = _SIDE_SIGN[side] * (X - anatomy.midline)
    medial_edge, lateral_edge = _lung_bounds(anatomy, side, Y)
    above_apex = Y < anatomy.lung_apex_y[side]
    across = np.where(above_apex, -1.0, np.minimum(q - medial_edge, lateral_edge - q))
    return _inside(across, edge) * _inside(_diaphragm_y(anatomy, side, q) - Y, edge)


def _lung_depth(anatomy: PatientAnatomy, side: int, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Relative air thickness inside a lung: thickest mid-lung, thinner at the apex and edges."""
    q = _SIDE_SIGN[side] * (X - anatomy.midline)
    medial_edge, lateral_edge = _lung_bounds(anatomy, side, Y)
    across = np.clip((q - medial_edge) / np.maximum(lateral_edge - medial_edge, 1e-3), 0, 1)
    apex, base = anatomy.lung_apex_y[side], anatomy.lung_base_y[side]
    down = np.clip((Y - apex) / (base - apex), 0, 1)
    across_profile = np.sqrt(np.clip(3.0 * across * (1 - across), 0, 1))
    return (0.6 + 0.4 * across_profile * np.sqrt(np.clip(down * 2.5, 0, 1))).astype(np.float32)


def _mediastinum_cover(
    anatomy: PatientAnatomy, side: int, X: np.ndarray, Y: np.ndarray, heart_scale: float, edge: float
) -> np.ndarray:
    """How much the mediastinum and heart displace one lung, 0..1.

    The mediastinal border of each lung is drawn as a width profile down the chest, so the heart
    merges into the mediastinum above and the diaphragm below as on a real film. On the patient's
    left (viewer's right): aortic knob, then the long convex left-ventricular border; on the right:
    the superior vena cava, then the convex right atrium. ``heart_scale`` widens the heart
    (Cardiomegaly, AP magnification); it also grows somewhat taller.
    """
    q = _SIDE_SIGN[side] * (X - anatomy.midline)
    medial = anatomy.lung_medial[side]
    half_height = anatomy.heart_half_height * (1.0 + 0.35 * (heart_scale - 1.0))
    if side == _VIEWER_RIGHT:
        extent = anatomy.heart_left_extent * heart_scale
        t = (Y - anatomy.heart_widest_y) / half_height
        t = np.where(t > 0, t * 2.5, t)  # the border turns in quickly where the apex meets the dome
        knob_y = anatomy.carina_y - 0.02
        border = (
            medial
            + anatomy.aortic_knob * np.exp(-(((Y - knob_y) / 0.024) ** 2))
            + (extent - medial) * np.clip(1.0 - np.abs(t) ** 1.6, 0, 1) ** 0.75
        )
    else:
        extent = anatomy.heart_right_extent * (1.0 + 0.8 * (heart_scale - 1.0))
        t = (Y - anatomy.heart_widest_y + 0.01) / (0.55 * half_height)
        # Superior vena cava above, widening gently into the convex right atrium.
        vena_cava = 0.012 * np.clip((Y - anatomy.carina_y + 0.08) / 0.15, 0, 1)
        border = medial + vena_cava + (extent - medial - 0.012) * np.clip(1.0 - t**2, 0, 1) ** 0.7
    return _inside(border - q, edge)


def _bones_along_curves(
    grid: _Grid,
    target: np.ndarray,
    sign: float,
    midline: float,
    q_range: tuple[np.ndarray, np.ndarray],
    curve: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    half_thickness: np.ndarray,
    amplitude: np.ndarray,
) -> None:
    """Add K bone bands (ribs, clavicles) on one side of the midline to ``target``, in place.

    Args:
        grid: the canonical grid.
        target: array to add to.
        sign: -1 for the viewer's left, +1 for the viewer's right.
        midline: x of the midline.
        q_range: (start, end) distance from the midline of each band, arrays of shape (K,).
        curve: maps distances from the midline (C,) to band centres y and slopes dy/dq, each (K, C).
        half_thickness, amplitude: per band, shape (K,).

    Each band has a cylinder-like profile with brighter cortical edges. All K bands are computed
    at once over the rows and columns they span, which keeps ribs cheap at every size.
    """
    q_start, q_end = (np.asarray(v, dtype=np.float32) for v in q_range)
    x0, x1 = sorted((midline + sign * float(q_start.min()), midline + sign * float(q_end.max())))
    cols = grid.cols(x0, x1)
    qs = sign * (grid.x[cols] - midline)
    if qs.size == 0:
        return
    centre, slope = curve(qs)
    thickness = np.asarray(half_thickness, dtype=np.float32)[:, None] * np.sqrt(1.0 + slope**2)
    # Ramps over ~0.015 (at least two pixels) fade the band ends in, as bone ends do on a film.
    ramp = max(0.015, 2.0 / grid.size)
    along = np.clip((qs[None, :] - q_start[:, None]) / ramp, 0, 1)
    along *= np.clip((q_end[:, None] - qs[None, :]) / ramp, 0, 1)
    rows = grid.rows(float(np.min(centre - thickness)) - 0.01, float(np.max(centre + thickness)) + 0.01)
    ys = grid.y[rows]
    if ys.size == 0:
        return
    distance = np.abs(ys[None, :, None] - centre[:, None, :]) / thickness[:, None, :]
    marrow = np.sqrt(np.clip(1.0 - distance**2, 0.0, 1.0))
    pixels_across = thickness[:, None, :] * grid.size
    cortex = np.clip(1.0 - ((distance - 0.85) / 0.2) ** 2, 0.0, 1.0) * np.clip(
        (1.0 - distance) * pixels_across + 0.5, 0.0, 1.0
    )
    weight = (np.asarray(amplitude, dtype=np.float32)[:, None] * along)[:, None, :]
    target[rows, cols] += np.sum(weight * (0.65 * marrow + 0.35 * cortex), axis=0, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass
class _PatientLayers:
    """A patient's study-independent attenuation layers on the canonical grid."""

    body: np.ndarray
    extra_soft: np.ndarray
    lung_mask: tuple[np.ndarray, np.ndarray]
    lung_air: tuple[np.ndarray, np.ndarray]
    bones: np.ndarray
    clavicles: dict[str, np.ndarray]
    vessels: np.ndarray
    texture_lung: np.ndarray
    texture_body: np.ndarray
    airway: np.ndarray
    patchiness: np.ndarray
    _mediastinum: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def mediastinum(self, anatomy: PatientAnatomy, grid: _Grid, heart_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-lung mediastinum/heart cover for a heart scale, cached (a patient's studies share few scales)."""
        if heart_scale not in self._mediastinum:
            self._mediastinum[heart_scale] = tuple(  # type: ignore[assignment]
                _mediastinum_cover(anatomy, side, grid.X, grid.Y, heart_scale, grid.edge) for side in (0, 1)
            )
        return self._mediastinum[heart_scale]


def _body_thickness(anatomy: PatientAnatomy, grid: _Grid) -> np.ndarray:
    """Soft-tissue path length through the trunk, neck and arms (elliptical cross-sections)."""
    X, Y = grid.X, grid.Y
    down = np.clip((Y - anatomy.shoulder_y) / (1.0 - anatomy.shoulder_y), 0, 1.2)
    trunk = anatomy.thorax_half_width + 0.05 - anatomy.thorax_taper * down
    # Sloping shoulders: from the neck out to the acromion over the top of the film.
    slope = np.clip((Y - anatomy.shoulder_y + 0.13) / 0.13, 0, 1)
    slope = slope * slope * (3 - 2 * slope)
    half_width = anatomy.neck_half_width + (trunk + 0.02 * (1 - down) - anatomy.neck_half_width) * slope
    across = np.abs(X - anatomy.midline) / half_width
    trunk_t = np.clip(1.0 - across**2, 0, 1) ** 0.5
    # Upper arms hang beside the trunk, separated by a dark gap at the armpit.
    arm_centre = anatomy.thorax_half_width + 0.14
    arm_across = (np.abs(X - anatomy.midline) - arm_centre) / 0.07
    arm_start = _inside(Y - anatomy.shoulder_y, 0.03)
    arm_t = 0.7 * np.clip(1.0 - arm_across**2, 0, 1) ** 0.5 * arm_start
    return (anatomy.body_thickness * np.maximum(trunk_t, arm_t)).astype(np.float32)


def _breasts(anatomy: PatientAnatomy, grid: _Grid) -> np.ndarray:
    """Soft-tissue shadows of the breasts over the lower lung fields (women only)."""
    out = np.zeros_like(grid.X)
    if anatomy.breast_radius <= 0:
        return out
    for sign in _SIDE_SIGN:
        cx = anatomy.midline + sign * (anatomy.lung_lateral[0] * 0.6)
        r = np.hypot((grid.X - cx) / (anatomy.breast_radius * 1.2), (grid.Y - anatomy.breast_y) / anatomy.breast_radius)
        # Visible mostly by the lower, convex margin: fade the upper half out.
        fade = _inside(grid.Y - (anatomy.breast_y - 0.5 * anatomy.breast_radius), 0.4 * anatomy.breast_radius)
        out += 0.2 * np.sqrt(np.clip(1 - r**2, 0, 1)) * fade
    return out.astype(np.float32)


def _thorax_fade(anatomy: PatientAnatomy, grid: _Grid) -> np.ndarray:
    """1 above the diaphragm, fading to 0.25 below it, where liver and bowel hide the lower ribs."""
    q = np.abs(grid.X - anatomy.midline)
    side_of = np.where(grid.X < anatomy.midline, 0, 1)
    dome = np.where(
        side_of == 0,
        _diaphragm_y(anatomy, 0, np.minimum(q, anatomy.lung_lateral[0])),
        _diaphragm_y(anatomy, 1, np.minimum(q, anatomy.lung_lateral[1])),
    )
    return (0.25 + 0.75 * _inside(dome + 0.01 - grid.Y, 0.02)).astype(np.float32)


def _ribs(anatomy: PatientAnatomy, grid: _Grid) -> np.ndarray:
    """Posterior ribs (arched, bright) and anterior ribs (fainter, sloping down medially) on both sides."""
    bones = np.zeros_like(grid.X)
    count = 12
    k = np.arange(count, dtype=np.float32)
    spacing = anatomy.rib_spacing * (1 + anatomy.rib_spacing_growth * k)
    y0 = (anatomy.rib_top_y + np.concatenate([[0.0], np.cumsum(spacing[1:])])).astype(np.float32)[:, None]
    drop = (anatomy.rib_drop * (0.8 + 0.05 * k)).astype(np.float32)[:, None]
    rise = (anatomy.rib_rise * (1.0 - 0.04 * k)).astype(np.float32)[:, None]
    start = 0.02
    density = 0.13 * anatomy.bone_density
    posterior_amplitude = np.full(count, density, dtype=np.float32)
    anterior_amplitude = np.full(count, 0.45 * density, dtype=np.float32)
    for side, sign in enumerate(_SIDE_SIGN):
        # Each rib reaches the chest wall at the height where it turns down.
        reach = (_lung_bounds(anatomy, side, y0 + drop)[1] + 0.03).astype(np.float32)

        def posterior(q: np.ndarray, reach: np.ndarray = reach) -> tuple[np.ndarray, np.ndarray]:
            u = np.clip((q[None, :] - start) / (reach - start), 0, 1)
            y = y0 - rise * np.sin(np.pi * u) + drop * u**3
            slope = (-rise * np.pi * np.cos(np.pi * u) + 3 * drop * u**2) / (reach - start)
            return y, slope

        def anterior(q: np.ndarray, reach: np.ndarray = reach) -> tuple[np.ndarray, np.ndarray]:
            run = np.clip(reach - q[None, :], 0, None)
            y = y0 + drop + anatomy.anterior_rib_slope * run + 0.6 * run**2
            return y, -(anatomy.anterior_rib_slope + 1.2 * run)

        _bones_along_curves(grid, bones, sign, anatomy.midline, (np.full(count, start), reach[:, 0]), posterior,
                            anatomy.rib_half_thickness * (1 + 0.02 * k), posterior_amplitude)
        _bones_along_curves(grid, bones, sign, anatomy.midline, (0.13 + 0.01 * k, reach[:, 0]), anterior,
                            np.full(count, anatomy.rib_half_thickness * 1.15), anterior_amplitude)
    return bones


def _clavicles(anatomy: PatientAnatomy, grid: _Grid, view: str) -> np.ndarray:
    """Both clavicles: S-shaped bones from the sternum up and out to the shoulders (higher on AP films)."""
    out = np.zeros_like(grid.X)
    lift = 0.035 if view == "AP" else 0.0
    slope = anatomy.clavicle_slope * (0.5 if view == "AP" else 1.0)
    y_start = anatomy.clavicle_y - lift
    start = 0.035
    for side, sign in enumerate(_SIDE_SIGN):
        end = anatomy.lung_lateral[side] + 0.09

        def clavicle(q: np.ndarray, end: float = end) -> tuple[np.ndarray, np.ndarray]:
            u = (q - start) / (end - start)
            y = y_start - slope * (q - start) + 0.012 * np.sin(2 * np.pi * u)
            return y[None, :], (-slope + 0.012 * 2 * np.pi / (end - start) * np.cos(2 * np.pi * u))[None, :]

        _bones_along_curves(grid, out, sign, anatomy.midline, (np.array([start]), np.array([end])), clavicle,
                            np.array([anatomy.clavicle_half_thickness]), np.array([0.5 * anatomy.bone_density]))
    return out


def _spine_and_shoulders(anatomy: PatientAnatomy, grid: _Grid) -> np.ndarray:
    """Thoracic spine (vertebral bodies, disc spaces, pedicles) and the humeral heads."""
    out = np.zeros_like(grid.X)
    w = anatomy.spine_half_width
    cols = grid.cols(anatomy.midline - 1.3 * w, anatomy.midline + 1.3 * w)
    X, Y = grid.X[:, cols], grid.Y[:, cols]
    dx = (X - anatomy.midline) / w
    phase = ((Y / anatomy.vertebra_period + anatomy.vertebra_phase) % 1.0) - 0.5
    column = np.sqrt(np.clip(1 - dx**2, 0, 1))
    bodies = 0.75 + 0.25 * _inside(0.36 - np.abs(phase), 0.04)
    pedicles = np.exp(-((phase / 0.16) ** 2) - ((np.abs(dx) - 0.7) / 0.16) ** 2)
    spinous = 0.6 * np.exp(-(((phase - 0.15) / 0.18) ** 2) - (dx / 0.18) ** 2)
    out[:, cols] = 0.28 * anatomy.bone_density * (column * bodies + 0.35 * pedicles + 0.3 * spinous)
    for sign in _SIDE_SIGN:
        centre_x = anatomy.midline + sign * (anatomy.thorax_half_width + 0.12)
        r = np.sqrt((grid.X - centre_x) ** 2 + (grid.Y - anatomy.shoulder_y - 0.04) ** 2) / 0.06
        out += 0.25 * anatomy.bone_density * np.sqrt(np.clip(1 - r**2, 0, 1)).astype(np.float32)
    return out


def _vessel_tree(anatomy: PatientAnatomy, grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vessels: branching, tapering, gently curving lines fanning out from each hilum.

    The tree is grown one generation at a time for all branches at once (vectorised); each
    generation's points are splatted onto the grid and blurred to that generation's width, so
    trunks near the hilum are broad and bright and peripheral branches thin and faint.
    """
    generations, pieces = 5, 3
    step = 0.5 / grid.size
    primaries = np.linspace(-80.0, 85.0, 7)
    sign = np.repeat(np.array(_SIDE_SIGN), primaries.size)
    side = np.repeat(np.array([0, 1]), primaries.size)
    hilum_q = np.array(anatomy.lung_medial)[side] + 0.02
    hilum_y = np.array(anatomy.hilum_y)[side]
    angle = np.radians(np.tile(primaries, 2) + rng.normal(0, 8, sign.size))
    q, y = hilum_q.copy(), hilum_y + 0.03 * np.sin(np.radians(np.tile(primaries, 2)))
    length = rng.uniform(0.06, 0.09, sign.size)
    vessels = np.zeros((grid.n, grid.n), dtype=np.float32)
    for depth in range(generations):
        count = max(2, int(math.ceil(float(length.max()) / pieces / step)))
        t = np.linspace(0.0, 1.0, count, endpoint=False)[None, :]
        splat = np.zeros(grid.n * grid.n, dtype=np.float64)
        for _ in range(pieces):
            # Each branch is a slightly curved line: a few straight pieces with small turns.
            angle = angle + rng.normal(0, 0.12, angle.size)
            q1 = q + length / pieces * np.cos(angle)
            y1 = y + length / pieces * np.sin(angle)
            xs = anatomy.midline + sign[:, None] * (q[:, None] + (q1 - q)[:, None] * t)
            ys = y[:, None] + (y1 - y)[:, None] * t
            cols = np.clip(np.round((xs + _MARGIN) * grid.size - 0.5).astype(np.int64), 0, grid.n - 1)
            rows = np.clip(np.round((ys + _MARGIN) * grid.size - 0.5).astype(np.int64), 0, grid.n - 1)
            # Branches shorter than the longest get fewer effective points: weight by length.
            weight = np.broadcast_to((length / length.max())[:, None], cols.shape)
            splat += np.bincount((rows * grid.n + cols).ravel(), weights=weight.ravel(), minlength=grid.n * grid.n)
            q, y = q1, y1
        width = 0.0075 * 0.7**depth
        sigma = max(0.5, width * grid.size)
        spacing = float(length.max()) / pieces / count * grid.size  # pixels between points
        layer = ndimage.gaussian_filter(splat.reshape(grid.n, grid.n).astype(np.float32), sigma)
        # Scale so a line's peak strength depends on its generation, not on the sampling density.
        vessels += layer * (spacing * 2.5066 * sigma * 0.13 * 0.7**depth)
        spread = np.radians(rng.uniform(14, 30, angle.size))
        # Vessels run roughly radially from the hilum: pull both children toward lateral-down.
        children = np.concatenate([angle - spread, angle + spread]) * 0.85 + 0.15 * math.radians(15)
        angle = children
        q, y = np.tile(q, 2), np.tile(y, 2)
        sign = np.tile(sign, 2)
        length = np.tile(length, 2) * rng.uniform(0.72, 0.9, 2 * length.size)
    for index, side_sign in enumerate(_SIDE_SIGN):
        # The hilum: overlapping pulmonary arteries and veins, a soft oval opacity.
        hx = anatomy.midline + side_sign * (anatomy.lung_medial[index] + 0.015)
        r = np.hypot((grid.X - hx) / 0.03, (grid.Y - anatomy.hilum_y[index]) / 0.05)
        vessels += 0.07 * np.exp(-(r**2)).astype(np.float32)
    return vessels


def _smooth_noise(rng: np.random.Generator, grid: _Grid, scale: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ``scale`` (normalised units)."""
    noise = rng.standard_normal((grid.n, grid.n), dtype=np.float32)
    sigma = max(0.5, scale * grid.size)
    field_ = ndimage.gaussian_filter(noise, sigma)
    return (field_ / (field_.std() + 1e-8)).astype(np.float32)


def _render_patient_layers(anatomy: PatientAnatomy, grid: _Grid) -> _PatientLayers:
    """Render a patient's study-independent attenuation layers on the canonical grid."""
    rng = np.random.default_rng(anatomy.texture_seed)
    edge = grid.edge
    masks = tuple(_lung_mask(anatomy, side, grid.X, grid.Y, edge) for side in (0, 1))
    air = tuple((masks[side] * _lung_depth(anatomy, side, grid.X, grid.Y)).astype(np.float32) for side in (0, 1))
    both = masks[0] + masks[1]
    vessels = _vessel_tree(anatomy, grid, rng) * both
    fine = _smooth_noise(rng, grid, 0.004)
    medium = _smooth_noise(rng, grid, 0.018)
    texture_lung = (0.014 * fine + 0.014 * medium) * both
    # Uneven soft tissue (fat, muscle) at a coarse scale: patient-specific and robust to small shifts.
    coarse = _smooth_noise(rng, grid, 0.05)
    texture_body = 0.01 * fine + 0.01 * medium + 0.06 * coarse
    airway = _airway(anatomy, grid)
    return _PatientLayers(
        body=_body_thickness(anatomy, grid),
        extra_soft=_breasts(anatomy, grid),
        lung_mask=masks,  # type: ignore[arg-type]
        lung_air=air,  # type: ignore[arg-type]
        bones=_ribs(anatomy, grid) * _thorax_fade(anatomy, grid) + _spine_and_shoulders(anatomy, grid),
        clavicles={view: _clavicles(anatomy, grid, view) for view in ("PA", "AP")},
        vessels=vessels.astype(np.float32),
        texture_lung=texture_lung.astype(np.float32),
        texture_body=texture_body.astype(np.float32),
        airway=airway,
        patchiness=medium,
    )


def _airway(anatomy: PatientAnatomy, grid: _Grid) -> np.ndarray:
    """Air in the trachea and main bronchi, and the gastric bubble under the left dome."""
    X, Y = grid.X, grid.Y
    w = anatomy.trachea_half_width
    trachea = _inside(w - np.abs(X - anatomy.midline), grid.edge) * _inside(anatomy.carina_y - Y, 0.01)
    out = 0.45 * trachea
    for sign in _SIDE_SIGN:
        angle = math.radians(40 if sign < 0 else 50)
        dx, dy = X - anatomy.midline, Y - anatomy.carina_y
        along = sign * dx * math.sin(angle) + dy * math.cos(angle)
        across = -sign * dx * math.cos(angle) + dy * math.sin(angle)
        bronchus = _inside(0.8 * w - np.abs(across), grid.edge) * _inside(along + 0.01, grid.edge) * _inside(
            0.07 - along, 0.015
        )
        out = np.maximum(out, 0.35 * bronchus)
    if anatomy.stomach_bubble > 0:
        cx = anatomy.midline + 0.16
        cy = anatomy.lung_base_y[1] - anatomy.dome_height[1] + 0.05
        r = np.sqrt(((X - cx) / 0.045) ** 2 + ((Y - cy) / 0.028) ** 2)
        out += 0.35 * anatomy.stomach_bubble * _inside(1 - r, 0.15) * _inside(Y - cy + 0.012, 0.01)
    return out.astype(np.float32)


def _render_study(plan: PatientPlan, layers: _PatientLayers, study: Study, grid: _Grid) -> np.ndarray:
    """Render one study as a uint8 ``size×size`` radiograph.

    Args:
        plan: the patient (anatomy and finding sites).
        layers: the patient's canonical layers from :func:`_render_patient_layers` on ``grid``.
        study: which follow-up, its view, findings, positioning and exposure.
        grid: the canonical grid (its ``size`` is the output size).

    Returns:
        The image, uint8, 0 = no attenuation (black).
    """
    anatomy, sites = plan.anatomy, plan.sites
    rng = np.random.default_rng(study.noise_seed)
    findings = set(study.findings)
    heart_scale = sites.cardiomegaly_scale if "Cardiomegaly" in findings else 1.0
    if study.view == "AP":
        # Projection from the front magnifies the anterior heart.
        heart_scale *= 1.12
    displaced = layers.mediastinum(anatomy, grid, heart_scale)

    air = [layers.lung_air[0].copy(), layers.lung_air[1].copy()]
    vessels, texture_lung = layers.vessels, layers.texture_lung
    extra = np.zeros_like(grid.X)
    if "Effusion" in findings:
        for side in sites.effusion_sides:
            fluid = _effusion(anatomy, side, grid, study.effusion_height)
            air[side] *= 1.0 - fluid
            extra += 0.12 * fluid * layers.body
    if "Pneumothorax" in findings:
        side = sites.pneumothorax_side
        space, pleura = _pneumothorax(anatomy, side, grid, study.pneumothorax_collapse)
        vessels = vessels * (1.0 - space)
        texture_lung = texture_lung * (1.0 - space)
        air[side] = np.maximum(air[side], space)
        extra += -0.06 * space + 0.05 * pleura
    if "Consolidation" in findings:
        opacity = _consolidation(anatomy, sites, layers, grid, study.consolidation_extent)
        side = 0 if sites.consolidation_center[0] < anatomy.midline else 1
        air[side] *= 1.0 - 0.55 * opacity
        extra += 0.02 * opacity
    if "Nodule" in findings:
        r = np.hypot(grid.X - sites.nodule_center[0], grid.Y - sites.nodule_center[1]) / sites.nodule_radius
        extra += 0.3 * np.sqrt(np.clip(1 - r**2, 0, 1)) + 0.05 * _inside(1 - r, 0.1)

    lung_air = air[0] * (1.0 - displaced[0]) + air[1] * (1.0 - displaced[1])
    attenuation = (
        layers.body * (1.0 - 0.72 * lung_air)
        + layers.extra_soft
        - 0.6 * layers.airway * layers.body
        + layers.bones
        + layers.clavicles[study.view]
        + vessels
        + texture_lung
        + layers.texture_body * layers.body
        + extra
    )
    if study.view == "AP":
        attenuation += _scapula_shadow(anatomy, grid)
    positioned = _position(attenuation, grid, study)
    return _expose(positioned, study, rng)


def render_studies(plan: PatientPlan, size: int, studies: tuple[Study, ...] | None = None) -> list[np.ndarray]:
    """Render a patient's studies as uint8 ``size×size`` radiographs.

    Args:
        plan: the patient from :func:`plan_patient`.
        size: image side in pixels, 32..1024.
        studies: studies to render instead of ``plan.studies`` (e.g. one study with its findings
            changed via :func:`dataclasses.replace`, to see a finding's effect on the same film).

    Returns:
        One image per study, in order.
    """
    grid = _Grid.for_size(size)
    layers = _render_patient_layers(plan.anatomy, grid)
    return [_render_study(plan, layers, study, grid) for study in (plan.studies if studies is None else studies)]


def _effusion(anatomy: PatientAnatomy, side: int, grid: _Grid, height: float) -> np.ndarray:
    """Pleural fluid: fills the lung base to ``height`` above the costophrenic angle, climbing laterally (meniscus)."""
    sign = _SIDE_SIGN[side]
    q = sign * (grid.X - anatomy.midline)
    medial, lateral = anatomy.lung_medial[side], anatomy.lung_lateral[side]
    across = np.clip((q - medial) / (lateral - medial), 0, 1.2)
    level = anatomy.lung_base_y[side] - height - 0.09 * across**3
    column = _inside(q - medial + 0.02, 0.01) * _inside(lateral + 0.02 - q, grid.edge)
    return (_inside(grid.Y - level, 0.012) * column).astype(np.float32)


def _pneumothorax(anatomy: PatientAnatomy, side: int, grid: _Grid, collapse: float) -> tuple[np.ndarray, np.ndarray]:
    """Collapsed lung shrunk toward the hilum: (air space without lung markings, visceral pleural line)."""
    sign = _SIDE_SIGN[side]
    hx = anatomy.midline + sign * (anatomy.lung_medial[side] + 0.02)
    hy = anatomy.hilum_y[side] + 0.08
    X = hx + (grid.X - hx) / collapse
    Y = hy + (grid.Y - hy) / collapse
    lung = _lung_mask(anatomy, side, grid.X, grid.Y, grid.edge)
    collapsed = _lung_mask(anatomy, side, X, Y, grid.edge * 0.7)
    space = np.clip(lung - collapsed, 0, 1)
    pleura = 4.0 * collapsed * (1.0 - collapsed) * lung
    return space.astype(np.float32), pleura.astype(np.float32)


def _consolidation(
    anatomy: PatientAnatomy, sites: FindingSites, layers: _PatientLayers, grid: _Grid, extent: float
) -> np.ndarray:
    """Patchy airspace opacity: a blotchy region (thresholded smooth noise) around the site, inside the lung."""
    cx, cy = sites.consolidation_center
    rx, ry = (r * extent for r in sites.consolidation_radii)
    r = np.sqrt(((grid.X - cx) / rx) ** 2 + ((grid.Y - cy) / ry) ** 2)
    blotch = (1.0 - r) * 2.0 + 0.7 * layers.patchiness
    side = 0 if cx < anatomy.midline else 1
    return (_inside(blotch - 0.3, 0.5) * layers.lung_mask[side]).astype(np.float32)


def _scapula_shadow(anatomy: PatientAnatomy, grid: _Grid) -> np.ndarray:
    """On AP films the scapulae project over the upper lateral lung fields."""
    out = np.zeros_like(grid.X)
    for side, sign in enumerate(_SIDE_SIGN):
        q = sign * (grid.X - anatomy.midline)
        medial_border = anatomy.lung_lateral[side] - 0.09 + 0.25 * (grid.Y - anatomy.shoulder_y - 0.05)
        region = _inside(q - medial_border, grid.edge * 2) * _inside(anatomy.shoulder_y + 0.38 - grid.Y, 0.03)
        region *= _inside(grid.Y - anatomy.shoulder_y - 0.04, 0.02)
        out += 0.08 * anatomy.bone_density * region
    return out.astype(np.float32)


def _position(attenuation: np.ndarray, grid: _Grid, study: Study) -> np.ndarray:
    """Resample the canonical map into the ``size×size`` film with the study's shift, rotation and scale."""
    size = grid.size
    cos_r, sin_r = math.cos(study.rotation), math.sin(study.rotation)
    # (row, col) of the output -> (row, col) of the canonical grid: inverse of scale·rotate·shift about the centre.
    matrix = np.array([[cos_r, sin_r], [-sin_r, cos_r]]) / study.scale
    centre = np.array([0.5, 0.5])
    shift = np.array([study.shift[1], study.shift[0]])
    offset = matrix @ np.array([0.5, 0.5]) - size * (matrix @ (centre + shift)) + size * centre + (_MARGIN * size - 0.5)
    return ndimage.affine_transform(
        attenuation, matrix, offset=offset, output_shape=(size, size), order=1, mode="nearest"
    )


def _expose(attenuation: np.ndarray, study: Study, rng: np.random.Generator) -> np.ndarray:
    """Film response: brightness 1 - exp(-k·attenuation), windowed and gamma-corrected, plus grain; uint8."""
    brightness = 1.0 - np.exp(-study.exposure * np.clip(attenuation, 0, None))
    low, high = study.window
    film = np.clip((brightness - low) / (high - low), 0, 1) ** study.gamma
    grain = rng.standard_normal(film.shape, dtype=np.float32)
    # Grain is slightly correlated (film crystals, detector blur) and stronger in darker areas.
    grain = 0.75 * grain + 0.25 * ndimage.uniform_filter(grain, 3) * 2.0
    film = film + study.noise * grain * (1.2 - 0.6 * film)
    return np.clip(np.round(film * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomSummary:
    """What :func:`generate_phantom` wrote.

    Attributes:
        out: the dataset folder.
        n_patients, n_images: counts.
        size: image side in pixels.
        seed: the seed that determines every byte.
        finding_counts: images per finding (an image may have several).
        n_no_finding: images with no finding.
        n_test_patients, n_test_images, n_train_val_images: the NIH-style split.
        seconds: wall-clock time taken.
    """

    out: Path
    n_patients: int
    n_images: int
    size: int
    seed: int
    finding_counts: dict[str, int]
    n_no_finding: int
    n_test_patients: int
    n_test_images: int
    n_train_val_images: int
    seconds: float

    def __str__(self) -> str:
        findings = ", ".join(f"{name} {count}" for name, count in self.finding_counts.items())
        rate = self.n_images / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"phantom dataset written to {self.out}\n"
            f"  {self.n_images} images of {self.size}x{self.size} from {self.n_patients} patients (seed {self.seed})\n"
            f"  findings: {findings}; No Finding {self.n_no_finding}\n"
            f"  split by patient: train/val {self.n_train_val_images} images, "
            f"test {self.n_test_images} images ({self.n_test_patients} patients)\n"
            f"  took {self.seconds:.1f} s ({rate:.0f} images/s)"
        )


def _validate(patients: int, studies_per_patient: float, size: int) -> None:
    """Refuse options the NIH layout cannot hold or the renderer does not support (CxrsynthError)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise CxrsynthError(
            f"phantom size {size} is outside {MIN_SIZE}..{MAX_SIZE}", f"choose --size between {MIN_SIZE} and {MAX_SIZE}"
        )
    if not 1 <= patients <= 99_999_999:
        raise CxrsynthError(
            f"--patients {patients} must be between 1 and 99,999,999 (8-digit NIH patient IDs)",
            "choose a number of patients in that range",
        )
    if not 1.0 <= studies_per_patient <= 500.0:
        raise CxrsynthError(
            f"--studies-per-patient {studies_per_patient} must be between 1 and 500 (3-digit NIH follow-up numbers)",
            "choose a smaller mean",
        )


def _test_patients(seed: int, patients: int) -> set[int]:
    """Patient IDs of the NIH-style test list: a seeded ~20% of patients (at least one when there are two)."""
    n_test = int(round(TEST_FRACTION * patients))
    if patients >= 2:
        n_test = min(max(n_test, 1), patients - 1)
    order = _rng(seed, 3).permutation(patients)
    return {int(index) + 1 for index in order[:n_test]}


def _csv_row(study: Study, sex: str, size: int) -> list[str]:
    """One ``Data_Entry_2017.csv`` row (11 fields: the bracketed columns are two fields each, as in NIH's file)."""
    spacing = f"{FILM_WIDTH_MM / size:.6f}"
    return [
        study.image_name,
        join_labels(list(study.findings)),
        str(study.follow_up),
        str(study.patient_id),
        str(study.age),
        sex,
        study.view,
        str(size),
        str(size),
        spacing,
        spacing,
    ]


def _png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 2-D array as an 8-bit grayscale ('L') PNG; deterministic for given pixels."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def generate_phantom(
    out: Path,
    *,
    patients: int = 400,
    studies_per_patient: float = 3.0,
    size: int = 128,
    seed: int = 0,
    prevalence: dict[str, float] | None = None,
) -> PhantomSummary:
    """Write the phantom chest X-ray dataset in the NIH ChestX-ray14 layout.

    Args:
        out: folder to create; must not exist. Built under a temporary name and renamed when
            complete, so a failure leaves nothing at ``out``.
        patients: number of synthetic patients.
        studies_per_patient: mean follow-ups per patient; each patient gets 1..2×mean.
        size: image side in pixels, 32..1024.
        seed: determines every byte written.
        prevalence: per-image probability overrides for findings in :data:`FINDINGS`
            (others keep :data:`DEFAULT_PREVALENCE`).

    Returns:
        A :class:`PhantomSummary` of what was written.

    Raises:
        CxrsynthError: when ``out`` exists, or an option is out of range.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    _validate(patients, studies_per_patient, size)
    resolved = _resolve_prevalence(prevalence)
    out = Path(out)
    test_ids = _test_patients(seed, patients)
    finding_counts = dict.fromkeys(FINDINGS, 0)
    n_no_finding = 0
    train_val: list[str] = []
    test: list[str] = []
    with atomic_directory(out) as tmp:
        images_dir = tmp / IMAGES_DIR
        images_dir.mkdir()
        csv_buffer = io.StringIO()
        writer = csv.writer(csv_buffer, lineterminator="\n")
        writer.writerow(NIH_CSV_HEADER)
        for index in tqdm(range(patients), desc="phantom patients", unit="patient", disable=None):
            plan = plan_patient(seed, index, studies_per_patient, resolved)
            for study, image in zip(plan.studies, render_studies(plan, size)):
                (images_dir / study.image_name).write_bytes(_png_bytes(image))
                writer.writerow(_csv_row(study, plan.anatomy.sex, size))
                for name in study.findings:
                    finding_counts[name] += 1
                n_no_finding += not study.findings
                (test if plan.patient_id in test_ids else train_val).append(study.image_name)
        (tmp / NIH_CSV_NAME).write_text(csv_buffer.getvalue(), encoding="utf-8")
        (tmp / TRAIN_VAL_LIST).write_text("".join(f"{name}\n" for name in train_val), encoding="utf-8")
        (tmp / TEST_LIST).write_text("".join(f"{name}\n" for name in test), encoding="utf-8")
    return PhantomSummary(
        out=out,
        n_patients=patients,
        n_images=len(train_val) + len(test),
        size=size,
        seed=seed,
        finding_counts=finding_counts,
        n_no_finding=n_no_finding,
        n_test_patients=len(test_ids),
        n_test_images=len(test),
        n_train_val_images=len(train_val),
        seconds=time.perf_counter() - started,
    )
