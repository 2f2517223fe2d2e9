"""Run a few KAT training steps with fusedkat's NVTX ranges on, for Nsight Systems.

    python -m bench.profile_kat [--model kat_tiny_patch16_224] [--batch 32] [--steps 5] [--compile]

Prints the ``nsys profile ...`` command line that profiles exactly this run, then runs it:
``--warmup`` untraced steps (compilation, allocator warm-up), then ``--steps`` steps inside
``fusedkat.profiling.nvtx_ranges()``, each in a ``step N`` range, between
``torch.cuda.profiler.start()/stop()`` so that ``nsys --capture-range=cudaProfilerApi`` records only
them.  Ranges (domain ``fusedkat``): every op launch, every module forward/backward of the model
(``blocks.3.mlp:KANMlp fwd 32x197x192``); see :mod:`fusedkat.profiling`.  Afterwards
``nsys stats --report nvtx_sum <output>.nsys-rep`` summarises time per range.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F


def nsys_command(argv: list[str], output: str, cuda: bool) -> str:
    """The nsys command line that profiles ``python -m bench.profile_kat <argv>``."""
    cmd = ["nsys", "profile", "--trace=" + ("cuda,nvtx,osrt" if cuda else "nvtx,osrt"),
           "--sample=none", "-o", output, "--force-overwrite=true"]
    if cuda:
        cmd += ["--capture-range=cudaProfilerApi", "--capture-range-end=stop"]
    cmd += [sys.executable, "-m", "bench.profile_kat", *argv]
    return shlex.join(cmd)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_kat", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="kat_tiny_patch16_224", help="a timm model name (kat_* or any ViT)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--depth", type=int, default=None, help="override the number of blocks")
    ap.add_argument("--steps", type=int, default=5, help="profiled training steps")
    ap.add_argument("--warmup", type=int, default=2, help="untraced steps before them")
    ap.add_argument("--compile", action="store_true", help="torch.compile(model, fullgraph=True)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--output", default="kat_profile", help="nsys report name (in the printed command)")
    ap.add_argument("--print-only", action="store_true", help="print the nsys command and exit")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    run_argv = [a for a in argv if a != "--print-only"]
    print("# profile with Nsight Systems:\n" + nsys_command(run_argv, args.output, device.type == "cuda"), flush=True)
    if args.print_only:
        return 0

    import timm

    import fusedkat.models  # noqa: F401  (registers kat_* in timm)
    from fusedkat import profiling

    kwargs = {"img_size": args.img_size}
    if args.depth is not None:
        kwargs["depth"] = args.depth
    model = timm.create_model(args.model, **kwargs).to(device).train()
    run = torch.compile(model, fullgraph=True) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, model.num_classes, (args.batch,), device=device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = F.cross_entropy(run(images), labels)
        loss.backward()
        opt.step()
        return loss.item()  # synchronises, so each step's range covers its GPU work

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    t0 = time.perf_counter()
    with profiling.nvtx_ranges():
        for i in range(args.steps):
            with profiling.nvtx_range(f"step {i}"):
                loss = step()
    elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.profiler.stop()
    print(f"{args.model} on {device}: {args.steps} steps, {elapsed / max(args.steps, 1) * 1e3:.1f} ms/step, "
          f"last loss {loss:.4f}")
    print(f"# then: nsys stats --report nvtx_sum {args.output}.nsys-rep")
    return 0


if __name__ == "__main__":
    sys.exit(main())
