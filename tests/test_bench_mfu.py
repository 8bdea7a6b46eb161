"""bench/mfu.py: the FLOP count of a known layer and a sane matmul peak (a few seconds on CPU)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "mfu.py"


@pytest.fixture(scope="module")
def mfu():
    """bench/mfu.py loaded as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("mfu_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_forward_and_backward_flops_are_2mnk_and_6mnk(mfu):
    m, k, n = 8, 16, 4
    layer = torch.nn.Linear(k, n, bias=False)
    x = torch.randn(m, k, requires_grad=True)
    assert mfu.counted_flops(layer, x) == 2 * m * n * k
    # backward adds the input's and the weight's gradient, one matmul each
    assert mfu.counted_flops(lambda: layer(x).sum().backward()) == 6 * m * n * k


def test_matmul_peak_is_a_finite_positive_rate(mfu):
    peak = mfu.matmul_peak_flops("cpu", torch.float32, size=64, repeats=2, min_seconds=0.01)
    assert math.isfinite(peak) and peak > 0
    with pytest.raises(ValueError, match="size and repeats"):
        mfu.matmul_peak_flops("cpu", torch.float32, size=0)


def test_peak_precision_on_cpu_is_the_dtype(mfu):
    assert mfu.peak_precision("cpu", torch.float32) == "float32"
    assert mfu.peak_precision("cpu", torch.bfloat16) == "bfloat16"


def test_format_mfu_states_the_ratio(mfu):
    line = mfu.format_mfu("x", 2e9, 10.0, 40e9)
    assert line.startswith("MFU x:") and line.endswith("= 50.0%")
