"""The ``cxrsynth`` command line: one command (or command group) per pipeline stage.

Each stage's options live in one module of this package (``cxrsynth/cli/<stage>.py``; the
``data`` group in ``cxrsynth/data/cli.py``). Those modules only parse options and print results:
heavy libraries load when a command runs. :mod:`cxrsynth.cli.root` assembles them into the root
app; this module runs it (:func:`main`) and turns :class:`~cxrsynth.errors.CxrsynthError` into a
clear message and exit status 2. Importing it, or one command module, loads no heavy library.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console

from cxrsynth.errors import CxrsynthError
from cxrsynth.fsutil import os_error_message

_err_console = Console(stderr=True)


def __getattr__(name: str) -> Any:
    """``cxrsynth.cli.app``: the root typer app, assembled on first use (see :mod:`cxrsynth.cli.root`)."""
    if name == "app":
        from cxrsynth.cli.root import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Run the command line (the ``cxrsynth`` console script and ``python -m cxrsynth``).

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Raises:
        SystemExit: always, with 0 on success, 2 on a :class:`CxrsynthError` or on a file-system
            failure the user can fix (disk full, permission denied: :func:`cxrsynth.fsutil.os_error_message`).
    """
    from cxrsynth.cli.root import app  # here, not at the top: it imports every stage (and torch)

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
