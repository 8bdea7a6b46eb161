"""Privacy audit of a trained run: membership inference, memorization and patient re-identification.

Modules, one concern each: :mod:`.registry` (attacks by name), :mod:`.attacks` (one module per
attack), :mod:`.whitebox` (the UNet as attacks see it, counting forward passes), :mod:`.metrics`
(ROC/AUC, TPR at low FPR, Clopper–Pearson, ε lower bound), :mod:`.memorization` (copy test, DCR),
:mod:`.reidentification` (patient verification and matching), :mod:`.plots`, and :mod:`.runner`
(``cxrsynth audit``; documents every key of ``audit.json``).

Importing this package is cheap; torch and scikit-learn load when an audit runs.
"""

from cxrsynth.audit.memorization import flag_memorized
from cxrsynth.audit.runner import AuditOptions, audit_run

__all__ = ["AuditOptions", "audit_run", "flag_memorized"]
