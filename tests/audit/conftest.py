"""Fixtures shared by the audit tests."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """One torch thread: these tiny networks gain nothing from two, and on a shared 2-core machine two
    threads per process oversubscribe the cores (a tiny-UNet step was 5x slower with two under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
