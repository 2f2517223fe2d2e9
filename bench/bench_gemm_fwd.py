"""Fused GR-KAN forward GEMM (issue 6) vs the cuBLAS floor, the unfused pair and inductor.

pytest-benchmark groups ``gemm_fwd_<model>_<K>x<N>`` (+ ``gemm_fwd_peak``); GPU only (skipped
without CUDA sm_80/sm_90 and the DSL).  Shapes: the KAT-T/S/B MLP layers at batch 128 (M = 128*197
tokens; K -> N = D -> 4D and 4D -> D), ``FUSEDKAT_BENCH_SIZE=small`` uses batch 8.  bf16, 8 groups,
form A.  Implementations (``extra_info["impl"]``):

* ``cublas_linear`` — the floor: ``F.linear(x, W, b)`` with no rational at all.  Goal: fused <= 1.10x.
* ``unfused`` — our elementwise rational kernel writes F(x), then cuBLAS (``FUSEDKAT_FUSED_FWD=0``).
* ``inductor_max_autotune`` — ``torch.compile(mode="max-autotune")`` of the torch rational + linear
  (inductor may fuse the pointwise prologue into its Triton GEMM template).  Goal for both: fused
  >= 1.3x faster.
* ``fused`` — the heuristic config (on sm_90: the warp-specialized ``sm90ws`` kernel);
  ``fused_autotuned`` — the autotuned one.
* sm_90 only: ``fused_sm90`` — the first WGMMA kernel (``FUSEDKAT_FWD_KERNEL=sm90``);
  ``fused_ws_fid`` / ``fused_ws_nomma`` — the sm90ws diagnostic variants, F = identity (the MMA and
  pipeline floor) and no MMA (the ALU floor): full ~ their sum means no overlap, ~ their max means
  overlap.
* ``peak`` (group ``gemm_fwd_peak``) — an 8192^3 bf16 ``torch.mm``: the device's measured peak.

``extra_info["flops"]`` = 2 M N K: TFLOP/s = flops / median.  ``extra_info["gpu_us"]``: GPU time per
call by CUDA events (:func:`bench._gemm_shapes.gpu_time_us`, back-to-back launches), which the
goal ratios of issue 15 are stated in; the median is wall time with a sync per call.  Ratios within one run:
``python -m bench.bench_gemm_fwd RESULTS.json`` prints them.  With ``--benchmark-disable`` each
function runs once and the fused result is checked against the unfused one (also a GPU test).
"""
from __future__ import annotations

import sys
from collections import defaultdict

import pytest
import torch

from bench._gemm_shapes import BATCH, GROUPS, TOKENS, fmt, gpu_time_us, summary_cli
from bench._gemm_shapes import gemm_kernels_available as _available, mlp_cases as _cases
from bench._harness import bench_size, measure

pytestmark = pytest.mark.gpu

IMPLS = ("cublas_linear", "unfused", "inductor_max_autotune", "fused", "fused_autotuned",
         "fused_sm90", "fused_ws_fid", "fused_ws_nomma")
#: Implementations that exist only on sm_90 (the two WGMMA kernels' comparisons and diagnostics).
SM90_ONLY = ("fused_sm90", "fused_ws_fid", "fused_ws_nomma")


def _inputs(k: int, n_out: int):
    rows = BATCH[bench_size()] * TOKENS
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = (torch.randn(n_out, k, device="cuda", generator=gen) / k**0.5).to(torch.bfloat16)
    b = torch.randn(n_out, device="cuda", generator=gen).to(torch.bfloat16)
    num = torch.randn(1, 6, device="cuda", generator=gen) * 0.5
    den = torch.randn(GROUPS, 4, device="cuda", generator=gen) * 0.5
    return x, num, den, w, b


