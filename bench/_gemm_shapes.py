"""What the GPU GEMM suites (bench_gemm_fwd, bench_gemm_bwd) share: KAT MLP shapes, availability, and
how their summaries print numbers."""
from __future__ import annotations

import json
import sys
from typing import Callable

import pytest
import torch

#: Embedding width D of KAT-T/S/B; the MLP layers are D -> 4D (fc1) and 4D -> D (fc2).
KAT_DIMS = {"T": 192, "S": 384, "B": 768}
TOKENS = 197  # 196 patches + class token at 224^2, patch 16
BATCH = {"small": 8, "paper": 128}
GROUPS = 8


def gemm_kernels_available() -> bool:
    """True on CUDA sm_80/sm_90 with the CuTe DSL importable (what the fused GEMMs need)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] not in (8, 9):
        return False
    try:
        import cutlass  # noqa: F401
    except ImportError:
        return False
    return True


def mlp_cases():
    """pytest params ``(model, K, N)`` for the fc1 and fc2 layers of KAT-T/S/B."""
    for model, d in KAT_DIMS.items():
        yield pytest.param(model, d, 4 * d, id=f"KAT-{model}-fc1")
        yield pytest.param(model, 4 * d, d, id=f"KAT-{model}-fc2")


def gpu_time_us(fn: Callable[[], object], calls: int = 20, rounds: int = 5) -> float:
    """GPU time per call of ``fn`` in microseconds by CUDA events: ``calls`` back-to-back launches
    between two events (host overhead hidden while the GPU stays busy), median over ``rounds``,
    after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def fmt(value: float, spec: str) -> str:
    """A number for the suites' summary tables; ``-`` for NaN (an implementation not in the run)."""
    return "-" if value != value else format(value, spec)


def summary_cli(module: str, summarize: Callable[[dict], str], argv: list[str]) -> None:
    """``python -m bench.<module> RESULTS.json``: print ``summarize`` of a --benchmark-json file."""
    if len(argv) != 1:
        sys.exit(f"usage: python -m bench.{module} RESULTS.json")
    with open(argv[0]) as fh:
        print(summarize(json.load(fh)))
