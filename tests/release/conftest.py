"""Fixtures of the release tests: the tiny real run shared with the report tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from accelerate.state import AcceleratorState

from tests.tiny_run import shared_tiny_run


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> Iterator[None]:
    """Every test here runs torch and BLAS on one thread (see the root conftest's ``one_thread``)."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)  # sampling pins accelerate's process state


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with config, log, pipeline, samples, eval/ and audit/ (read only: copy it to change it)."""
    return shared_tiny_run(tmp_path_factory)
