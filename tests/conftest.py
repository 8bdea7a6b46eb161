"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import make_prepared_folder


@pytest.fixture
def tiny_prepared(tmp_path: Path) -> Path:
    """A small prepared-data folder: 12 patients × 2 images at 32², splits member/holdout/test."""
    return make_prepared_folder(tmp_path / "prepared")
