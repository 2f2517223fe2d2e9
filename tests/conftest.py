"""Shared test configuration.

pytest puts this directory on sys.path (prepend import mode), so every test — including those in
sub-folders such as tests/gpu/ — can `from rational_reference import ...`.
"""
from __future__ import annotations

import os

import pytest
import torch

# The two cores of a CI machine: more threads than cores only adds contention.
torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


@pytest.fixture
def seeded():
    """A torch generator seeded per test, for reproducible random inputs."""
    return torch.Generator().manual_seed(1234)
