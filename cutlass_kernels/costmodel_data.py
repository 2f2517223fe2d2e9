"""The GPU measurements the cycle model (:mod:`cutlass_kernels.costmodel`) is checked against.

Read from a ``bench/results/*.json`` file of ``scripts/gpu_suite.sh`` (default: the H100 runs of
2026-11-22).  Two kinds:

* ``gpu``: GPU kernel time per call from ``torch.profiler`` (``host_overhead`` section, runs 3, 4, 6
  and 7, all at KAT-B fc1: M = 25216, 768 -> 3072).  One row per kernel and run.  These are what
  the model is validated on.  Kernel roles, from the profiled names: ``nvjet*`` of
  ``cublas_linear`` = cuBLAS ``F.linear``; ``gemmfwd_sm90`` (``RationalGemmFwdSm90``) = the old fused
  forward; ``gemmbwd_sm90`` = the old fused dgrad + wgrad (one name, summed by the profiler); in the
  unfused backward of runs 4-7, ``nvjet*NNN`` = cuBLAS dgrad, ``nvjet*NTN`` = cuBLAS wgrad, the
  bf16 ``reduce_kernel<128, 4`` = the bias column sum, and of its two elementwise kernels the longer
  is the backward (reads G and x, writes dx) and the shorter recomputes F(x) (reads x, writes F(x)),
  as the README's profile says.
* ``wall``: pytest-benchmark wall time per call (``gemm_fwd`` / ``gemm_bwd`` run 3, all six KAT
  shapes), host launch overhead and a synchronisation included.  GPU time cannot exceed it, so the
  model checks ``predicted <= wall min`` there; it is no validation of the GPU time itself.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

#: The results file the model is validated against.
DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "2026-11-22-nvidia-h100-80gb-hbm3.json"
#: Shape of the ``host_overhead`` profile (rows, K, N): KAT-B fc1 at batch 128.
PROFILE_SHAPE = (25216, 768, 3072)

_LINE_RE = re.compile(r"^(?P<case>[^:]+): (?P<total>[0-9.]+) us of GPU work per call \((?P<inner>.*)\)$")
_ITEM_RE = re.compile(r"(.*?): (\d+(?:\.\d+)?)(?:, |$)")


@dataclass(frozen=True)
class Measurement:
    """One measured time: ``what`` is a model key (``cublas_fwd``, ``old_fused_fwd`` ...)."""

    what: str
    shape: tuple[int, int, int]  # (M, K, N)
    run: str
    us: float
    kind: str  # "gpu" | "wall"
    source: str  # where in the JSON it came from


def _profile_items(line: str) -> Optional[tuple[str, list[tuple[str, float]]]]:
    m = _LINE_RE.match(line.strip())
    if not m:
        return None
    return m.group("case").strip(), [(k.strip(), float(v)) for k, v in _ITEM_RE.findall(m.group("inner"))]


def _classify(case: str, items: list[tuple[str, float]]) -> list[tuple[str, float, str]]:
    """``(what, us, kernel name)`` for the kernels of one profiled case that the model covers."""
    out = []
    ew = sorted(((us, k) for k, us in items if "rational_elementwise" in k), reverse=True)
    for k, us in items:
        if case.startswith("cublas_linear (reference)") and k.startswith("nvjet"):
            out.append(("cublas_fwd", us, k))
        elif case == "group_rational_forward" and "rational_elementwise" in k:
            out.append(("elementwise_fwd", us, k))
        elif case == "group_rational_backward" and "rational_elementwise" in k:
            out.append(("elementwise_bwd", us, k))
        elif case == "rational_linear_forward" and "gemmfwd_sm90" in k:  # names are truncated
            out.append(("old_fused_fwd", us, k))
        elif case == "rational_linear_backward":
            if "gemmbwd_sm90" in k:
                out.append(("old_fused_bwd", us, k))
            elif k.startswith("nvjet") and k.endswith("NNN"):
                out.append(("cublas_dgrad", us, k))
            elif k.startswith("nvjet") and k.endswith("NTN"):
                out.append(("cublas_wgrad", us, k))
            elif k.startswith("void at::native::reduce_kernel<128, 4"):
                out.append(("colsum", us, k))
            elif "rational_elementwise" in k and len(ew) == 2:
                out.append(("elementwise_bwd" if (us, k) == ew[0] else "elementwise_fwd", us, k))
    return out


def load(path: Optional[Path] = None) -> list[Measurement]:
    """Every GPU-time and wall-time measurement in the results file (see the module docstring)."""
    path = Path(path) if path is not None else DEFAULT_RESULTS
    data = json.loads(path.read_text())
    out: list[Measurement] = []
    for run, lines in sorted(data.get("host_overhead", {}).items()):
        for line in lines if isinstance(lines, list) else []:
            parsed = _profile_items(line)
            if parsed is None:
                continue
            case, items = parsed
            for what, us, kernel in _classify(case, items):
                out.append(Measurement(what, PROFILE_SHAPE, run, us, "gpu", f"host_overhead.{run}: {case}: {kernel}"))
    wall_keys = {("gemm_fwd", "cublas_linear"): "cublas_fwd", ("gemm_fwd", "fused"): "old_fused_fwd",
                 ("gemm_fwd", "unfused"): "unfused_fwd", ("gemm_bwd", "cublas_linear_bwd"): "linear_bwd",
                 ("gemm_bwd", "fused"): "old_fused_bwd_total", ("gemm_bwd", "unfused"): "unfused_bwd_5launch"}
    for section in ("gemm_fwd", "gemm_bwd"):
        for run, tests in sorted(data.get(section, {}).items()):
            for name, rec in tests.items():
                info = rec.get("extra_info", {}) if isinstance(rec, dict) else {}
                what = wall_keys.get((section, info.get("impl")))
                if what is None or "min_ms" not in rec:
                    continue
                shape = (int(info["rows"]), int(info["k"]), int(info["n"]))
                out.append(Measurement(what, shape, run, rec["min_ms"] * 1e3, "wall", f"{section}.{run}: {name} (min)"))
    return out


def lookup(meas: list[Measurement], what: str, shape: tuple[int, int, int]) -> Optional[tuple[str, float]]:
    """``("gpu", median over runs)`` of a GPU-time measurement of ``what`` at ``shape``, else
    ``("wall", min)`` of a wall-time one, else None."""
    import statistics

    for kind in ("gpu", "wall"):
        vals = [x.us for x in meas if x.what == what and x.shape == tuple(shape) and x.kind == kind]
        if vals:
            return kind, (statistics.median(vals) if kind == "gpu" else min(vals))
    return None
