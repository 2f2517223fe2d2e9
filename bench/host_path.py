"""Host time per fusedkat op call on the way to the kernel, on CPU: what our Python adds.

    python -m bench.host_path [--calls 20000] [--reps 7] [--json PATH]

At a tiny shape (x [2, 8], K = N = 8) the kernels themselves cost a few microseconds, so the
difference between ``torch.ops.fusedkat.<op>`` (the custom-op machinery, autograd's wrapper, our
argument checks, the backend choice, the NVTX hook) and the raw ``torch_impl`` call it ends in is
the host overhead per op call.  Also times our own pieces alone (validation, ``dispatch.choose``,
``profiling.op_range``).  Variants are interleaved, ``reps`` rounds of ``calls`` calls each; the
minimum per variant is reported (the load of a shared machine only adds time).  Goal (issue 21):
<= 25 us per op call beyond the launch.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable, Optional

import torch


_NOOP: list = []


def _noop_op():
    """A custom op that only returns ``x.clone()``: torch's custom-op machinery alone (the share of
    the overhead that is not ours); and a bare custom op around the same ``torch_impl`` call as
    ``fusedkat::rational_linear`` (no checks, no dispatch: torch's share at that body)."""
    if not _NOOP:
        @torch.library.custom_op("fusedkat_bench::clone", mutates_args=())
        def clone(x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        clone.register_fake(lambda x: torch.empty_like(x))
        clone.register_autograd(lambda ctx, g: g, setup_context=lambda ctx, inputs, output: None)
        @torch.library.custom_op("fusedkat_bench::bare_rational_linear", mutates_args=())
        def bare(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
            from fusedkat.ops import torch_impl

            return torch_impl.rational_linear_forward(x, numerator, denominator, weight, bias, "A")

        bare.register_fake(lambda x, n, d, w, b: x.new_empty((*x.shape[:-1], w.shape[0])))
        _NOOP.extend([clone, bare])
    return _NOOP[0]


def cases() -> dict[str, Callable[[], object]]:
    """``{name: zero-argument call}``: the op paths and their pieces at a tiny shape, on CPU."""
    import fusedkat  # noqa: F401  (registers the ops)
    from fusedkat import profiling
    from fusedkat.ops import custom_ops, dispatch, rational_linear, torch_impl

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, generator=g)
    num, den = torch.randn(1, 6, generator=g), torch.randn(2, 4, generator=g)
    w, b = torch.randn(8, 8, generator=g), torch.randn(8, generator=g)
    xg = x.clone().requires_grad_()
    cpu = x.device
    ops = torch.ops.fusedkat
    clone = _noop_op()
    bare = _NOOP[1]
    return {
        "bare custom op around torch_impl (torch only)": lambda: bare(x, num, den, w, b),
        "x.clone() (raw)": lambda: x.clone(),
        "custom op clone (torch machinery only)": lambda: clone(x),
        "torch_impl.rational_linear_forward (raw)": lambda: torch_impl.rational_linear_forward(x, num, den, w, b, "A"),
        "fusedkat::rational_linear (no grad input)": lambda: ops.rational_linear(x, num, den, w, b, "A"),
        "fusedkat::rational_linear (x requires grad)": lambda: ops.rational_linear(xg, num, den, w, b, "A"),
        "fusedkat.ops.rational_linear (public)": lambda: rational_linear(x, num, den, w, b, form="A"),
        "torch_impl.group_rational_forward (raw)": lambda: torch_impl.group_rational_forward(x, num, den, "A"),
        "fusedkat::group_rational (no grad input)": lambda: ops.group_rational(x, num, den, "A"),
        "piece: argument checks (rational_linear)": lambda: custom_ops._check_linear(x, num, den, w, b, "A"),
        "piece: dispatch.choose": lambda: dispatch.choose(cpu, "rational_linear_forward"),
        "piece: profiling.op_range (off)": lambda: profiling.op_range("rational_linear_forward", cpu, (x,)),
    }


def measure(calls: int = 20000, reps: int = 7, threads: int = 1) -> dict[str, float]:
    """``{case: min us per call}`` over ``reps`` interleaved rounds of ``calls`` calls."""
    torch.set_num_threads(threads)
    cs = cases()
    best = {k: float("inf") for k in cs}
    for fn in cs.values():  # warm-up
        for _ in range(200):
            fn()
    for _ in range(reps):
        for name, fn in cs.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
    return best


def overhead(best: dict[str, float]) -> dict[str, float]:
    """Per-call host overhead of each op path over its raw ``torch_impl`` call (us)."""
    raw_rl = best["torch_impl.rational_linear_forward (raw)"]
    raw_gr = best["torch_impl.group_rational_forward (raw)"]
    raw_clone = best["x.clone() (raw)"]
    return {name: round(us - (raw_gr if "group_rational" in name else raw_clone if "clone" in name else raw_rl), 2)
            for name, us in best.items() if not name.startswith(("piece", "torch_impl", "x.clone"))}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.host_path", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = p.parse_args(argv)
    from fusedkat.files import atomic_write_text, check_writable

    if args.json:
        check_writable(args.json)
    best = measure(args.calls, args.reps)
    extra = overhead(best)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"host us per call (min of {args.reps} interleaved rounds of {args.calls}; 1 thread; load {load:.2f})")
    for name, us in best.items():
        tail = f"   (+{extra[name]:.1f} over raw)" if name in extra else ""
        print(f"  {name:<46}{us:8.2f}{tail}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"us_per_call": best, "overhead_us": extra, "load1": load}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
