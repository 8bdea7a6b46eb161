"""``cxrsynth evaluate``: a swapped Inception weights file, hostile or broken sample folders."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reliability.conftest import assert_clear_error, run_cli
from tests.tiny_run import copy_run

MARKER_NAME = "pwned"


class _RunsCode:
    """A pickle payload: unpickling it (``weights_only=False``) creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _small_inception_layout(path: Path) -> dict[str, torch.Tensor]:
    """The two tensors the layout check looks at (the check needs no full network)."""
    state = {"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3), "fc.weight": torch.randn(1008, 2048)}
    torch.save(state, path)
    return state


def test_inception_weights_swapped_after_the_check(tmp_path: Path, monkeypatch) -> None:
    """Replacing --inception-weights by a code-running pickle after the check runs nothing: torch-fidelity gets the checked copy."""
    import torch_fidelity

    from cxrsynth.evaluate import inception
    from cxrsynth.evaluate.runner import EvaluateOptions, inception_group

    user_file = tmp_path / "inception.pth"
    original = _small_inception_layout(user_file)
    marker = tmp_path / MARKER_NAME
    seen: dict[str, object] = {}

    def swapping_calculate_metrics(**kwargs):
        given = Path(kwargs["feature_extractor_weights_path"])
        torch.save({"fc.weight": _RunsCode(marker)}, user_file)  # the attacker swaps the file now
        seen["path"] = given
        seen["private"] = stat.S_IMODE(os.stat(given.parent).st_mode)
        seen["state"] = torch.load(given, map_location="cpu", weights_only=False)  # as torch-fidelity loads it
        return {torch_fidelity.KEY_METRIC_FID: 1.0}

    monkeypatch.setattr(torch_fidelity, "calculate_metrics", swapping_calculate_metrics)
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    report = {"warnings": []}
    inception_group(SimpleNamespace(reference=images, synthetic=images),
                    EvaluateOptions(inception_weights=user_file), ("fid",), report, lambda _: None)
    assert not marker.exists()
    assert seen["path"] != user_file and seen["private"] == 0o700
    assert torch.equal(seen["state"]["fc.weight"], original["fc.weight"])
    assert report["fid"] == 1.0 and not Path(seen["path"]).exists()  # the private copy is gone afterwards
    with pytest.raises(Exception, match="safe torch state dict"):  # the swapped file itself is refused
        with inception.checked_weights(user_file):
            pass
    assert not marker.exists()


def test_inception_skip_reason_is_bounded(tmp_path: Path, monkeypatch) -> None:
    """A library error listing thousands of names is cut to a bounded ``fid_skipped``."""
    from cxrsynth.errors import CxrsynthError
    from cxrsynth.evaluate import inception
    from cxrsynth.evaluate.runner import SKIP_REASON_CHARS, EvaluateOptions, inception_group

    user_file = tmp_path / "inception.pth"
    _small_inception_layout(user_file)

    def rejecting(*_args, **_kwargs):
        raise CxrsynthError("torch-fidelity rejected the weights: " + "Mixed_7c.branch3x3.conv.weight, " * 700)

    monkeypatch.setattr(inception, "inception_metrics", rejecting)
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    report = {"warnings": []}
    inception_group(SimpleNamespace(reference=images, synthetic=images),
                    EvaluateOptions(inception_weights=user_file), ("fid",), report, lambda _: None)
    assert report["fid_skipped"].startswith("torch-fidelity rejected the weights")
    assert len(report["fid_skipped"]) < SKIP_REASON_CHARS + 60 and "characters cut" in report["fid_skipped"]


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared tiny run (samples/ with manifest.csv)."""
    return copy_run(tiny_run, tmp_path / "run")


def _evaluate(run: Path) -> list[str]:
    return ["evaluate", "--run", str(run), "--metrics", "pixel"]


def test_manifest_names_a_file_outside_the_samples_folder(run: Path, tmp_path: Path, capsys) -> None:
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((32, 32), 7, dtype=np.uint8)).save(secret)
    manifest = run / "samples" / "manifest.csv"
    lines = manifest.read_text().splitlines()
    lines[1] = "../../secret.png" + lines[1][lines[1].index(","):]
    manifest.write_text("\n".join(lines) + "\n")
    before = sorted(path.name for path in (run / "eval").iterdir())
    result = run_cli(_evaluate(run), capsys)
    assert_clear_error(result, "outside the samples folder", "../../secret.png")
    assert sorted(path.name for path in (run / "eval").iterdir()) == before


def test_truncated_sample_png(run: Path, capsys) -> None:
    first = run / "samples" / "sample_000000.png"
    first.write_bytes(first.read_bytes()[:60])
    result = run_cli(_evaluate(run), capsys)
    assert_clear_error(result, "sample_000000.png", "cannot be read", "cxrsynth sample")


def test_manifest_not_utf8(run: Path, capsys) -> None:
    manifest = run / "samples" / "manifest.csv"
    manifest.write_bytes(manifest.read_bytes().replace(b"file", b"f\xffile", 1))
    result = run_cli(_evaluate(run), capsys)
    assert_clear_error(result, "manifest.csv", "UTF-8")


def test_corrupt_sample_settings_json(run: Path, capsys) -> None:
    settings = next((run / "samples").glob("*.json"))
    settings.write_text("{not json")
    result = run_cli(["sample", "--run", str(run), "--num-images", "9", "--device", "cpu"], capsys)
    assert_clear_error(result, settings.name)


def test_audit_on_moved_data(run: Path, tmp_path: Path, capsys) -> None:
    """The prepared data moved after training: the error names the folder and --data, and no other stage."""
    config = run / "config.yaml"
    text = config.read_text()
    data_line = next(line for line in text.splitlines() if line.strip().startswith("data:"))
    config.write_text(text.replace(data_line, data_line.split("data:")[0] + f"data: {tmp_path / 'moved_away'}"))
    audit_before = sorted(path.name for path in (run / "audit").iterdir())
    result = run_cli(["audit", "--run", str(run), "--device", "cpu"], capsys)
    assert_clear_error(result, "moved_away", "does not exist", "--data DATA")
    assert "evaluate" not in result.text.lower()
    assert sorted(path.name for path in (run / "audit").iterdir()) == audit_before


def test_audit_of_data_with_too_few_patients(run: Path, tmp_path: Path, capsys) -> None:
    """3 member and 3 holdout patients: the error says the data is too small, never "--num-members 3" (below the minimum)."""
    from tests.factories import make_prepared_folder

    small = make_prepared_folder(tmp_path / "small", n_patients=6, images_per_patient=1, size=32,
                                 split_cycle=("member", "holdout"))
    audit_before = sorted(path.name for path in (run / "audit").iterdir())
    result = run_cli(["audit", "--run", str(run), "--data", str(small), "--num-members", "10", "--device", "cpu"], capsys)
    assert_clear_error(result, "at least 4 member and 4 holdout patients", "3 member and 3 holdout", "--holdout-fraction")
    assert "--num-members 3" not in result.text
    assert sorted(path.name for path in (run / "audit").iterdir()) == audit_before

