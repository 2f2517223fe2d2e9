"""Host (CPU) cost per launch of the CuTe launchers, and where it goes (cProfile), on a CUDA GPU.

    python -m bench.host_overhead [--calls 200] [--top 18]

At KAT shapes a fused GEMM runs for tens of microseconds, so the Python work around each launch
(argument wrapping, the DSL's argument marshalling, allocations) decides whether the GPU waits on
the host.  For each launcher this prints: host microseconds per call (perf_counter over ``calls``
back-to-back launches, no synchronisation inside), GPU microseconds per call (CUDA events around
the same loop), and the top functions of a cProfile of the loop.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time

import torch


def _cases(rows: int = 8 * 197):
    from cutlass_kernels import abi, launch

    g, k, n_out = 8, 768, 3072
    x = torch.randn(rows, k, device="cuda").to(torch.bfloat16)
    go = torch.randn(rows, n_out, device="cuda").to(torch.bfloat16)
    w = (torch.randn(n_out, k, device="cuda") / k**0.5).to(torch.bfloat16)
    b = torch.randn(n_out, device="cuda").to(torch.bfloat16)
    num = torch.randn(1, 6, device="cuda") * 0.5
    den = torch.randn(g, 4, device="cuda") * 0.5
    fwd = lambda: launch.rational_linear_forward(x, num, den, w, b, "A")  # noqa: E731
    bwd = lambda: launch.rational_linear_backward(go, x, num, den, w, True, "A")  # noqa: E731
    cases = {
        "group_rational_forward": lambda: launch.group_rational_forward(x, num, den, "A"),
        "group_rational_backward": lambda: launch.group_rational_backward(x, x, num, den, "A"),
        # both paths of each direction, whatever the arch default is (FUSEDKAT_FUSED_FWD / _BWD)
        "rational_linear_forward [fused]": _with_env("FUSEDKAT_FUSED_FWD", "1", fwd),
        "rational_linear_forward [unfused]": _with_env("FUSEDKAT_FUSED_FWD", "0", fwd),
        "rational_linear_backward [fused]": _with_env("FUSEDKAT_FUSED_BWD", "1", bwd),
        "rational_linear_backward [unfused]": _with_env("FUSEDKAT_FUSED_BWD", "0", bwd),
    }
    # the pointer-ABI launchers once more through the DSL's executor (FUSEDKAT_TVM_FFI=0): the
    # calling convention's share of the host time
    for name in ("group_rational_forward", "group_rational_backward", "rational_linear_forward [fused]",
                 "rational_linear_backward [fused]"):
        cases[f"{name} [DSL executor]"] = _with_env(abi.ENV_FFI, "0", cases[name])
    cases["cublas_linear (reference)"] = lambda: torch.nn.functional.linear(x, w, b)
    # a plain linear layer's backward, as autograd runs it: dgrad, wgrad, bias column sums
    cases["cublas_linear_backward (reference)"] = lambda: (go @ w, go.t() @ x, go.sum(0))
    print(f"calling convention: {'TVM-FFI' if abi.ffi_enabled() else 'DSL executor'} (FUSEDKAT_TVM_FFI="
          f"{os.environ.get(abi.ENV_FFI, 'auto')})", flush=True)
    return cases


def _with_env(key: str, value: str, fn):
    def run():
        old = os.environ.get(key)
        os.environ[key] = value
        try:
            return fn()
        finally:
            if old is None:
                del os.environ[key]
            else:
                os.environ[key] = old

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.host_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--kernel-rows", type=int, default=128 * 197,
                   help="rows of the shape whose GPU kernel time (torch.profiler) is reported")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return 2
    for name, fn in _cases().items():
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        for _ in range(args.calls):
            fn()
        end.record()
        host_us = (time.perf_counter() - t0) / args.calls * 1e6
        end.synchronize()
        gpu_us = start.elapsed_time(end) / args.calls * 1e3
        print(f"== {name}: host {host_us:.1f} us/call, GPU stream {gpu_us:.1f} us/call", flush=True)
        if name.startswith("cublas"):
            continue
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.calls):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
        print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:6000], flush=True)
    _kernel_times(args.kernel_rows)
    return 0


def _labels(names: list[str]) -> dict[str, str]:
    """Printable labels for kernel names, unique per distinct name: the first 60 characters, plus
    ``#2``, ``#3`` ... in launch order where different kernels share them (CuTe DSL names start with
    the module and class, so dgrad and wgrad would otherwise print alike)."""
    labels: dict[str, str] = {}
    seen: dict[str, int] = {}
    for name in names:
        if name in labels:
            continue
        head = name[:60]
        seen[head] = seen.get(head, 0) + 1
        labels[name] = head if seen[head] == 1 else f"{head} #{seen[head]}"
    return labels


def _kernel_times(rows: int, calls: int = 20) -> None:
    """GPU time of the kernels alone (torch.profiler / CUPTI), per call, at ``rows`` x 768 -> 3072."""
    from torch.profiler import ProfilerActivity, profile

    print(f"== kernel time per call at rows={rows}, K=768, N=3072 (torch.profiler, {calls} calls)", flush=True)
    for name, fn in _cases(rows).items():
        if name.endswith("[DSL executor]"):  # same kernels: only the host side differs
            continue
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        total_us = sum(e.device_time for e in events) / calls
        labels = _labels([e.name for e in events])
        kernels: dict[str, float] = {}
        for e in events:
            kernels[labels[e.name]] = kernels.get(labels[e.name], 0.0) + e.device_time / calls
        top = ", ".join(f"{k}: {v:.1f}" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:6])
        print(f"{name}: {total_us:.1f} us of GPU work per call ({top})", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
