"""Kernel benchmark of the group-rational elementwise kernels on a CUDA GPU.

    python -m cutlass_kernels.benchmark [--json PATH] [--quick]

For KAT-shaped activations ([batch*197, K], K in {192, 768, 3072}, g = 8, bf16 and fp32) it
times, with CUDA events (median of repeated runs after warm-up, same process, same inputs):

* ``cute``      the CuTe kernels (:mod:`cutlass_kernels.launch`)
* ``torch``     the eager torch implementation (:mod:`fusedkat.ops.torch_impl`)
* ``compiled``  the torch implementation under ``torch.compile`` (inductor-fused Triton)
* ``copy``      a plain device copy of x (reads + writes the same bytes as the forward)

and reports achieved bandwidth (bytes the op must move / time) and speedups versus torch and
compiled.  Numbers are meaningful only relative to each other within one run; nothing asserts
on them.  Exits with an error message when no GPU is present.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Callable

import torch

from fusedkat.files import OutputError, atomic_write_text, check_writable  # stdlib only: no fusedkat.app


def _time_ms(fn: Callable[[], object], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(quick: bool = False) -> list[dict]:
    from fusedkat.ops import torch_impl

    from . import launch

    rows_list = [8 * 197] if quick else [8 * 197, 64 * 197]
    ks = [768] if quick else [192, 768, 3072]
    out = []
    compiled_fwd = torch.compile(torch_impl.group_rational_forward, dynamic=False)
    compiled_bwd = torch.compile(torch_impl.group_rational_backward, dynamic=False)
    for dtype in (torch.bfloat16, torch.float32):
        for rows in rows_list:
            for k in ks:
                g = 8
                x = torch.randn(rows, k, device="cuda", dtype=dtype)
                grad = torch.randn_like(x)
                num = torch.randn(1, 6, device="cuda") * 0.5
                den = torch.randn(g, 4, device="cuda") * 0.5
                nbytes = x.numel() * x.element_size()
                for form in ("A", "B"):
                    cases = {
                        "fwd": (2 * nbytes, {
                            "cute": lambda: launch.group_rational_forward(x, num, den, form),
                            "torch": lambda: torch_impl.group_rational_forward(x, num, den, form),
                            "compiled": lambda: compiled_fwd(x, num, den, form),
                            "copy": lambda: x.clone(),
                        }),
                        "bwd": (3 * nbytes, {
                            "cute": lambda: launch.group_rational_backward(grad, x, num, den, form),
                            "torch": lambda: torch_impl.group_rational_backward(grad, x, num, den, form),
                            "compiled": lambda: compiled_bwd(grad, x, num, den, form),
                        }),
                    }
                    for direction, (moved, impls) in cases.items():
                        ms = {}
                        for name, fn in impls.items():
                            try:
                                ms[name] = _time_ms(fn, 3 if quick else 10, 10 if quick else 50)
                            except Exception as e:  # e.g. no Triton for torch.compile: record, go on
                                if name == "cute":
                                    raise
                                print(f"  {name} failed: {type(e).__name__}: {e}"[:300], flush=True)
                        row = {"kernel": f"group_rational_{direction}", "dtype": str(dtype).replace("torch.", ""),
                               "form": form, "rows": rows, "K": k, "groups": g, "bytes": moved,
                               "ms": ms, "GBps": {n: moved / (t * 1e6) for n, t in ms.items()},
                               "speedup_vs_torch": ms["torch"] / ms["cute"] if "torch" in ms else None,
                               "speedup_vs_compiled": ms["compiled"] / ms["cute"] if "compiled" in ms else None}
                        out.append(row)
                        print(f"{row['kernel']:<22} {row['dtype']:<9} {form} rows={rows:<6} K={k:<5} "
                              + " ".join(f"{n}={t:.4f}ms" for n, t in ms.items())
                              + f"  cute {row['GBps']['cute']:.0f} GB/s  vs compiled: {row['speedup_vs_compiled']}",
                              flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cutlass_kernels.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write rows as JSON")
    p.add_argument("--quick", action="store_true", help="one shape per dtype, fewer repetitions")
    args = p.parse_args(argv)
    if args.json:
        try:  # before the benchmark, not after it
            check_writable(args.json, what="--json file")
        except OutputError as e:
            p.error(str(e))
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to benchmark", file=sys.stderr)
        return 2
    from fusedkat.ops import dispatch

    reason = dispatch.cute_unavailable_reason(torch.device("cuda"), "group_rational_forward")
    if reason:
        print(f"the CuTe kernels cannot run here: {reason}", file=sys.stderr)
        return 2
    rows = run(args.quick)
    meta = {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
            "torch": torch.__version__, "timing": "CUDA events, median, after warm-up; bytes = x+y (fwd), g+x+dx (bwd)"}
    if args.json:
        atomic_write_text(args.json, json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
