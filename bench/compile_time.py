"""Cold compile time of a KAT's first training step against its ViT twin (issue 20: the first minutes).

    python -m bench.compile_time [--size T] [--batch 8] [--rounds 3] [--threads 2] [--depth D] [--json PATH]

Each measurement is a fresh interpreter with its own empty inductor cache folder
(``TORCHINDUCTOR_CACHE_DIR``), so nothing compiled earlier is reused: it builds the timm model,
wraps it in ``torch.compile(fullgraph=True)`` and times the first training step (forward,
cross-entropy, backward, AdamW step; fp32 on CPU) with ``perf_counter``, then a second step (the
compiled steady state, for scale).  ViT and KAT alternate (ViT, KAT, ViT, KAT, ...) so that load
drifts hit both alike.  Prints the median first-step seconds per model, the KAT/ViT ratio (goal:
<= 1.5x) and the 1-minute load average, plus the compile-phase breakdown that
``torch._dynamo.utils.compile_times`` reports (its ``compilation_time_metrics``) for the last KAT and ViT runs (seconds per phase,
summed over graphs), which says where the time goes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

NAMES = {"T": ("vit_tiny_patch16_224", "kat_tiny_patch16_224"),
         "S": ("vit_small_patch16_224", "kat_small_patch16_224")}

#: The compile phases worth printing (``compile_times`` keys; others are folded into "other").
PHASES = ("_compile.compile_inner", "OutputGraph.call_user_compiler", "create_aot_dispatcher_function",
          "compile_fx.<locals>.fw_compiler_base", "compile_fx.<locals>.bw_compiler", "compile_fx_inner",
          "GraphLowering.run", "GraphLowering.codegen", "GraphLowering.compile_to_module",
          "Scheduler.__init__", "Scheduler.codegen", "PyCodeCache.load_by_key_path", "async_compile.wait")


def _child(name: str, batch: int, img: int, threads: int, depth: int = 0) -> dict:
    """One cold first step (runs in a fresh interpreter; see the module docstring)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    import timm

    import fusedkat.models  # noqa: F401  (registers the KAT models)

    torch.manual_seed(0)
    extra = {"depth": depth} if depth else {}
    model = timm.create_model(name, img_size=img, num_classes=1000, **extra).train()
    run = torch.compile(model, fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, img, img)
    y = torch.randint(0, 1000, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(run(x), y).backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    second = time.perf_counter() - t0
    from torch._dynamo.utils import compilation_time_metrics  # what compile_times() prints

    phases = {k: float(sum(v)) for k, v in compilation_time_metrics.items()}
    return {"model": name, "first_step_s": first, "second_step_s": second, "phases_s": phases}


def measure_one(name: str, batch: int, img: int, threads: int, depth: int = 0) -> dict:
    """Runs :func:`_child` in a fresh interpreter with an empty inductor cache; returns its JSON."""
    with tempfile.TemporaryDirectory(prefix="fusedkat-ct-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, CUDA_VISIBLE_DEVICES="")
        env.pop("TORCHINDUCTOR_FX_GRAPH_CACHE", None)
        proc = subprocess.run([sys.executable, "-m", "bench.compile_time", "--child", name, "--batch", str(batch),
                               "--img-size", str(img), "--threads", str(threads), "--depth", str(depth)],
                              env=env, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} compile run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Median first-step seconds per model and the KAT/ViT ratio."""
    med = {k: statistics.median(r["first_step_s"] for r in v) for k, v in runs.items()}
    steady = {k: statistics.median(r["second_step_s"] for r in v) for k, v in runs.items()}
    return {"median_first_step_s": med, "median_second_step_s": steady,
            "kat_over_vit": med["kat"] / med["vit"]}


def _phase_table(runs: dict[str, list[dict]]) -> list[str]:
    last = {k: v[-1]["phases_s"] for k, v in runs.items()}
    lines = [f"  {'phase (last run, s)':<42}{'ViT':>8}{'KAT':>8}"]
    for ph in PHASES:
        if ph in last["vit"] or ph in last["kat"]:
            lines.append(f"  {ph:<42}{last['vit'].get(ph, 0.0):8.1f}{last['kat'].get(ph, 0.0):8.1f}")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compile_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="T", choices=tuple(NAMES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--depth", type=int, default=0, help="blocks (default: the model's own, 12)")
    p.add_argument("--json", metavar="PATH", help="also write the medians, phases and raw runs as JSON")
    p.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or args.threads < 1 or args.img_size < 16 or args.depth < 0:
        p.error("--batch, --rounds and --threads must be >= 1, --img-size >= 16 and --depth >= 0")
    if args.child:
        print(json.dumps(_child(args.child, args.batch, args.img_size, args.threads, args.depth)))
        return 0
    if args.json:
        from fusedkat.files import OutputError, check_writable

        try:
            check_writable(args.json)
        except OutputError as e:
            p.error(str(e))
    vit, kat = NAMES[args.size]
    load0 = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {"vit": [], "kat": []}
    for rnd in range(args.rounds):
        for key, name in (("vit", vit), ("kat", kat)):
            r = measure_one(name, args.batch, args.img_size, args.threads, args.depth)
            runs[key].append(r)
            print(f"round {rnd + 1}/{args.rounds} {key}: first step {r['first_step_s']:.1f} s, "
                  f"second {r['second_step_s'] * 1e3:.0f} ms", flush=True)
    out = summarize(runs)
    load1 = os.getloadavg()[0]
    med = out["median_first_step_s"]
    print(f"cold first compiled training step, median of {args.rounds} ({args.threads} threads, batch {args.batch}, "
          f"fresh inductor cache each; load {load0:.2f} before, {load1:.2f} after)")
    print(f"  ViT-{args.size} {med['vit']:7.1f} s")
    print(f"  KAT-{args.size} {med['kat']:7.1f} s   x{out['kat_over_vit']:.2f} of ViT (goal <= 1.5x)")
    print("\n".join(_phase_table(runs)))
    if args.json:
        from fusedkat.files import atomic_write_text

        doc = {**out, "size": args.size, "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
               "img_size": args.img_size, "depth": args.depth or None,
               "load_before": load0, "load_after": load1, "runs": runs}
        atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
