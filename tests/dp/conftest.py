"""Fixtures shared by the differential-privacy tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs torch and BLAS on one thread (see the root conftest's ``one_thread``)."""
