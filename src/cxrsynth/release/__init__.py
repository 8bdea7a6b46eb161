"""``cxrsynth release``: export privacy-screened synthetic images for sharing.

Modules, one concern each: :mod:`.options` (the options and the release folder's fixed names),
:mod:`.checks` (the audit, the DP guarantee, canaries and the ``--out`` folder, checked before
anything is generated), :mod:`.screen` (near-copy and re-identification screen),
:mod:`.candidates` (candidates from a secret seed, screened in growing batches) and
:mod:`.bundle` (:func:`release_run`: the release folder; its docstring documents ``release.json``).
"""

from cxrsynth.release.bundle import release_run
from cxrsynth.release.candidates import Candidates, SampledCandidates, secret_seed, select_release
from cxrsynth.release.options import ReleaseOptions
from cxrsynth.release.screen import ReleaseScreen, ScreenResult, build_screen, calibration_patients

__all__ = [
    "Candidates", "ReleaseOptions", "ReleaseScreen", "SampledCandidates", "ScreenResult", "build_screen",
    "calibration_patients", "release_run", "secret_seed", "select_release",
]
