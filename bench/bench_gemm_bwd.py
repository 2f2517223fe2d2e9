"""Fused GR-KAN backward (issue 7) vs a plain linear layer's backward and vs the unfused backward.

pytest-benchmark group ``gemm_bwd``; GPU only (skipped without CUDA sm_80/sm_90 and the DSL).
Shapes: the KAT-T/S/B MLP layers at batch 128 (M = 128 * 197 tokens; K -> N = D -> 4D and 4D -> D),
``FUSEDKAT_BENCH_SIZE=small`` uses batch 8.  Implementations (test ids):

* ``cublas_linear_bwd`` — the floor: the two cuBLAS GEMMs of a plain linear backward
  (``dX = dY W``, ``dW = dY^T X``) plus ``dY.sum(0)``; no rational at all.  Goal: fused <= 1.2x.
* ``unfused`` — ``cutlass_kernels.launch.rational_linear_backward`` with ``FUSEDKAT_FUSED_BWD=0``:
  cuBLAS ``G = dY W``, the elementwise backward writing dx, the coefficient partials and
  ``[F(x) | 1]``, then one cuBLAS GEMM for dW and db together.
* ``fused`` — :func:`cutlass_kernels.gemm.bwd_launch.rational_linear_backward`: on sm_90 issue 16's
  persistent warp-specialized dgrad with ping-ponged consumers (epilogue: dx, partials,
  ``[F(x) | 1]``) + one cuBLAS GEMM for dW and db; elsewhere the mma.sync dgrad + wgrad (F'(x)
  epilogue, F prologue).
* ``fused_sm90ws`` — sm_90 only: the same dgrad with cooperative consumers (``FUSEDKAT_BWD_KERNEL=sm90ws``).
* ``fused_sm80`` — sm_90 only: the old fused pair still in the tree, the mma.sync dgrad + fused
  wgrad (``FUSEDKAT_BWD_SM90=0``).  The sm_90a TMA + WGMMA pair the H100 measured on 2026-11-22 was
  removed (``bwd_launch.REMOVED_SM90``).

``extra_info`` holds the shape and the ratio inputs; with ``--benchmark-disable`` each function runs
once and the fused result is checked against the unfused one (so this file is also a GPU test).
``python -m bench.bench_gemm_bwd RESULTS.json`` prints the goal ratios per shape (:func:`summarize`).
"""
from __future__ import annotations

import sys
from collections import defaultdict

import pytest
import torch

from bench._gemm_shapes import BATCH, GROUPS, TOKENS, fmt, summary_cli
from bench._gemm_shapes import gemm_kernels_available as _available, mlp_cases as _cases
from bench._harness import bench_size, measure

pytestmark = pytest.mark.gpu

IMPLS = ("cublas_linear_bwd", "unfused", "fused", "fused_sm90ws", "fused_sm80")


def _inputs(k: int, n_out: int):
    rows = BATCH[bench_size()] * TOKENS
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    go = torch.randn(rows, n_out, device="cuda", generator=gen, dtype=torch.bfloat16)
    w = (torch.randn(n_out, k, device="cuda", generator=gen) / k**0.5).to(torch.bfloat16)
    num = torch.randn(1, 6, device="cuda", generator=gen) * 0.5
    den = torch.randn(GROUPS, 4, device="cuda", generator=gen) * 0.5
    return go, x, num, den, w


@pytest.mark.skipif(not _available(), reason="needs CUDA sm_80/sm_90 and the CuTe DSL")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model,k,n_out", list(_cases()))
def test_gemm_bwd(benchmark, impl, model, k, n_out, monkeypatch):
    from cutlass_kernels import launch
    from cutlass_kernels.gemm import bwd_launch

    go, x, num, den, w = _inputs(k, n_out)
    device = x.device
    if impl == "cublas_linear_bwd":
        def fn():
            return go @ w, go.t() @ x, go.sum(0, dtype=torch.float32)
    elif impl == "unfused":
        monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "0")

        def fn():
            return launch.rational_linear_backward(go, x, num, den, w, True, "A")
    else:
        if impl in ("fused_sm90ws", "fused_sm80"):
            if torch.cuda.get_device_capability(device)[0] != 9:
                pytest.skip(f"{impl} is an sm_90 alternative")
            if impl == "fused_sm80":
                monkeypatch.setenv("FUSEDKAT_BWD_SM90", "0")
            else:
                monkeypatch.setenv("FUSEDKAT_BWD_KERNEL", "sm90ws")

        def fn():
            return bwd_launch.rational_linear_backward(go, x, num, den, w, True, "A")

    out = measure(benchmark, fn, group=f"gemm_bwd_{model}_{k}x{n_out}", impl=impl, device=device,
                  model=f"KAT-{model}", rows=x.shape[0], k=k, n=n_out, groups=GROUPS,
                  flops=2 * 2 * x.shape[0] * k * n_out)
    if impl.startswith("fused") and benchmark.disabled:
        monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "0")
        ref = launch.rational_linear_backward(go, x, num, den, w, True, "A")
        for a, b in zip(out, ref):
            rel = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
            assert rel < 3e-2, rel


