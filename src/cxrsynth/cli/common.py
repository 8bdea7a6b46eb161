"""What several commands share: the ``--threads`` option and the one place it reaches torch, and the
console that prints a results table.

Light on purpose (torch is imported only when a command applies its threads), so that importing a
command module loads no heavy library.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

import typer

MAX_DEFAULT_THREADS = 8
"""Most threads the default gives one process: more were not measured (bench/threads.py ran on 2
cores), and the other jobs of a shared server need cores too."""

THREADS_HELP = (
    "torch CPU threads of this process. Default: $OMP_NUM_THREADS when set, else 1 with 2 cores or fewer per "
    f"process, else cores - 1 (at most {MAX_DEFAULT_THREADS}): threads beyond the idle cores make torch several "
    "times slower when other processes run (bench/RESULTS.md, Threads). Changes the speed, not the results' settings."
)


def threads_option(more_help: str = "") -> Any:
    """The ``--threads N`` typer option (a fresh ``OptionInfo`` per command; ``None`` means the default).

    Args:
        more_help: a sentence appended to the shared help text.
    """
    return typer.Option(None, "--threads", min=1, help=f"{THREADS_HELP} {more_help}".strip())


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The thread count used when ``--threads`` is not given.

    Args:
        cores: CPU cores of the machine (default :func:`available_cores`).
        environ: the environment (default ``os.environ``): a positive ``OMP_NUM_THREADS`` wins, and
            ``LOCAL_WORLD_SIZE`` (set by ``accelerate launch`` / ``torchrun``) shares the cores
            between the processes of this machine.

    Returns:
        ``OMP_NUM_THREADS`` when set to a positive integer; else 1 when each process has 2 cores or
        fewer, and ``cores - 1`` (at most :data:`MAX_DEFAULT_THREADS`) above that. One core is left
        idle because a torch process with as many threads as cores loses most of its speed as soon as
        anything else runs (bench/RESULTS.md, "Threads").
    """
    environ = os.environ if environ is None else environ
    chosen = _positive_int(environ.get("OMP_NUM_THREADS"))
    if chosen is not None:
        return chosen
    processes = _positive_int(environ.get("LOCAL_WORLD_SIZE")) or 1
    per_process = max(1, (available_cores() if cores is None else cores) // processes)
    if per_process <= 2:
        return 1
    return min(per_process - 1, MAX_DEFAULT_THREADS)


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 1 else None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the body with ``threads`` torch CPU threads (None: :func:`default_threads`), then restore.

    Every command that uses torch runs inside it. Intra-op threads are restored on exit (a command
    run in-process, as the tests do, leaves torch as it found it); inter-op threads can be set only
    once per process, before any parallel work, so they are set when still possible and kept.

    Args:
        threads: a positive thread count, or None for the default.

    Yields:
        The thread count in effect.

    Raises:
        ValueError: for a count below 1 (the ``--threads`` option refuses it as a usage error first).
    """
    count = default_threads() if threads is None else threads
    if count < 1:
        raise ValueError(f"torch threads must be >= 1, got {count}")
    import torch  # here, not at the top: command modules must import without torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # inter-op pool already started (or set) in this process
        torch.set_num_interop_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


TABLE_WIDTH_OFF_TERMINAL = 160
"""Console width for a results table written to a log or a pipe (rich would squeeze it into 80 columns)."""


def table_console() -> Any:
    """A rich ``Console`` for stdout that prints wide tables in full when stdout is not a terminal."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=TABLE_WIDTH_OFF_TERMINAL)

