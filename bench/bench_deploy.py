"""Inference speed of a deployed KAT against its ViT twin: eager, compiled, pt2, ONNX, AOTInductor.

pytest-benchmark group ``deploy``; ``impl``: ``{kat,vit}_{eager,compiled,pt2,onnx,aoti}``, one
forward (inference, no autograd) of ``batch`` random images.

* eager / compiled: the timm model, ``torch.compile`` with the fusedkat backend (compile_fn);
* pt2: ``fusedkat.export.export_program(model).module()`` (the decomposed ExportedProgram, eager ATen);
* onnx: the ONNX model of :func:`fusedkat.export.to_onnx` in onnxruntime (CPU execution provider);
* aoti: the AOTInductor package of :func:`fusedkat.export.compile_aoti`.

ViT twin: ``vit_tiny_patch16_224`` with the same depth/width/image size (timm's Mlp + GELU), exported
the same way.  Sizes: ``small`` (CPU): T widths, depth 4, 224^2, batch 8; ``paper``: depth 12,
batch 64 (GPU).  As a plain test (``--benchmark-disable``, CI) only eager and pt2 run, at depth 1,
32^2, batch 2, and the pt2 logits are checked against eager (the other forms are tested in
tests/test_export.py).

Summary table (ratios from one run): ``python -m bench.bench_deploy [--iters N] [--depth D]
[--batch B] [--img-size S] [--forms eager,compiled,pt2,onnx,aoti]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Callable, Optional

import pytest
import torch

from bench._harness import bench_device, bench_size, compile_fn, measure

FORMS = ("eager", "compiled", "pt2", "onnx", "aoti")
NAMES = {"kat": "kat_tiny_patch16_224", "vit": "vit_tiny_patch16_224"}
PAPER = dict(depth=12, img_size=224, batch=64)
SMALL = dict(depth=4, img_size=224, batch=8)
PLAIN_TEST = dict(depth=1, img_size=32, batch=2)


def build(arch: str, depth: int, img_size: int, device: torch.device) -> torch.nn.Module:
    """The eval-mode KAT-T or ViT-T of the given depth and image size (random weights, seed 0)."""
    import timm

    import fusedkat.models  # noqa: F401  (registers kat_* in timm)

    torch.manual_seed(0)
    extra = {"mimetic_init": False} if arch == "kat" else {}
    return timm.create_model(NAMES[arch], depth=depth, img_size=img_size, **extra).to(device).eval()


def make_runner(model: torch.nn.Module, form: str, example: torch.Tensor, workdir: str) -> Callable:
    """``runner(x) -> logits`` for ``form`` (exports / compiles once, here)."""
    from fusedkat import export as fx

    if form == "eager":
        return model
    if form == "compiled":
        fn, _ = compile_fn(model)
        return fn
    program = fx.export_program(model, example)
    if form == "pt2":
        return program.module()
    if form == "onnx":
        session = fx.onnx_session(fx.to_onnx(program, example))
        return lambda x: fx.run_onnx(session, x)
    if form == "aoti":
        path = os.path.join(workdir, f"{id(model)}.pt2")
        fx.compile_aoti(program, path)
        return fx.load_aoti(path)
    raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("arch", ["kat", "vit"])
def test_deploy(benchmark, device, arch, form, tmp_path):
    cfg = PLAIN_TEST if benchmark.disabled else (PAPER if bench_size() == "paper" else SMALL)
    if benchmark.disabled and form not in ("eager", "pt2"):
        pytest.skip("compiled/onnx/aoti forms are timed only when benchmarking (tests/test_export.py checks them)")
    if form == "onnx":
        pytest.importorskip("onnxruntime")
    model = build(arch, cfg["depth"], cfg["img_size"], device)
    x = torch.randn(cfg["batch"], 3, cfg["img_size"], cfg["img_size"], device=device)
    with torch.no_grad():
        want = model(x)
        run = make_runner(model, form, x, str(tmp_path))
        got = measure(benchmark, lambda: run(x), group="deploy", impl=f"{arch}_{form}", device=device,
                      batch=cfg["batch"], depth=cfg["depth"], img_size=cfg["img_size"], timm_name=NAMES[arch])
    got = got.to(want.device).double()
    assert (got - want.double()).abs().max() <= 1e-3 * want.abs().max()


# ---------------------------------------------------------------------------------------------
# python -m bench.bench_deploy: the table
# ---------------------------------------------------------------------------------------------
def _time(run: Callable, x: torch.Tensor, iters: int, device: torch.device) -> float:
    """Median seconds of one call over ``iters`` calls, after two warm-up calls."""
    times = []
    with torch.no_grad():
        for i in range(iters + 2):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            run(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def summarize(depth: int, img_size: int, batch: int, iters: int, forms: tuple[str, ...],
              device: Optional[torch.device] = None) -> str:
    """Time every form of KAT-T and ViT-T once and format the ratio table."""
    device = device or bench_device()
    x = torch.randn(batch, 3, img_size, img_size, device=device, generator=None)
    res: dict[tuple[str, str], float] = {}
    prep: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="fusedkat-bench-deploy-") as tmp:
        for arch in ("kat", "vit"):
            model = build(arch, depth, img_size, device)
            for form in forms:
                t = time.perf_counter()
                with torch.no_grad():
                    run = make_runner(model, form, x, tmp)
                    if form == "compiled":
                        run(x)  # compiles here
                prep[arch, form] = time.perf_counter() - t
                res[arch, form] = _time(run, x, iters, device)
    try:
        load = "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "load average unknown"
    lines = [f"deploy: KAT-T vs ViT-T, depth {depth}, {img_size}^2, batch {batch}, {device}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, median of {iters} calls; {load}",
             "| form | KAT ms | ViT ms | KAT / ViT | KAT vs KAT eager | export/compile s (KAT, ViT) |",
             "|---|---|---|---|---|---|"]
    for form in forms:
        k, v = res["kat", form], res["vit", form]
        lines.append(f"| {form} | {k * 1e3:.1f} | {v * 1e3:.1f} | {k / v:.2f} | "
                     f"{res['kat', 'eager'] / k if ('kat', 'eager') in res else float('nan'):.2f}x | "
                     f"{prep['kat', form]:.0f}, {prep['vit', form]:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_deploy", description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=SMALL["depth"])
    p.add_argument("--img-size", type=int, default=SMALL["img_size"])
    p.add_argument("--batch", type=int, default=SMALL["batch"])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--forms", default=",".join(FORMS), help="comma-separated subset of " + ",".join(FORMS))
    a = p.parse_args(argv)
    forms = tuple(f.strip() for f in a.forms.split(",") if f.strip())
    bad = [f for f in forms if f not in FORMS]
    if bad:
        p.error(f"unknown forms {bad}; expected some of {list(FORMS)}")
    print(summarize(a.depth, a.img_size, a.batch, a.iters, forms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