def _official_style_backward(go, x, num, den, w, form="A"):
    """Reference point: the official kernels' scheme -- G = dY W by cuBLAS, then the coefficient
    gradients accumulated with one atomic add per element and coefficient (``index_add_`` of every
    per-element term into its group's slot; CUDA implements it with atomics), dW from F(x) in memory."""
    from fusedkat.ops import rational_math as rm
    from fusedkat.ops.torch_impl import TorchMath

    rows, k = x.shape
    g = den.shape[0]
    g_in = (go @ w).float()
    xf = x.float()
    grp = torch.arange(k, device=x.device) // (k // g)
    cols = [c.reshape(1, -1) for c in num.expand(g, -1)[grp].t()]  # per-column coefficients
    bcols = [c.reshape(1, -1) for c in den[grp].t()]
    t = rm.grad_terms(cols, bcols, xf, form, TorchMath)
    dx = (g_in * t.dfdx).to(x.dtype)
    slots = grp.expand(rows, k).reshape(-1)
    d_num = torch.zeros(g, num.shape[1], device=x.device)
    for i, w in enumerate(t.num_grad):
        d_num[:, i].index_add_(0, slots, (g_in * w).reshape(-1))
    d_den = torch.zeros_like(den)
    for j, v in enumerate(t.den_grad):
        signed = g_in * v * (t.den_sign[j] if t.den_sign is not None else 1.0)
        d_den[:, j].index_add_(0, slots, signed.reshape(-1))
    f = (t.f).to(x.dtype)
    return dx, d_num.sum(0, keepdim=True), d_den, go.t() @ f, go.sum(0, dtype=torch.float32)


@pytest.mark.skipif(not _available(), reason="needs CUDA sm_80/sm_90 and the CuTe DSL")
@pytest.mark.parametrize("model,k,n_out", list(_cases()))
def test_gemm_bwd_official_style_atomics(benchmark, model, k, n_out):
    go, x, num, den, w = _inputs(k, n_out)
    measure(benchmark, lambda: _official_style_backward(go, x, num, den, w), group=f"gemm_bwd_{model}_{k}x{n_out}",
            impl="official_style_atomics", device=x.device, model=f"KAT-{model}", rows=x.shape[0], k=k, n=n_out,
            groups=GROUPS, flops=2 * 2 * x.shape[0] * k * n_out)


@pytest.mark.skipif(not _available(), reason="needs CUDA sm_80/sm_90 and the CuTe DSL")
@pytest.mark.parametrize("impl", ("linear_gelu", "grkan"))
@pytest.mark.parametrize("model,k,n_out", list(_cases()))
def test_layer_train_step(benchmark, impl, model, k, n_out):
    """One GR-KAN layer (rational_linear with the arch's default paths, FUSEDKAT_FUSED_FWD / _BWD) vs
    Linear+GELU: forward and
    backward of one layer; ``extra_info["peak_mem_bytes"]`` is the memory the step needs."""
    import fusedkat.ops as ops

    go, x, num, den, w = _inputs(k, n_out)
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    bias = torch.zeros(n_out, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    num, den = num.clone().requires_grad_(True), den.clone().requires_grad_(True)

    if impl == "linear_gelu":
        def fn():
            y = torch.nn.functional.linear(torch.nn.functional.gelu(x), w, bias)
            y.backward(go)
            return y.detach()
    else:
        def fn():
            y = ops.rational_linear(x, num, den, w, bias, form="A")
            y.backward(go)
            return y.detach()

    y = measure(benchmark, fn, group=f"layer_step_{model}_{k}x{n_out}", impl=impl, device=x.device,
                model=f"KAT-{model}", rows=x.shape[0], k=k, n=n_out)
    assert torch.isfinite(y.float()).all()


def summarize(data: dict) -> str:
    """Markdown table of a ``--benchmark-json`` run: per KAT shape the medians (ms) of the backward
    implementations and of the layer train steps, the goal ratios against a plain linear backward
    (issue 7: <= 1.2x), fused vs unfused, and GR-KAN vs Linear+GELU step time and peak memory."""
    by_shape: dict[str, dict[str, dict]] = defaultdict(dict)
    for bm in data["benchmarks"]:
        group, info = str(bm.get("group", "")), bm.get("extra_info", {})
        for prefix in ("gemm_bwd_", "layer_step_"):
            if group.startswith(prefix):
                key = ("step_" if prefix == "layer_step_" else "") + str(info.get("impl"))
                by_shape[group[len(prefix):]][key] = {"s": bm["stats"]["median"], "mem": info.get("peak_mem_bytes")}

    lines = ["| shape | " + " | ".join(f"{i} ms" for i in IMPLS) + " | unfused/linear | fused/linear | fused/unfused"
             " | GR-KAN/Linear+GELU step | step peak mem ratio |", "|" + "---|" * (len(IMPLS) + 6)]
    for shape, r in sorted(by_shape.items()):
        def ms(i):
            return r[i]["s"] * 1e3 if i in r else float("nan")

        def ratio(a, b, field="s"):
            ok = a in r and b in r and r[a][field] and r[b][field]
            return r[a][field] / r[b][field] if ok else float("nan")

        lines.append(f"| {shape} | " + " | ".join(fmt(ms(i), ".3f") for i in IMPLS)
                     + f" | {fmt(ratio('unfused', 'cublas_linear_bwd'), '.2f')}"
                     + f" | {fmt(ratio('fused', 'cublas_linear_bwd'), '.2f')}"
                     + f" | {fmt(ratio('fused', 'unfused'), '.2f')}"
                     + f" | {fmt(ratio('step_grkan', 'step_linear_gelu'), '.2f')}"
                     + f" | {fmt(ratio('step_grkan', 'step_linear_gelu', 'mem'), '.2f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    summary_cli("bench_gemm_bwd", summarize, sys.argv[1:])
