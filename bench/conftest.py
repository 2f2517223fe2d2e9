"""pytest configuration of the benchmark suites.

* ``FUSEDKAT_BENCH_SIZE=small|paper`` (default small) picks the problem sizes; ``small`` finishes
  on a 2-core CPU in a few minutes, ``paper`` is the paper's sizes and is meant for a GPU.
* Under ``--benchmark-disable`` (CI) every benchmark runs its function once and checks its result:
  the suites are also tests.
* The JSON's ``machine_info["fusedkat"]`` records how the run was made (versions, threads, malloc
  environment, device, git commit): see :mod:`bench._environment`.
* At the small size the default per-benchmark time budget (``--benchmark-max-time``, 1 s) is cut to
  0.25 s unless given on the command line, so the whole suite stays within minutes.
"""
from __future__ import annotations

import pytest
import torch

from ._environment import environment
from ._harness import bench_device, bench_size

_SMALL_MAX_TIME = 0.25


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fusedkat"] = environment()


@pytest.fixture(scope="session")
def size() -> str:
    """``small`` or ``paper``."""
    return bench_size()


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the suites run on (CUDA when available)."""
    return bench_device()


@pytest.fixture
def benchmark(benchmark, request):
    """pytest-benchmark's fixture, with a shorter time budget at the small size."""
    user_set = any(a.startswith("--benchmark-max-time") for a in request.config.invocation_params.args)
    if bench_size() == "small" and not user_set:
        benchmark._max_time = min(benchmark._max_time, _SMALL_MAX_TIME)
    return benchmark


@pytest.fixture(autouse=True)
def _seed():
    """Fresh but reproducible random inputs in every benchmark."""
    torch.manual_seed(0)
