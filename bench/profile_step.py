"""Time per kernel class of one training step, KAT against its ViT twin (torch.profiler).

    python -m bench.profile_step [--size T] [--batch 8] [--steps 2] [--compile] [--amp]
        [--img-size 224] [--depth N] [--json PATH]

For ``kat_<size>`` and ``vit_<size>`` (timm; forward + cross-entropy + backward + AdamW) this
profiles ``--steps`` steps after a warm-up and prints, per step, the time of each kernel class:
GEMMs, attention, rational forward, rational backward, reductions, norms, optimizer, other.  On a
GPU the time is device (kernel) time; on CPU it is the self CPU time of the ops.

Attribution, per profiled op with self time: the nearest enclosing op or range names the class
when it is one of ours or a composite (``fusedkat::rational_linear`` / ``group_rational`` ->
rational forward, their ``*_backward`` -> rational backward, ``Optimizer.step`` / ``_foreach_*`` ->
optimizer, ``aten::layer_norm`` / ``native_layer_norm*`` -> norms, ``scaled_dot_product*`` /
flash / efficient attention -> attention); else the op's own name (``mm`` / ``addmm`` / ``bmm`` /
``linear`` / cuBLAS ``nvjet`` / ``gemm`` -> GEMMs, ``sum`` / ``mean`` / ``reduce`` / inductor's
``triton_red`` / ``triton_per`` -> reductions).  Inductor-generated kernels that fuse the
decomposed rational with its neighbours carry no fusedkat name: they land in reductions or other,
and the printout says so.  Writes nothing unless ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

import torch
import torch.nn.functional as F

CLASSES = ("gemm", "attention", "rational_fwd", "rational_bwd", "reductions", "norms", "optimizer", "other")
MODELS = {"T": ("vit_tiny_patch16_224", "kat_tiny_patch16_224"),
          "S": ("vit_small_patch16_224", "kat_small_patch16_224"),
          "B": ("vit_base_patch16_224", "kat_base_patch16_224")}

_ENCLOSING = (  # (substring of an enclosing op / range name, class), checked innermost first
    ("rational_linear_backward", "rational_bwd"), ("group_rational_backward", "rational_bwd"),
    ("fusedkat::rational_linear", "rational_fwd"), ("fusedkat::group_rational", "rational_fwd"),
    ("optimizer.step", "optimizer"), ("scaled_dot_product", "attention"), ("flash_attention", "attention"),
    ("efficient_attention", "attention"), ("layer_norm", "norms"),
)
_OWN = (  # (substring of the op / kernel's own name, class)
    ("_foreach", "optimizer"), ("adam", "optimizer"), ("fmha", "attention"), ("flash", "attention"),
    ("layer_norm", "norms"), ("nvjet", "gemm"), ("gemm", "gemm"), ("aten::mm", "gemm"), ("aten::addmm", "gemm"),
    ("aten::bmm", "gemm"), ("aten::linear", "gemm"), ("aten::matmul", "gemm"), ("triton_red", "reductions"),
    ("triton_per", "reductions"), ("reduce", "reductions"), ("aten::sum", "reductions"), ("aten::mean", "reductions"),
)


def classify(name: str, enclosing: list[str]) -> str:
    """The class of an op called ``name`` inside the ops/ranges ``enclosing`` (innermost first)."""
    for outer in enclosing:
        low = outer.lower()
        for key, cls in _ENCLOSING:
            if key in low:
                return cls
    low = name.lower()
    for key, cls in _OWN:
        if key in low:
            return cls
    return "other"


def breakdown(events: Any, device_type: str, steps: int) -> dict[str, float]:
    """``{class: ms per step}`` from a profiler's ``events()``: self device time (CUDA: the kernels
    each CPU op launched itself) or self CPU time (CPU) of every CPU-side op, attributed by
    :func:`classify`."""
    out = {c: 0.0 for c in CLASSES}
    for evt in events:
        if not str(getattr(evt, "device_type", "CPU")).endswith("CPU"):
            continue  # device-side records: their time is in the launching CPU op's device time
        us = evt.self_device_time_total if device_type == "cuda" else evt.self_cpu_time_total
        if not us or us <= 0:
            continue
        chain, parent = [], evt.cpu_parent
        while parent is not None:
            chain.append(parent.name)
            parent = parent.cpu_parent
        out[classify(evt.name, chain)] += us / 1e3 / steps
    return out


def _model(name: str, img_size: int, depth: Optional[int], device: torch.device) -> torch.nn.Module:
    import timm

    import fusedkat.models  # noqa: F401  (registers kat_* in timm)

    kwargs: dict = {"img_size": img_size}
    if depth is not None:
        kwargs["depth"] = depth
    return timm.create_model(name, **kwargs).to(device).train()


def profile_model(name: str, *, batch: int, steps: int, warmup: int, img_size: int, depth: Optional[int],
                  compile: bool, amp: bool, device: torch.device) -> dict:
    """Profile ``steps`` training steps of timm model ``name``; ``{"classes": {class: ms/step}, "total_ms"}``."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = _model(name, img_size, depth, device)
    run = torch.compile(model, fullgraph=True) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    labels = torch.randint(0, model.num_classes, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(run(images), labels)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    classes = breakdown(prof.events(), device.type, steps)
    return {"model": name, "classes": {k: round(v, 3) for k, v in classes.items()},
            "total_ms": round(sum(classes.values()), 3)}


def profile_pair(size: str = "T", **kw: Any) -> dict:
    """The KAT of ``size`` and its ViT twin: ``{"kat": ..., "vit": ..., "time": "device"|"cpu self"}``."""
    vit, kat = MODELS[size]
    device = kw["device"]
    return {"size": size, "time": "device" if device.type == "cuda" else "cpu self",
            "settings": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in kw.items()},
            "kat": profile_model(kat, **kw), "vit": profile_model(vit, **kw)}


def format_pair(r: dict) -> str:
    kat, vit = r["kat"], r["vit"]
    lines = [f"{r['time']} time per step, ms ({r['settings']})",
             f"  {'class':<14}{kat['model']:>24}{vit['model']:>24}{'KAT - ViT':>12}"]
    for c in CLASSES:
        a, b = kat["classes"][c], vit["classes"][c]
        lines.append(f"  {c:<14}{a:>24.2f}{b:>24.2f}{a - b:>+12.2f}")
    lines.append(f"  {'total':<14}{kat['total_ms']:>24.2f}{vit['total_ms']:>24.2f}{kat['total_ms'] - vit['total_ms']:>+12.2f}")
    if r["settings"].get("compile"):
        lines.append("  (compiled: inductor's fused kernels of the decomposed rational carry no fusedkat name; "
                     "they count as reductions / other)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="T", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    from fusedkat.files import atomic_write_text, check_writable

    if args.json:
        check_writable(args.json)
    r = profile_pair(args.size, batch=args.batch, steps=args.steps, warmup=args.warmup, img_size=args.img_size,
                     depth=args.depth, compile=args.compile, amp=args.amp, device=torch.device(args.device))
    print(format_pair(r))
    if args.json:
        atomic_write_text(args.json, json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
