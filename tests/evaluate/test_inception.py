"""Inception weights resolution (offline, never downloading) and equality with torch-fidelity's own numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrsynth.cli import main
from cxrsynth.data.prepared import load_prepared
from cxrsynth.errors import CxrsynthError
from cxrsynth.evaluate import inception
from tests.evaluate.helpers import make_run, random_inception_weights, write_png_folder


@pytest.fixture
def empty_torch_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point torch.hub (torch-fidelity's weights cache) at an empty folder."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    return hub


def test_missing_weights_give_the_reason_and_the_way_to_provide_them(empty_torch_hub: Path, tmp_path: Path) -> None:
    found = inception.resolve_inception_weights(tmp_path / "nowhere.pth")
    assert found.path is None and found.source == "none"
    assert str(tmp_path / "nowhere.pth") in found.skip_reason
    assert inception.STANDARD_WEIGHTS_URL in found.skip_reason
    assert str(empty_torch_hub / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in found.skip_reason
    assert "--inception-weights" in found.skip_reason


def test_weights_are_found_at_the_given_path_then_in_the_cache(empty_torch_hub: Path, tmp_path: Path) -> None:
    given = tmp_path / "given.pth"
    given.write_bytes(b"x")
    assert inception.resolve_inception_weights(given).source == "option"
    cached = inception.torch_fidelity_cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    found = inception.resolve_inception_weights(None)
    assert (found.source, found.path) == ("cache", cached)


def test_a_failing_download_is_reported_quickly(empty_torch_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inception, "STANDARD_WEIGHTS_URL", "http://127.0.0.1:9/weights.pth")
    found = inception.resolve_inception_weights(None, allow_download=True, timeout_s=2.0)
    assert found.path is None and "failed" in found.skip_reason
    assert not inception.torch_fidelity_cache_path().exists()


class _NotATensor:
    pass


def test_unsafe_or_wrong_weight_files_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "object.pth"
    torch.save({"fc.weight": _NotATensor()}, pickled)
    with pytest.raises(CxrsynthError, match="safe torch state dict"):
        inception.check_weights_file(pickled)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(CxrsynthError, match="not a torch-fidelity InceptionV3"):
        inception.check_weights_file(wrong)


def test_grayscale_is_repeated_to_three_uint8_channels() -> None:
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    item = inception.GrayscaleUint8Dataset(images)[1]
    assert item.dtype == torch.uint8 and item.shape == (3, 4, 4)
    assert all(torch.equal(item[c], torch.from_numpy(images[1])) for c in range(3))


@pytest.mark.slow
def test_cli_fid_kid_prc_equal_torch_fidelity_calculate_metrics(tmp_path: Path, empty_torch_hub: Path) -> None:
    import torch_fidelity

    weights = random_inception_weights(tmp_path / "inception.pth")
    run = make_run(tmp_path, n_patients=40)
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--run", str(run), "--metrics", "fid,kid,prc", "--inception-weights", str(weights)])
    assert exited.value.code == 0
    report = json.loads((run / "eval" / "fidelity.json").read_text())

    data = load_prepared(tmp_path / "prepared")
    real_dir = write_png_folder(tmp_path / "real_png", np.asarray(data.images[data.rows("test")]))
    theirs = torch_fidelity.calculate_metrics(
        input1=str(run / "samples"), input2=str(real_dir), fid=True, kid=True, prc=True,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights),
        kid_subset_size=report["inception"]["kid_subset_size"], rng_seed=0, cuda=False, cache=False, verbose=False,
        save_cpu_ram=True,
    )
    assert report["n_real"] == report["n_synthetic"] == 20
    assert report["fid"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_FID], rel=1e-6)
    assert report["fid"] > 1e-3  # random He-normal features are not degenerate
    assert report["kid"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_KID_MEAN], rel=1e-6, abs=1e-12)
    assert report["kid_std"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_KID_STD], rel=1e-6, abs=1e-12)
    assert report["precision"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_PRECISION])
    assert report["recall"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_RECALL])
    assert report["fid_skipped"] is None and report["inception"]["source"] == "option"
    assert report["inception"]["standard_weights"] is False
    assert any("not the standard torch-fidelity file" in warning for warning in report["warnings"])
