"""Shared plumbing of the benchmark suites: the size knob, the device, peak memory, the run record.

Every benchmark goes through :func:`measure`, which

* sets the pytest-benchmark ``group`` and ``extra_info`` (implementation id, shapes, size, device),
* when benchmarking is on: calls the function once to warm up (torch.compile compiles there, not
  inside the timed rounds), then once more to record its peak memory, then times it;
* when benchmarking is off (``--benchmark-disable``, as in CI): calls it exactly once, so the suite
  stays a fast correctness test.

Peak memory (``extra_info["peak_mem_bytes"]``) is the memory the call needs above what was live
before it:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the bytes
  allocated before (the caching allocator's view, like the paper's "Peak Memory (M)").
* CPU: the resident-set high-water mark.  ``malloc_trim(0)`` hands freed heap pages back first, then
  writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` to the current RSS; after the call
  ``VmHWM - VmRSS(before)`` is the peak, exact to a page and including temporaries that C++ code
  (ATen, inductor kernels) allocates, which ``tracemalloc`` cannot see.
"""
from __future__ import annotations

import ctypes
import os
from typing import Any, Callable, Optional

import torch

SIZES = ("small", "paper")
SIZE_ENV = "FUSEDKAT_BENCH_SIZE"
DEVICE_ENV = "FUSEDKAT_BENCH_DEVICE"


def bench_size() -> str:
    """``$FUSEDKAT_BENCH_SIZE`` (default ``small``); ValueError for anything else."""
    size = os.environ.get(SIZE_ENV, "small").strip().lower() or "small"
    if size not in SIZES:
        raise ValueError(f"{SIZE_ENV}={size!r} is not one of {SIZES}")
    return size


def bench_device() -> torch.device:
    """``$FUSEDKAT_BENCH_DEVICE`` if set, else CUDA when available, else CPU."""
    name = os.environ.get(DEVICE_ENV, "").strip()
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    """Wait for queued kernels so that a timed call includes its GPU work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# peak memory
# ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the reset below still works, the baseline is just less tidy
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[Optional[int], str]:
    """Run ``fn()`` once; return (peak bytes above the memory live before, method name).

    The bytes are None where the platform gives no way to measure (method says why).
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(peak), "cuda.max_memory_allocated"
    if not _reset_cpu_peak():
        fn()
        return None, "unavailable (/proc/self/clear_refs not writable)"
    before = _status_kib("VmRSS")
    out = fn()
    after_hwm = _status_kib("VmHWM")
    del out
    if before is None or after_hwm is None:
        return None, "unavailable (no /proc/self/status)"
    return max(0, after_hwm - before) * 1024, "rss_high_water (clear_refs + malloc_trim)"


# ---------------------------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------------------------
def measure(benchmark, fn: Callable[[], Any], *, group: str, impl: str, device: torch.device,
            warmup: int = 1, **info: Any) -> Any:
    """Benchmark ``fn`` (no arguments) under ``group``; returns the result of its last call.

    ``info`` goes into ``extra_info`` (shapes, groups, batch, ...); ``impl`` names the
    implementation (``looped``, ``vectorized``, ``fusedkat_torch`` ...) and is what the report
    compares.  ``fn`` must include everything that belongs to the measured work; GPU work is
    synchronised after each call.
    """

    def call():
        out = fn()
        sync(device)
        return out

    benchmark.group = group
    benchmark.extra_info.update(impl=impl, size=bench_size(), device=str(device), **info)
    if benchmark.disabled:
        return benchmark(call)  # exactly one call, no timing
    for _ in range(warmup):
        call()
    peak, method = peak_memory(call, device)
    benchmark.extra_info.update(peak_mem_bytes=peak, peak_mem_method=method)
    return benchmark(call)


def cute_available(device: torch.device, op: str = "group_rational_forward") -> Optional[str]:
    """None if the CuTe kernels can run ``op`` on ``device``, else why not (for skip messages)."""
    from fusedkat.ops import dispatch

    return dispatch.cute_unavailable_reason(device, op)


def compile_fn(fn: Callable, **kwargs: Any) -> tuple[Callable, str]:
    """``torch.compile`` with the ``fusedkat`` backend when compile_passes provides it, else inductor.

    Returns (compiled function, backend name) so the benchmark can record which one ran.
    """
    try:
        from compile_passes.backend import fusedkat_backend  # noqa: F401

        backend = "fusedkat"
        compiled = torch.compile(fn, backend=fusedkat_backend, **kwargs)
    except ImportError:
        backend = "inductor"
        compiled = torch.compile(fn, **kwargs)
    return compiled, backend
