"""Differentially private training: per-record gradients, Poisson sampling of privacy units, accounting.

:mod:`cxrsynth.dp.training` is the DP-SGD step the training loop uses with ``--dp``;
:mod:`cxrsynth.dp.accounting` calibrates σ and writes ``RUN/privacy.json``.
"""
