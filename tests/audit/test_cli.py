"""`cxrsynth audit` parsing: help text, start-up cost, and errors reported as errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrsynth.cli import app, main


def test_help_lists_every_option() -> None:
    result = CliRunner().invoke(app, ["audit", "--help"])
    assert result.exit_code == 0
    for option in ("--run", "--attacks", "--num-members", "--seed", "--samples", "--timestep", "--noise-draws",
                   "--device", "--batch-size", "--data", "--classifier-steps", "--reid-steps"):
        assert option in result.output


def test_importing_the_command_loads_no_heavy_library() -> None:
    code = ("import sys, cxrsynth.cli.audit; "
            "print(sorted(m for m in ('torch', 'diffusers', 'sklearn', 'matplotlib') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_unknown_attack_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--run", str(tmp_path), "--attacks", "loss,magic"])
    assert exit_info.value.code == 2
    assert "unknown attack 'magic'" in capsys.readouterr().err