@pytest.mark.skipif(not _available(), reason="needs CUDA sm_80/sm_90 and the CuTe DSL")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model,k,n_out", list(_cases()))
def test_gemm_fwd(benchmark, impl, model, k, n_out, monkeypatch):
    from cutlass_kernels import launch
    from cutlass_kernels.gemm import fwd_launch
    from fusedkat.ops import torch_impl

    if impl in SM90_ONLY and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("sm_90 only")
    x, num, den, w, b = _inputs(k, n_out)
    info = {}
    if impl == "cublas_linear":
        def fn():
            return torch.nn.functional.linear(x, w, b)
    elif impl == "unfused":
        monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "0")

        def fn():
            return launch.rational_linear_forward(x, num, den, w, b, "A")
    elif impl == "inductor_max_autotune":
        fn = torch.compile(lambda: torch.nn.functional.linear(
            torch_impl.group_rational_forward(x, num, den, "A"), w, b), mode="max-autotune")
    elif impl in ("fused_ws_fid", "fused_ws_nomma"):
        (cfg, *_) = fwd_launch.ws_candidates(n_out, k)
        cfg = {**cfg, "identity": True} if impl == "fused_ws_fid" else {**cfg, "mma": False}
        info["config"] = cfg

        def fn():
            return fwd_launch.rational_linear_forward(x, num, den, w, b, "A", config=cfg)
    else:
        tune = impl == "fused_autotuned"
        if impl == "fused_sm90":
            monkeypatch.setenv(fwd_launch.ENV_FWD_KERNEL, "sm90")
        cfg = fwd_launch.choose_config(x, w, den, "A", 5, 4, autotune=False)
        info["config"] = {f: list(v) if isinstance(v, tuple) else v for f, v in cfg.items()} if not tune else "autotuned"

        def fn():
            return fwd_launch.rational_linear_forward(x, num, den, w, b, "A", autotune=tune)

    if not benchmark.disabled:
        info["gpu_us"] = gpu_time_us(fn)
    out = measure(benchmark, fn, group=f"gemm_fwd_{model}_{k}x{n_out}", impl=impl, device=x.device,
                  model=f"KAT-{model}", rows=x.shape[0], k=k, n=n_out, groups=GROUPS,
                  flops=2 * x.shape[0] * k * n_out, gpu=torch.cuda.get_device_name(), **info)
    if impl.startswith("fused") and impl not in ("fused_ws_fid", "fused_ws_nomma") and benchmark.disabled:
        monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "0")
        ref = launch.rational_linear_forward(x, num, den, w, b, "A")
        rel = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
        assert rel < 2e-2, rel


@pytest.mark.skipif(not _available(), reason="needs CUDA sm_80/sm_90 and the CuTe DSL")
def test_gemm_fwd_peak(benchmark):
    """The device's bf16 tensor-core rate as torch/cuBLAS reaches it on a large square GEMM."""
    n = 8192 if bench_size() == "paper" else 4096
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    bm = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    measure(benchmark, lambda: torch.mm(a, bm), group="gemm_fwd_peak", impl="peak", device=a.device,
            rows=n, k=n, n=n, flops=2 * n**3, gpu=torch.cuda.get_device_name())


def summarize(data: dict) -> str:
    """Markdown table of a ``--benchmark-json`` run: TFLOP/s and the goal ratios per shape."""
    peak = None
    by_group: dict[str, dict[str, dict]] = defaultdict(dict)
    for bm in data["benchmarks"]:
        info, med = bm.get("extra_info", {}), bm["stats"]["median"]
        if bm.get("group") == "gemm_fwd_peak":
            peak = info["flops"] / med / 1e12
        elif str(bm.get("group", "")).startswith("gemm_fwd_"):
            by_group[bm["group"]][info["impl"]] = {"s": med, "tflops": info["flops"] / med / 1e12,
                                                   "gpu_us": info.get("gpu_us", float("nan"))}
    lines = [f"measured bf16 peak (torch.mm): {peak:.0f} TFLOP/s" if peak else "peak: not measured", "",
             "| shape | " + " | ".join(f"{i} TFLOP/s" for i in IMPLS) + " | fused/floor | unfused/fused | inductor/fused |",
             "|" + "---|" * (len(IMPLS) + 4)]
    for group, r in sorted(by_group.items()):
        def t(i):
            return r[i]["tflops"] if i in r else float("nan")

        def ratio(a, b):
            return r[a]["s"] / r[b]["s"] if a in r and b in r else float("nan")

        lines.append(f"| {group[9:]} | " + " | ".join(fmt(t(i), ".0f") for i in IMPLS)
                     + f" | {fmt(ratio('fused', 'cublas_linear'), '.2f')} | {fmt(ratio('unfused', 'fused'), '.2f')}"
                     + f" | {fmt(ratio('inductor_max_autotune', 'fused'), '.2f')} |")
    gpu_impls = ("cublas_linear", "unfused", "fused", "fused_sm90", "fused_ws_fid", "fused_ws_nomma")
    lines += ["", "GPU time per call (us, CUDA events, back-to-back launches):", "",
              "| shape | " + " | ".join(gpu_impls) + " | fused/cuBLAS | unfused/fused | fid+nomma vs fused |",
              "|" + "---|" * (len(gpu_impls) + 4)]
    for group, r in sorted(by_group.items()):
        def us(i):
            return r[i]["gpu_us"] if i in r else float("nan")

        over = us("fused") / max(us("fused_ws_fid"), us("fused_ws_nomma"))  # 1.0: full overlap
        lines.append(f"| {group[9:]} | " + " | ".join(fmt(us(i), ".1f") for i in gpu_impls)
                     + f" | {fmt(us('fused') / us('cublas_linear'), '.2f')} | {fmt(us('unfused') / us('fused'), '.2f')}"
                     + f" | {fmt(over, '.2f')}x max, sum {fmt(us('fused_ws_fid') + us('fused_ws_nomma'), '.1f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    summary_cli("bench_gemm_fwd", summarize, sys.argv[1:])
