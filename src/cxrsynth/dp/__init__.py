"""Differentially private training: per-record gradients, Poisson sampling of privacy units, accounting.

:mod:`cxrsynth.dp.training` is the DP-SGD plan the training loop runs with ``--dp``, through the
interface the loop defines (:mod:`cxrsynth.train.privacy`; ``dp/`` imports ``train/``, never the
reverse); :mod:`cxrsynth.dp.per_record` computes the per-record gradients,
:mod:`cxrsynth.dp.clipping` the fused clip, and :mod:`cxrsynth.dp.accounting` calibrates σ and
writes ``RUN/privacy.json``.
"""
