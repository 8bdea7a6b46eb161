"""Sample, report and command-line faults: disk full while sampling, odd --out paths, hostile names, usage errors."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import assert_clear_error, leftovers, run_cli
from tests.tiny_run import copy_run


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared tiny run."""
    return copy_run(tiny_run, tmp_path / "run")


def _sample(run: Path, out: Path, count: int = 4) -> list[str]:
    return ["sample", "--run", str(run), "--out", str(out), "--num-images", str(count), "--sampler", "dpmsolver",
            "--steps", "1", "--batch-size", "1", "--device", "cpu"]


def test_disk_full_during_sample_then_rerun(run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """ENOSPC at the third image: a clear error, no temporary file, no manifest; the rerun writes only what is missing."""
    import cxrsynth.sample.generate as sample

    real_write = sample.atomic_write_bytes
    written: list[str] = []

    def filling(path, data):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written.append(Path(path).name)
        return real_write(path, data)

    monkeypatch.setattr(sample, "atomic_write_bytes", filling)
    out = tmp_path / "samples"
    result = run_cli(_sample(run, out), capsys)
    assert_clear_error(result, "no space left", "free disk space")
    assert leftovers(out) == [] and not (out / "manifest.csv").exists()
    assert sorted(path.name for path in out.glob("sample_*.png")) == written == ["sample_000000.png", "sample_000001.png"]
    before = {name: (out / name).read_bytes() for name in written}
    monkeypatch.setattr(sample, "atomic_write_bytes", real_write)
    again = run_cli(_sample(run, out), capsys)
    assert again.code == 0, again.text
    assert len(list(out.glob("sample_*.png"))) == 4 and (out / "manifest.csv").is_file()
    assert all((out / name).read_bytes() == data for name, data in before.items())


def test_sample_out_is_a_file(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "samples.png"
    out.write_bytes(b"not a folder")
    result = run_cli(_sample(run, out), capsys)
    assert_clear_error(result, str(out), "is an existing file", "choose another --out")
    assert out.read_bytes() == b"not a folder"


def test_pipeline_files_are_plain_readable(tiny_run: Path) -> None:
    """RUN/pipeline is meant to be shared: its safetensors get the umask's mode, like every other output (not 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tiny_run / "pipeline").rglob("*") if path.is_file()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_model_card_escapes_finding_names(run: Path, tiny_run: Path, tmp_path: Path, capsys) -> None:
    """A finding named with raw HTML / Markdown in the data shows as typed in MODEL_CARD.md, never as markup."""
    data = Path(shutil.copytree(tiny_run.parent / "data", tmp_path / "data"))
    meta = json.loads((data / "meta.json").read_text())
    hostile = "<img src=x onerror=alert(1)>**Mass**"
    meta["labels"] = [*meta["labels"], hostile]
    (data / "meta.json").write_text(json.dumps(meta))
    result = run_cli(["report", "--run", str(run), "--data", str(data)], capsys)
    assert result.code == 0, result.text
    card = (run / "MODEL_CARD.md").read_text()
    findings = next(line for line in card.splitlines() if line.startswith("Findings:"))
    assert "<img" not in card and "&lt;img src=x onerror=alert\\(1\\)\\>\\*\\*Mass\\*\\*" in findings


def test_usage_error_prints_one_usage_line(run: Path, capsys) -> None:
    """Out-of-range values and unknown options: click's usage error, exit 2, no traceback."""
    for argv in (["sample", "--run", str(run), "--num-images", "-1"], ["sample", "--run", str(run), "--no-such-option"],
                 ["train", "--run", str(run), "--resume", "--max-steps", "lots"]):
        result = run_cli(argv, capsys)
        assert result.code == 2 and "Traceback" not in result.text, result.text
        assert result.text.count("Usage: cxrsynth") == 1 and "Error:" in result.text, result.text


def test_verification_with_one_patient_left(capsys) -> None:
    """Audit re-identification on data where one patient is left for verification: an error, not an endless loop."""
    from cxrsynth.audit.reidentification import verification_pairs
    from cxrsynth.errors import CxrsynthError

    def hung(*_args):
        raise TimeoutError("verification_pairs did not return within 10 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(CxrsynthError, match="at least two patients") as error:
            verification_pairs(np.array([0, 0, 0]), 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "--holdout-fraction" in error.value.fix


def test_report_with_a_manifest_that_is_not_utf8(run: Path, capsys) -> None:
    """A damaged samples manifest does not crash the report: it says what is wrong and still writes the report."""
    manifest = run / "samples" / "manifest.csv"
    manifest.write_bytes(b"\xff\xfe" + manifest.read_bytes())
    result = run_cli(["report", "--run", str(run)], capsys)
    assert "Traceback" not in result.text, result.text
    assert result.code == 0, result.text
    html = (run / "report.html").read_text()
    assert "manifest.csv" in html and "UTF-8" in html
