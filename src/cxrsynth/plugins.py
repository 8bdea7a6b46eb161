"""Which implementation plugs into which interface a stage defines: the package's composition table.

A lower layer defines an interface and never imports the layer that implements it; this table
(imported by the lower layer, importing nothing itself) names the implementation, which is loaded
only when it is needed. Today one entry: the training loop (:mod:`cxrsynth.train`) defines
:class:`cxrsynth.train.privacy.PrivacyPlugin`, and :mod:`cxrsynth.dp` implements it with DP-SGD.
So ``train/`` imports nothing of ``dp/`` while ``dp/`` builds on ``train/``; and
``cxrsynth.train.train(config, run)`` with ``config.dp`` works for every caller (CLI, tests,
benchmarks, the demo) without the caller importing ``cxrsynth.dp`` first.
"""

from __future__ import annotations

import importlib
from typing import Any

PRIVACY_PLUGIN = "cxrsynth.dp.training:resolve_privacy"
"""``module:attribute`` of the :class:`~cxrsynth.train.privacy.PrivacyPlugin` a DP run uses."""


def load_plugin(spec: str) -> Any:
    """The object named by ``spec`` (``package.module:attribute``), importing its module.

    Raises:
        ValueError: when ``spec`` has no ``:`` or names an attribute its module lacks.
        ImportError: when the module cannot be imported.
    """
    module_name, separator, attribute = spec.partition(":")
    if not separator or not attribute:
        raise ValueError(f"plugin {spec!r} is not of the form 'package.module:attribute'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"plugin {spec!r}: {module_name} has no attribute {attribute!r}") from None
