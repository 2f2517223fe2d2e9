"""Issue 21's goal table: KAT vs ViT training (and eager inference) throughput, per composition.

    python -m bench.goal_table [--sizes T,S,B] [--batches 64,256] [--modes compiled,cudagraphs,eager]
        [--compositions decomposed,cute_unfused,cute_fused] [--budget-s 420] [--json PATH]
        [--profile] [--device cuda] [--depth N] [--img-size 224] [--steps 10] [--warmup 3]

One process, one GPU, timm models, bf16 autocast on CUDA, forward + cross-entropy + backward + AdamW.
Per (size, batch, mode) ViT runs once and KAT once per composition:

* ``cute_fused``: ``FUSEDKAT_FUSED_FWD=1 FUSEDKAT_FUSED_BWD=1`` (the fused CuTe GEMMs wherever they
  take the arguments);
* ``cute_unfused``: ``FUSEDKAT_FUSED_FWD=0 FUSEDKAT_FUSED_BWD=0`` (CuTe elementwise + cuBLAS);
* ``decomposed``: ``FUSEDKAT_BACKEND=torch`` (inductor generates the rational from its torch
  decomposition and fuses it with the neighbours; in eager, the torch implementation).

Modes: ``compiled`` (``torch.compile(fullgraph=True)``), ``cudagraphs`` (``mode="reduce-overhead"``),
``eager``.  Each row: ms per step (median of ``--steps`` synchronised steps after ``--warmup``),
images/s, peak memory (``torch.cuda.max_memory_allocated``), and for KAT the ratios to ViT of the
same row (images/s, peak memory).  Eager rows also time inference (eval, no grad).  Rows run in
priority order (T before S before B, batch 64 before the large batch) and a row that would start
after ``--budget-s`` is listed as skipped, so the command ends in time.  ``--profile`` first runs
``bench.profile_step``'s per-kernel-class split of KAT-T vs ViT-T (compiled, batch 64); its time
counts against the budget.  Writes ``--json`` atomically (``fusedkat.files``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

MODELS = {"T": ("vit_tiny_patch16_224", "kat_tiny_patch16_224"),
          "S": ("vit_small_patch16_224", "kat_small_patch16_224"),
          "B": ("vit_base_patch16_224", "kat_base_patch16_224")}
COMPOSITIONS = {  # the fused one last: its sm_90 forward has not run on a GPU before, and a kernel fault
    # poisons the CUDA context for every later row
    "decomposed": {"FUSEDKAT_BACKEND": "torch", "FUSEDKAT_FUSED_FWD": None, "FUSEDKAT_FUSED_BWD": None},
    "cute_unfused": {"FUSEDKAT_FUSED_FWD": "0", "FUSEDKAT_FUSED_BWD": "0", "FUSEDKAT_BACKEND": None},
    "cute_fused": {"FUSEDKAT_FUSED_FWD": "1", "FUSEDKAT_FUSED_BWD": "1", "FUSEDKAT_BACKEND": None},
}
MODES = ("compiled", "cudagraphs", "eager")


@contextmanager
def env(values: dict[str, Optional[str]]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables inside the block; restore them after."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def plan(sizes: list[str], batches: list[int], modes: list[str], compositions: list[str]) -> list[dict]:
    """The rows in run order: per size, batch and mode, ViT then KAT per composition."""
    rows = []
    for size in sizes:
        for batch in batches:
            for mode in modes:
                rows.append({"size": size, "batch": batch, "mode": mode, "arch": "vit", "composition": None})
                rows += [{"size": size, "batch": batch, "mode": mode, "arch": "kat", "composition": c}
                         for c in compositions]
    return rows


def run_row(row: dict, *, device: torch.device, steps: int, warmup: int, img_size: int,
            depth: Optional[int]) -> dict:
    """Train ``steps`` + ``warmup`` steps of the row's model; its timings (see the module docstring)."""
    import timm

    import fusedkat.models  # noqa: F401  (registers kat_* in timm)

    name = MODELS[row["size"]][0 if row["arch"] == "vit" else 1]
    kw: dict = {"img_size": img_size, "num_classes": 1000}
    if depth is not None:
        kw["depth"] = depth
    cuda = device.type == "cuda"
    with env(COMPOSITIONS[row["composition"]] if row["composition"] else {}):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = timm.create_model(name, **kw).to(device).train()
        run = model
        if row["mode"] != "eager":
            run = torch.compile(model, fullgraph=True, **({"mode": "reduce-overhead"} if row["mode"] == "cudagraphs" else {}))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        images = torch.randn(row["batch"], 3, img_size, img_size, device=device)
        labels = torch.randint(0, 1000, (row["batch"],), device=device)
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

        def step() -> torch.Tensor:
            if row["mode"] == "cudagraphs":
                torch.compiler.cudagraph_mark_step_begin()
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = F.cross_entropy(run(images), labels)
            loss.backward()
            opt.step()
            return loss.detach()

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(device)

        t0 = time.perf_counter()
        for _ in range(warmup):
            loss = step()
        sync()
        warm_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            loss = step()
            sync()
            times.append(time.perf_counter() - t)
        out = {**row, "model": name, "ms": round(statistics.median(times) * 1e3, 3),
               "images_per_s": round(row["batch"] / statistics.median(times), 1), "warmup_s": round(warm_s, 1),
               "loss_finite": bool(torch.isfinite(loss).item()),
               "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if cuda else None}
        if row["mode"] == "eager":  # inference: eval, no grad
            model.eval()
            with torch.no_grad(), amp:
                run(images)
                sync()
                t = time.perf_counter()
                for _ in range(steps):
                    run(images)
                sync()
            out["infer_images_per_s"] = round(row["batch"] * steps / (time.perf_counter() - t), 1)
        del model, run, opt
        if cuda:
            torch.cuda.empty_cache()
    return out


def add_ratios(rows: list[dict]) -> None:
    """KAT rows get ``vs_vit`` (images/s, peak memory, inference) against the ViT of the same (size, batch, mode)."""
    vit = {(r["size"], r["batch"], r["mode"]): r for r in rows if r["arch"] == "vit" and "ms" in r}
    for r in rows:
        v = vit.get((r["size"], r["batch"], r["mode"]))
        if r["arch"] != "kat" or v is None or "ms" not in r:
            continue
        ratio = {"images_per_s": round(r["images_per_s"] / v["images_per_s"], 3)}
        if r.get("peak_mem_bytes") and v.get("peak_mem_bytes"):
            ratio["peak_mem"] = round(r["peak_mem_bytes"] / v["peak_mem_bytes"], 3)
        if r.get("infer_images_per_s") and v.get("infer_images_per_s"):
            ratio["infer_images_per_s"] = round(r["infer_images_per_s"] / v["infer_images_per_s"], 3)
        r["vs_vit"] = ratio


def goal_table(rows: list[dict], *, budget_s: float, on_row: Optional[Any] = None, **kw: Any) -> dict:
    """Run ``rows`` in order within ``budget_s`` seconds; ``{"rows": [...], "skipped": [...], "elapsed_s"}``.
    A row that fails is recorded with its error (one line), not raised.  ``on_row(partial result)``
    after each row (the CLI rewrites its JSON, so a run killed at its timeout keeps what it measured)."""
    t0, done, skipped = time.perf_counter(), [], []
    for i, row in enumerate(rows):
        if time.perf_counter() - t0 > budget_s:
            skipped.append(row)
            continue
        try:
            done.append(run_row(row, **kw))
        except Exception as e:  # a composition that cannot run here must not end the table
            done.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]})
        print(_line(done[-1]), flush=True)
        if on_row is not None:
            add_ratios(done)
            on_row({"rows": done, "skipped": skipped, "pending": rows[i + 1:], "elapsed_s": round(time.perf_counter() - t0, 1)})
    add_ratios(done)
    return {"rows": done, "skipped": skipped, "elapsed_s": round(time.perf_counter() - t0, 1)}


