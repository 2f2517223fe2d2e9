"""A training step of KAT vs ViT (timm), eager and compiled.

pytest-benchmark group ``model_step``; ``impl``: ``{kat,vit}_{eager,compiled,compiled_cudagraphs}``
(the last on CUDA only: ``torch.compile(mode="reduce-overhead")``); ``extra_info``:
model (``T``/``S``/``B``), batch, image size, depth, parameter count.  One step = forward,
cross-entropy on random labels, backward, AdamW step.  Compiled = ``torch.compile(model,
fullgraph=True)`` with the ``fusedkat`` backend when compile_passes provides it (the same backend
for ViT, so the ratio compares models, not compilers).

Sizes:

* ``paper`` (GPU): T, S and B at 224^2, depth 12, batch 64 (``FUSEDKAT_BENCH_MODELS=T,S``: a subset).
* ``small`` when benchmarking: T at 224^2, depth 12, batch 8 - the CPU comparison of
  DESIGN.md / issue 4 (compiled KAT-T vs compiled ViT-T, batch 8).
* as a plain test (``--benchmark-disable``, CI): T widths at depth 2, 64^2 images, batch 2; checks
  that the loss is finite, the step changes the weights, and compiled matches eager.
"""
from __future__ import annotations

import os

import pytest
import timm
import torch
import torch.nn.functional as F

import fusedkat.models  # noqa: F401  (registers the kat_* models in timm)
from bench._harness import bench_size, compile_fn, measure

MODELS = {"T": ("vit_tiny_patch16_224", "kat_tiny_patch16_224"),
          "S": ("vit_small_patch16_224", "kat_small_patch16_224"),
          "B": ("vit_base_patch16_224", "kat_base_patch16_224")}
PAPER = dict(batch=64, img_size=224, depth=12)
SMALL = dict(batch=8, img_size=224, depth=12)
PLAIN_TEST = dict(batch=2, img_size=64, depth=2)


MODELS_ENV = "FUSEDKAT_BENCH_MODELS"


def _sizes() -> tuple[str, ...]:
    """Model sizes to run: ``$FUSEDKAT_BENCH_MODELS`` (e.g. ``T,S``) if set, else T/S/B at the paper
    size and T otherwise.  Each compiled model costs a minute or two of inductor time."""
    env = os.environ.get(MODELS_ENV, "").strip()
    if env:
        sizes = tuple(s.strip().upper() for s in env.split(",") if s.strip())
        bad = [s for s in sizes if s not in MODELS]
        if bad:
            raise ValueError(f"{MODELS_ENV}={env!r}: unknown sizes {bad}; expected some of {list(MODELS)}")
        return sizes
    return ("T", "S", "B") if bench_size() == "paper" else ("T",)


@pytest.mark.parametrize("mode", ["eager", "compiled", "compiled_cudagraphs"])
@pytest.mark.parametrize("arch", ["kat", "vit"])
@pytest.mark.parametrize("model_size", _sizes())
def test_model_step(benchmark, device, model_size, arch, mode):
    cfg = PLAIN_TEST if benchmark.disabled else (PAPER if bench_size() == "paper" else SMALL)
    if model_size == "B" and device.type != "cuda":
        pytest.skip("KAT-B / ViT-B training steps are benchmarked on a GPU only")
    if mode == "compiled_cudagraphs" and device.type != "cuda":
        pytest.skip("CUDA graphs (torch.compile mode='reduce-overhead') need a CUDA device")
    if benchmark.disabled and mode != "eager":
        # compiling KAT costs 1-2 min on 2 cores; tests/test_compile* check compiled KAT vs eager
        pytest.skip("compiled model steps are only run when benchmarking (not under --benchmark-disable)")
    name = MODELS[model_size][0 if arch == "vit" else 1]
    torch.manual_seed(0)
    model = timm.create_model(name, depth=cfg["depth"], img_size=cfg["img_size"], num_classes=1000).to(device)
    model.train()
    info = {"model": model_size, "timm_name": name, "depth": cfg["depth"], "img_size": cfg["img_size"],
            "params": sum(p.numel() for p in model.parameters())}
    run = model
    if mode != "eager":
        torch._dynamo.reset()
        # reduce-overhead: CUDA graphs replay the whole step's launches, which removes the Python
        # launch cost that makes both models host-bound at these sizes (bench/results/, 2026-11-22)
        extra = {"mode": "reduce-overhead"} if mode == "compiled_cudagraphs" else {}
        run, info["compile_backend"] = compile_fn(model, fullgraph=True, **extra)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(cfg["batch"], 3, cfg["img_size"], cfg["img_size"], device=device)
    labels = torch.randint(0, 1000, (cfg["batch"],), device=device)

    # On a GPU, train as KAT/ViT are trained: bf16 autocast (what the fused CuTe kernels take).
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    info["autocast"] = "bf16" if device.type == "cuda" else "off"
    with torch.no_grad(), amp:
        eager_loss = F.cross_entropy(model(images), labels).item()
    before = [p.detach().clone() for p in model.parameters()]

    losses = []

    def step():
        if mode == "compiled_cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()  # a new training step: earlier outputs may be reused
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(run(images), labels)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        return loss

    measure(benchmark, step, group="model_step", impl=f"{arch}_{mode}", device=device,
            batch=cfg["batch"], **info)

    first = losses[0].item()
    assert all(torch.isfinite(l) for l in losses)
    # the first step ran on the initial weights: its loss must be the eager forward's (bf16 autocast
    # leaves compiled and eager a few bf16 ulps apart after 12 blocks)
    tol = 3e-2 if device.type == "cuda" else 1e-3
    assert abs(first - eager_loss) <= tol * max(1.0, abs(eager_loss)), (first, eager_loss)
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    assert changed == len(before), f"{len(before) - changed} parameters were not updated"
