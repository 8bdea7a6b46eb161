"""``cxrsynth report``: one self-contained HTML report and a model card for a run folder.

* :mod:`.collect` — reads everything a run folder holds into one typed :class:`~.collect.RunContents`,
  marking each stage that has not run, with the command that runs it;
* :mod:`.verdict` — the plain-language answers (realistic? useful? safe to share?) derived from the
  numbers, with what they allow a user to claim and what they do not;
* :mod:`.figures` — the figures the run does not already hold (training curve, image grids);
* :mod:`.html` — the HTML page (inline CSS, images as ``data:`` URIs, no script, printable);
* :mod:`.model_card` — ``MODEL_CARD.md``;
* :mod:`.runner` — :func:`~.runner.write_report`, which writes both files atomically.
"""
