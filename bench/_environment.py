"""What a benchmark run needs to be reproduced: versions, threads, malloc settings, device.

CPU timings of big tensors depend on glibc's malloc: with the default dynamic mmap threshold
every fresh 100+ MB temporary is a new mmap that the kernel page-faults in again (DESIGN.md
measured 1.04 s vs 0.22 s for the same vectorized rational).  So every run records the MALLOC_*
variables, LD_PRELOAD (jemalloc / tcmalloc) and the thread settings next to its numbers.
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any, Optional

import torch

from fusedkat.app.info import cpu_name

from ._harness import bench_device, bench_size

_ENV_PREFIXES = ("MALLOC_", "FUSEDKAT_", "OMP_", "MKL_", "KMP_", "TORCHINDUCTOR_", "CUTE_DSL_")
_ENV_NAMES = ("LD_PRELOAD", "CUDA_VISIBLE_DEVICES", "NVTX_INJECTION64_PATH", "TORCH_COMPILE_DEBUG")


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict[str, Any]:
    """A JSON-able description of how this process runs benchmarks."""
    device = bench_device()
    info: dict[str, Any] = {
        "size": bench_size(),
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libc": " ".join(platform.libc_ver()),
        "cpu_model": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        # other work on the machine skews CPU timings: the load when the run's record was written
        "loadavg_1_5_15": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "versions": {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "timm": _version("timm"),
            "fusedkat": _version("fusedkat"),
            "nvidia-cutlass-dsl": _version("nvidia-cutlass-dsl"),
            "nvtx": _version("nvtx"),
            "pytest-benchmark": _version("pytest-benchmark"),
        },
        "git_commit": _git_commit(),
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES},
    }
    # Spell out the malloc situation even when nothing is set: "default glibc thresholds" is a fact.
    info["malloc"] = ({k: v for k, v in info["env"].items() if k.startswith("MALLOC_")}
                      or "glibc defaults (dynamic mmap threshold)")
    if os.environ.get("LD_PRELOAD"):
        info["malloc_preload"] = os.environ["LD_PRELOAD"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1)}
        from ._harness import cute_available

        info["cute_unavailable_reason"] = cute_available(device)
    return info
