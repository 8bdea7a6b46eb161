"""Fixtures of the release tests: the shared tiny run is the root conftest's ``tiny_run``."""

from __future__ import annotations

from typing import Iterator

import pytest
from accelerate.state import AcceleratorState


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> Iterator[None]:
    """Every test here runs torch and BLAS on one thread (see the root conftest's ``one_thread``)."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)  # sampling pins accelerate's process state

