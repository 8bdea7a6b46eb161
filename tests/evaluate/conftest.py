"""Fixtures shared by the evaluate tests."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run torch and BLAS on one thread: these tiny workloads gain nothing from two, and on the
    shared 2-core test machine two threads per process made a 40-step training 6× slower
    (1.7 s vs 11 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)
