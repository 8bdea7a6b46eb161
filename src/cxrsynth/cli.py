"""The ``cxrsynth`` command line: one command (or command group) per pipeline stage.

Each stage's options live beside the stage (``cxrsynth/<stage>/cli.py`` or
``cxrsynth/cli_<stage>.py``); this module only assembles them and turns
:class:`~cxrsynth.errors.CxrsynthError` into a clear message and exit status 2.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from cxrsynth.data.cli import data_app
from cxrsynth.errors import CxrsynthError

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

_err_console = Console(stderr=True)


def _register_optional_stages() -> None:
    """Attach the stages whose modules exist; each module registers its own commands."""
    import importlib

    for module_name in ("cxrsynth.cli_train", "cxrsynth.cli_sample", "cxrsynth.cli_evaluate", "cxrsynth.cli_audit",
                        "cxrsynth.cli_report", "cxrsynth.cli_release", "cxrsynth.cli_demo"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(app)


_register_optional_stages()


def main(argv: list[str] | None = None) -> None:
    """Run the command line (the ``cxrsynth`` console script and ``python -m cxrsynth``).

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Raises:
        SystemExit: always, with 0 on success, 2 on a :class:`CxrsynthError` or on a file-system
            failure the user can fix (disk full, permission denied: :func:`cxrsynth.fsutil.os_error_message`).
    """
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="cxrsynth", standalone_mode=False)
    except CxrsynthError as exc:
        _print_error(exc)
        raise SystemExit(2) from None
    except typer.Abort:
        _err_console.print("aborted")
        raise SystemExit(130) from None
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = getattr(exc, "code", 0)
        raise SystemExit(code) from None
    except OSError as exc:
        # Disk full, a read-only folder, a file where a folder belongs: the user can fix these.
        from cxrsynth.fsutil import os_error_message

        clear = os_error_message(exc)
        if clear is None:
            raise
        _print_error(clear)
        raise SystemExit(2) from None
    except Exception as exc:
        if isinstance(exc, usage_error_types()):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise
    raise SystemExit(0)


def _print_error(exc: CxrsynthError) -> None:
    """Print ``error: PROBLEM`` and ``fix: FIX`` to stderr."""
    _err_console.print(f"[bold red]error:[/] {exc.problem}", highlight=False)
    if exc.fix:
        _err_console.print(f"[bold]fix:[/] {exc.fix}", highlight=False)


def usage_error_types() -> tuple[type, ...]:
    """The ``ClickException`` classes a usage error may be raised as.

    Recent typer releases bundle their own copy of click (``typer._click``), whose exceptions are
    not subclasses of ``click.ClickException``; both are caught so that a bad option prints one
    usage line and exits 2 instead of a traceback.
    """
    import importlib

    types: list[type] = []
    for module_name in ("click.exceptions", "typer._click.exceptions"):
        try:
            types.append(importlib.import_module(module_name).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(types)
