"""Compiled KAT vs ViT training step on CPU, interleaved in one process (issue 21's CPU goal).

    python -m bench.cpu_step_ab [--size T] [--batch 8] [--rounds 5] [--threads 2] [--inline] [--old-reduction] [--select]

Compiles (``torch.compile(fullgraph=True)``) the timm ViT and KAT of ``--size`` (forward +
cross-entropy + backward + AdamW, fp32; the KAT's rationals as compiled-kernel calls, the default
CPU lowering) and, with ``--inline``, a KAT whose rationals inductor inlines into the model's graph
(``FUSEDKAT_CPU_LOWERING=inline``, the CPU lowering before); with ``--old-reduction``, an inlined KAT whose
coefficient-gradient sums use the single strided reduction over dims (0, 2) that
``fusedkat.ops.torch_impl._group_sums`` replaced; with ``--select``, a KAT traced with the
large-|x| exact path selected per element in the inlined graph (``torch_impl`` mode ``"select"``, which
the CPU lowering used before its ``"host"`` mode); then times ``--rounds`` rounds, each one step
of every model in turn, and prints the median ms per step and the KAT/ViT ratios, with the load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F


def _step_fn(name: str, batch: int, img: int, variant: Optional[str]):
    """(step, compile seconds) of a compiled training step; ``variant``: None, "inline", "old_reduction" or
    "select" (the last three inline the rationals: FUSEDKAT_CPU_LOWERING=inline while tracing)."""
    import timm

    import fusedkat.models  # noqa: F401
    from fusedkat.ops import lowering, torch_impl

    torch.manual_seed(0)
    model = timm.create_model(name, img_size=img, num_classes=1000).train()
    # A variant gets a backend of its own (an inductor option: no FX graph cache): Dynamo would
    # otherwise reuse the graph compiled for the same class just before (the parameters are graph
    # inputs, not guarded by identity), and the variant would time the default's code.
    options = {"fx_graph_cache": False} if variant is not None else None
    run = torch.compile(model, fullgraph=True, options=options)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, img, img)
    y = torch.randint(0, 1000, (batch,))
    new, mode = torch_impl._group_sums, lowering.traced_mode
    saved_env = os.environ.get("FUSEDKAT_CPU_LOWERING")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(run(x), y).backward()
        opt.step()

    if variant is not None:  # trace (compile) with the variant; the compiled code keeps it.  The
        # compile caches key on the Dynamo graph, not on our decomposition's code: bypass them, or
        # the KAT compiled just before is reused unchanged
        import torch._functorch.config as fconfig
        import torch._inductor.config as iconfig

        fconfig.enable_autograd_cache = False
        iconfig.fx_graph_cache = False
        os.environ["FUSEDKAT_CPU_LOWERING"] = "inline"
        if variant == "inline":
            pass
        elif variant == "old_reduction":
            torch_impl._group_sums = lambda terms, cpu: torch.stack([t.sum(dim=(0, 2)) for t in terms])
        elif variant == "select":
            lowering.traced_mode = lambda device: "select"
        else:
            raise ValueError(f"unknown variant {variant!r}")
    try:
        t0 = time.perf_counter()
        step()
        step()
        compile_s = time.perf_counter() - t0
    finally:
        torch_impl._group_sums, lowering.traced_mode = new, mode
        if saved_env is None:
            os.environ.pop("FUSEDKAT_CPU_LOWERING", None)
        else:
            os.environ["FUSEDKAT_CPU_LOWERING"] = saved_env
    return step, compile_s


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_step_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="T", choices=("T", "S"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inline", action="store_true", help="also a KAT with the rationals inlined in the graph")
    p.add_argument("--old-reduction", action="store_true")
    p.add_argument("--select", action="store_true", help="also a KAT with the exact path selected in the graph")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = {"T": ("vit_tiny_patch16_224", "kat_tiny_patch16_224"), "S": ("vit_small_patch16_224", "kat_small_patch16_224")}
    vit, kat = names[args.size]
    variants = {"vit": (vit, None), "kat": (kat, None)}
    if args.inline:
        variants["kat_inline"] = (kat, "inline")
    if args.old_reduction:
        variants["kat_old_reduction"] = (kat, "old_reduction")
    if args.select:
        variants["kat_select"] = (kat, "select")
    steps = {}
    for key, (name, variant) in variants.items():
        steps[key], cs = _step_fn(name, args.batch, args.img_size, variant)
        print(f"compiled {key} ({name}) in {cs:.0f} s", flush=True)
    times = {k: [] for k in steps}
    load0 = os.getloadavg()
    for _ in range(args.rounds):
        for k, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"median ms per step over {args.rounds} interleaved rounds ({args.threads} threads, batch {args.batch}; "
          f"load {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after)")
    for k, v in med.items():
        print(f"  {k:<20}{v:9.1f}   x{v / med['vit']:.3f} of ViT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
