"""Membership-inference attacks, registered by name (in the manner of torch-fidelity's registry).

Adding an attack is one file and one line: write ``cxrsynth/audit/attacks/<name>.py`` with a
scoring function decorated by :func:`register_attack`, and import the module in
``cxrsynth/audit/attacks/__init__.py``.

An attack receives an :class:`AttackContext` and returns one raw score per audited image in its
*published* orientation (``member_if``: ``lower`` when a low score means "member", as for a
loss). It may fit parameters only on the calibration rows, whose membership is the only
membership it is given (:attr:`AttackContext.calibration_rows` / ``calibration_is_member``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cxrsynth.errors import CxrsynthError

if TYPE_CHECKING:
    from cxrsynth.audit.whitebox import WhiteBoxModel

ACCESS_LEVELS: tuple[str, ...] = ("white-box", "black-box", "none")
"""``white-box``: the model's weights; ``black-box``: released synthetic images only; ``none``: neither."""

NEEDS_MODEL, NEEDS_SAMPLES, NEEDS_FEATURES = "model", "samples", "features"
NEEDS_REFERENCE = "reference"
"""Reference models trained on random halves of the member+holdout pool (``--reference-models K``)."""
NEEDS_POPULATION = "population"
"""Population images that no model trained on: the prepared data's ``test`` split (RMIA)."""

DEFAULT_TIMESTEP = 200
"""t of the attacks that do not select one, and of the others when ``--timestep`` fixes it."""
TIMESTEP_CANDIDATES: tuple[int, ...] = (10, 20, 50, 100, 150, 200, 300)
"""Candidates of the automatic timestep selection (PIA's official sweep spans t = 10…300)."""


@dataclass(frozen=True)
class AttackSettings:
    """Settings shared by the attacks (``cxrsynth audit`` options).

    Attributes:
        timestep: diffusion timestep t of the loss, recon, PIA and SimA attacks; None: the attacks
            that select t choose it on the calibration half among :data:`TIMESTEP_CANDIDATES`
            (recon, which does not, uses :data:`DEFAULT_TIMESTEP`).
        noise_draws: noise draws K averaged by the loss and recon attacks.
        secmi_timestep: t_sec of SecMI (Duan et al. use 100).
        secmi_interval: DDIM step k of SecMI's inversion (Duan et al. use 10).
        batch_size: images per UNet forward pass.
        seed: seed of every noise draw and fitted model.
    """

    timestep: int | None = None
    noise_draws: int = 8
    secmi_timestep: int = 100
    secmi_interval: int = 10
    batch_size: int = 64
    seed: int = 0

    def validate(self, num_train_timesteps: int) -> None:
        """Check ranges against the model's number of timesteps.

        Raises:
            CxrsynthError: naming the first setting out of range.
        """
        if self.timestep is not None and not 1 <= self.timestep < num_train_timesteps:
            raise CxrsynthError(f"--timestep {self.timestep} is out of range", f"use 1..{num_train_timesteps - 1}")
        if self.noise_draws < 1:
            raise CxrsynthError(f"--noise-draws must be >= 1, got {self.noise_draws}")
        if self.batch_size < 1:
            raise CxrsynthError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.secmi_interval < 1 or self.secmi_timestep % self.secmi_interval or not (
            self.secmi_interval < self.secmi_timestep < num_train_timesteps
        ):
            raise CxrsynthError(
                f"SecMI needs k < t_sec < {num_train_timesteps} with t_sec divisible by k, got "
                f"t_sec={self.secmi_timestep}, k={self.secmi_interval}"
            )

    @property
    def fixed_timestep(self) -> int:
        """``timestep``, or :data:`DEFAULT_TIMESTEP` when it is left to selection."""
        return DEFAULT_TIMESTEP if self.timestep is None else int(self.timestep)


