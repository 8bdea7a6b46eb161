"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch
from threadpoolctl import threadpool_limits

from tests.factories import make_prepared_folder


@pytest.fixture
def tiny_prepared(tmp_path: Path) -> Path:
    """A small prepared-data folder: 12 patients × 2 images at 32², splits member/holdout/test."""
    return make_prepared_folder(tmp_path / "prepared")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run torch and BLAS on one thread while the test runs.

    The tests' networks are tiny and gain nothing from two threads, while on the shared 2-core
    test machine two threads per process oversubscribe the cores (a tiny-UNet step was 5-6x
    slower with two under load). Folders whose tests all need it use it from an autouse fixture.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with config, log, pipeline, samples, eval/ and audit/ (read only: copy it to change it)."""
    from tests.tiny_run import shared_tiny_run

    return shared_tiny_run(tmp_path_factory)
