"""Fixtures of the reliability suite: the real CLI run in-process, on real files in ``tmp_path``.

Every test of ``tests/reliability/`` is one row of ``docs/RELIABILITY.md`` (``test_table.py``
keeps the two in step). The helpers here run ``cxrsynth.cli.main`` and check what every row
promises: exit status not 0, a message naming the problem and the fix, no traceback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from accelerate.state import AcceleratorState, GradientState


@dataclass(frozen=True)
class CliResult:
    """What a user saw: the exit status and both streams."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout and stderr together, with rich's line wrapping undone (messages are matched as sentences)."""
        return " ".join((self.out + "\n" + self.err).split())


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> CliResult:
    """Run ``cxrsynth ARGV`` in-process (``cxrsynth.cli.main``) and capture what it printed.

    Raises:
        AssertionError: when ``main`` returns without ``SystemExit`` (it always exits).
    """
    from cxrsynth import cli

    capsys.readouterr()
    cli._err_console.width = 10_000  # no wrapping inside paths: messages are matched as sentences
    main = cli.main
    with pytest.raises(SystemExit) as exited:
        main(argv)
    captured = capsys.readouterr()
    code = exited.value.code
    return CliResult(code=0 if code is None else int(code), out=captured.out, err=captured.err)


def assert_clear_error(result: CliResult, *phrases: str) -> None:
    """A failure the user can act on: status ≠ 0, no traceback, a ``fix:`` line, and each phrase (case-insensitive)."""
    assert result.code != 0, result.text
    assert "Traceback" not in result.text, result.text
    assert "fix:" in result.text, result.text
    for phrase in phrases:
        assert phrase.lower() in result.text.lower(), (phrase, result.text)


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``folder`` (to show nothing was lost or changed)."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial names left anywhere under ``folder`` (``.partial``, ``.tmp``, ``.old``)."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.name.endswith((".partial", ".tmp", ".old")))


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch/BLAS thread (root conftest), wide consoles; Accelerate's process-wide state forgotten after each test."""
    monkeypatch.setenv("COLUMNS", "10000")  # consoles the commands create: no wrapping inside paths
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
