"""The root ``cxrsynth`` typer app: every stage's commands assembled in pipeline order.

Importing this module imports every stage's command module (and, through ``data`` and ``train``,
torch); :mod:`cxrsynth.cli` therefore imports it only when the app is used, so that importing one
command module (``cxrsynth.cli.audit``) stays light.
"""

from __future__ import annotations

import typer

from cxrsynth.cli import audit, demo, evaluate, release, report, sample, train
from cxrsynth.data.cli import data_app

app = typer.Typer(
    name="cxrsynth",
    help=(
        "Train diffusion models on private chest X-rays, generate synthetic radiographs, "
        "measure their realism and usefulness, and audit what they leak about patients.\n\n"
        "Pipeline: data -> train -> sample -> evaluate -> audit -> report."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
for _stage in (train, sample, evaluate, audit, report, release, demo):
    _stage.register(app)
