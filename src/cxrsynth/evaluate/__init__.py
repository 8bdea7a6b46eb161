"""Evaluation of synthetic radiographs: realism (FID/KID/precision/recall, domain distance, pixel
statistics), diversity (MS-SSIM) and usefulness (train on synthetic, test on real).

Modules, one concern each: :mod:`.frechet` (Fréchet distance, k-NN precision/recall),
:mod:`.bootstrap` (intervals), :mod:`.inception` (torch-fidelity, offline weights), :mod:`.domain`
(the from-scratch CXR classifier and its features, reused by the audit), :mod:`.utility` (TSTR vs
TRTR), :mod:`.diversity` (MS-SSIM), :mod:`.pixel` (histograms, power spectra), :mod:`.plots`, and
:mod:`.runner` (``cxrsynth evaluate``; documents every key of ``fidelity.json``), :mod:`.table` (its
summary table, light to import). Runs and samples are read through :mod:`cxrsynth.runfolder`.
"""

from typing import Any

__all__ = ["EvaluateOptions", "evaluate_run"]


def __getattr__(name: str) -> Any:
    # The runner pulls in torchmetrics and torchvision; importing it only when asked keeps
    # `cxrsynth.evaluate.domain` (used by the audit) light to import.
    if name in __all__:
        from cxrsynth.evaluate import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