@dataclass
class AttackContext:
    """What an attack may use.

    Attributes:
        images: the audited images, uint8 N×S×S (members and non-members, shuffled together).
        calibration_rows: indices of the calibration half (the only rows whose membership is given).
        calibration_is_member: membership of those rows.
        settings: the shared settings.
        model: the trained model (white-box attacks), counting its forward passes; None otherwise.
        synthetic: released synthetic images, uint8 M×S×S, or None when there are none.
        features: a function from uint8 images to feature rows (the domain classifier's
            penultimate features), or None when unavailable.
        patients: patient id of each audited image (several images of one patient may be audited).
        reference: reference models for LiRA/RMIA (:mod:`cxrsynth.audit.reference`), or None.
        choices: what an attack chose on the calibration half (e.g. ``{"timestep": 50, ...}``),
            keyed by attack name; the runner records it as ``attacks.<name>.selected``.
    """

    images: np.ndarray
    calibration_rows: np.ndarray
    calibration_is_member: np.ndarray
    settings: AttackSettings
    model: "WhiteBoxModel | None" = None
    synthetic: np.ndarray | None = None
    features: Callable[[np.ndarray], np.ndarray] | None = None
    patients: np.ndarray | None = None
    reference: Any = None
    choices: dict[str, dict] = field(default_factory=dict)


ScoreFunction = Callable[[AttackContext], np.ndarray]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: the ``--attacks`` name.
        access: one of :data:`ACCESS_LEVELS`.
        member_if: published direction: ``lower`` or ``higher`` scores mean "member".
        description: one line for audit.json and ``--help``.
        nfe_per_image: UNet forward passes per audited image the attack makes, given the settings.
        needs: what must be available (:data:`NEEDS_MODEL`, :data:`NEEDS_SAMPLES`, :data:`NEEDS_FEATURES`,
            :data:`NEEDS_REFERENCE`).
        score: the scoring function.
    """

    name: str
    access: str
    member_if: str
    description: str
    nfe_per_image: Callable[[AttackSettings], float]
    needs: frozenset[str]
    score: ScoreFunction = field(repr=False)


_ATTACKS: dict[str, AttackSpec] = {}


def register_attack(
    name: str,
    *,
    access: str,
    member_if: str,
    description: str,
    nfe_per_image: Callable[[AttackSettings], float] = lambda settings: 0.0,
    needs: tuple[str, ...] = (),
) -> Callable[[ScoreFunction], ScoreFunction]:
    """Decorator registering a scoring function as the attack ``name``.

    Raises:
        CxrsynthError: when the name is taken or the access level/direction is unknown.
    """
    if access not in ACCESS_LEVELS:
        raise CxrsynthError(f"attack {name!r}: unknown access {access!r}", f"use one of {ACCESS_LEVELS}")
    if member_if not in ("lower", "higher"):
        raise CxrsynthError(f"attack {name!r}: member_if must be 'lower' or 'higher'")

    def decorate(score: ScoreFunction) -> ScoreFunction:
        if name in _ATTACKS:
            raise CxrsynthError(f"an attack named {name!r} is already registered")
        _ATTACKS[name] = AttackSpec(name, access, member_if, description, nfe_per_image, frozenset(needs), score)
        return score

    return decorate


def _load_builtin_attacks() -> None:
    import cxrsynth.audit.attacks  # noqa: F401  (each module registers itself on import)


def registered_attacks() -> list[AttackSpec]:
    """Every registered attack, in registration order (the built-in ones first)."""
    _load_builtin_attacks()
    return list(_ATTACKS.values())


def attack_names() -> list[str]:
    """Names of every registered attack, in registration order."""
    return [spec.name for spec in registered_attacks()]


def get_attack(name: str) -> AttackSpec:
    """The attack registered as ``name``.

    Raises:
        CxrsynthError: for an unknown name, listing the known ones.
    """
    _load_builtin_attacks()
    if name not in _ATTACKS:
        raise CxrsynthError(f"unknown attack {name!r}", f"use one or more of: {', '.join(_ATTACKS)}")
    return _ATTACKS[name]