def _line(r: dict) -> str:
    what = f"{r['size']} b{r['batch']} {r['mode']:<10} {r['arch']} {r['composition'] or '':<12}"
    if "error" in r:
        return f"{what} ERROR {r['error']}"
    mem = f" {r['peak_mem_bytes'] / 2**20:.0f} MiB" if r.get("peak_mem_bytes") else ""
    return f"{what} {r['ms']:9.2f} ms {r['images_per_s']:9.1f} img/s{mem}"


def format_table(result: dict) -> str:
    lines = ["size batch mode       composition   KAT/ViT img/s  peak mem  infer"]
    for r in result["rows"]:
        if r["arch"] == "kat" and "vs_vit" in r:
            v = r["vs_vit"]
            lines.append(f"{r['size']:<4} {r['batch']:<5} {r['mode']:<10} {r['composition']:<13} {v['images_per_s']:>13.3f}"
                         f"  {v.get('peak_mem', float('nan')):>8.3f}  {v.get('infer_images_per_s', float('nan')):>5.3f}")
    if result["skipped"]:
        lines.append(f"({len(result['skipped'])} rows skipped: over the time budget)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.goal_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="T,S,B")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--compositions", default=",".join(COMPOSITIONS))
    p.add_argument("--budget-s", type=float, default=420.0, help="start no row after this many seconds")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--profile", action="store_true", help="also the per-kernel-class profile of T (compiled, batch 64)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    from fusedkat.files import atomic_write_text, check_writable

    if args.json:
        check_writable(args.json)
    sizes, modes, comps = args.sizes.split(","), args.modes.split(","), args.compositions.split(",")
    for bad, known, what in ((set(sizes) - set(MODELS), MODELS, "size"), (set(modes) - set(MODES), MODES, "mode"),
                             (set(comps) - set(COMPOSITIONS), COMPOSITIONS, "composition")):
        if bad:
            p.error(f"unknown {what} {sorted(bad)}; expected some of {sorted(known)}")
    device = torch.device(args.device)
    kw = {"device": device, "steps": args.steps, "warmup": args.warmup, "img_size": args.img_size, "depth": args.depth}
    profile: Optional[dict] = None
    t0 = time.perf_counter()
    if args.profile:  # first: short, and a timeout later must not cost it
        from . import profile_step

        torch._dynamo.reset()
        profile = profile_step.profile_pair(
            "T", batch=64 if device.type == "cuda" else 2, steps=2, warmup=2, img_size=args.img_size,
            depth=args.depth, compile=True, amp=device.type == "cuda", device=device)
        print(profile_step.format_pair(profile), flush=True)

    def save(partial: dict) -> None:
        if args.json:
            atomic_write_text(args.json, json.dumps({**partial, "step_profile": profile, "partial": True}, indent=1) + "\n")

    result = goal_table(plan(sizes, [int(b) for b in args.batches.split(",")], modes, comps),
                        budget_s=args.budget_s - (time.perf_counter() - t0), on_row=save, **kw)
    result["settings"] = {k: str(v) for k, v in vars(args).items()}
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result["step_profile"] = profile
    print(format_table(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
