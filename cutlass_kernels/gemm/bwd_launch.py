"""Host launcher of the fused GR-KAN backward (CUDA tensors in, gradients out).

``rational_linear_backward`` has the signature and return convention of
:func:`fusedkat.ops.torch_impl.rational_linear_backward`, so ``cutlass_kernels.launch`` can route the
``fusedkat::rational_linear_backward`` op here.  Three launches and one tiny reduction:

1. dgrad kernel: ``dx = (dY W) * F'(x)`` and the coefficient partials ``ws [S, K/8, m+1+n]`` (fp32);
2. ``fold_partials``: the second, deterministic pass — a fixed-shape ``torch.sum`` over
   ``[S, g, K/(8g), P]`` (torch reductions use no atomics, so the result is bitwise reproducible);
3. wgrad kernel: ``dW = dY^T F(x)`` (fp32 accumulate and output, cast to the weight's dtype);
4. ``dbias = dY.sum(0)`` in fp32 (torch; a plain column reduction).

Only x is needed (F(x) is recomputed inside the wgrad prologue).  The kernels are compiled on
first use per (variant, device arch) through :func:`cutlass_kernels.runtime.get_kernel` (fake-tensor
compile, AOT disk cache); the runtime tensors are marked dynamic exactly as the fake ones.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from fusedkat.ops import rational_math as rm

from .. import abi

_AB = {torch.bfloat16: "bf16", torch.float16: "fp16"}


ENV_FUSED_BWD = "FUSEDKAT_FUSED_BWD"


def enabled(device: Optional[torch.device] = None) -> bool:
    """Whether ``rational_linear``'s CUDA backward uses the fused dgrad/wgrad GEMMs (read per call).

    ``FUSEDKAT_FUSED_BWD=1`` / ``0`` forces them on / off.  Unset or ``auto``: off on sm_90, where the
    H100 run of 2026-11-22 (``bench/results/``) measured the unfused backward (cuBLAS GEMMs plus the
    elementwise CuTe kernels, F(x) recomputed) 1.04-2.25x faster than the fused one at all six KAT
    MLP shapes at batch 128, at the cost of two transient [M, K] buffers; on elsewhere (sm_80/86/89:
    not measured yet).
    """
    return abi.arch_switch(ENV_FUSED_BWD, device, off_on_majors=(9,))


def unsupported_reason(grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor,
                       denominator: torch.Tensor, weight: torch.Tensor) -> Optional[str]:
    """None if the fused backward can run these arguments, else why not (for the dispatch probe)."""
    if not (x.is_cuda and grad_out.is_cuda and weight.is_cuda):
        return "fused backward needs CUDA tensors"
    if x.dtype not in _AB:
        return f"fused backward takes bf16/fp16 activations, got {x.dtype}"
    major, _ = torch.cuda.get_device_capability(x.device)
    if major not in (8, 9):
        return "the fused backward (mma.sync) is built for sm_80..sm_90 GPUs"
    if max(x.numel(), grad_out.numel(), weight.numel()) > 2**31 - 1:
        return "fused backward indexes with 32-bit offsets: tensors over 2^31 elements run unfused"
    k, n_out, g = x.shape[-1], weight.shape[0], denominator.shape[0]
    if k % 8 or n_out % 8:
        return f"fused backward needs K and N divisible by 8, got K={k}, N={n_out}"
    if k % g or (k // g) % 8:
        return f"fused backward needs (K / groups) % 8 == 0, got K={k}, groups={g}"
    return None


def fold_partials(ws: torch.Tensor, groups: int, shared_numerator: bool, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Second pass: ``ws [S, K/8, m+1+n]`` -> ``(d_num (1|g, m+1), d_den (g, n))`` in fp32.

    Chunks are contiguous in K, so chunk c belongs to group ``c // (K/8/g)``; the sum runs over the
    row partials and the chunks of each group in a fixed order (deterministic).
    """
    s, chunks, p = ws.shape
    per_group = ws.reshape(s, groups, chunks // groups, p).sum(dim=(0, 2))  # (g, P)
    d_num = per_group[:, : m + 1]
    if shared_numerator:
        d_num = d_num.sum(dim=0, keepdim=True)
    # Contiguous, not column slices of per_group: the custom op's fake impl promises dense outputs,
    # and inductor asserts the strides of the op's results (compiled KAT failed on an H100 here).
    return d_num.contiguous(), per_group[:, m + 1 :].contiguous()


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its data is 16-byte aligned (the kernels' 128-bit copies assume it), else a
    copy (a contiguous view at an odd offset, e.g. a slice of a flat buffer)."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _cute(t: torch.Tensor, dynamic: dict[int, int]):
    """CuTe view of a compact tensor with ``dynamic`` = {mode: divisibility} marked dynamic: the same
    dynamic modes and divisibilities as :func:`bwd_compile.fake_arguments` declares."""
    from cutlass.cute.runtime import from_dlpack

    from ..runtime import stride_order

    t = t.detach()  # DLPack refuses tensors that require grad (autograd hands those to the backward)
    ct = from_dlpack(t, assumed_align=16)
    order = stride_order(t)
    for mode, div in dynamic.items():
        ct = ct.mark_compact_shape_dynamic(mode=mode, stride_order=order, divisibility=div)
    return ct


def _coef_arguments(ws, num32, den32):
    shared = num32.shape[0] == 1
    return _cute(ws, {0: 1, 1: 1}), _cute(num32, {} if shared else {0: 1}), _cute(den32, {0: 1})


def dgrad_arguments(go, w, dx, x2, ws, num32, den32, coefs: tuple = ()) -> tuple:
    """``(mA, mB, mC, mX, mWs, mNum, mDen)`` of the dgrad kernel: dY, W^T view, dx, x, partials.
    ``coefs``: the ``(mWs, mNum, mDen)`` views if already made (they are shared with wgrad)."""
    return (_cute(go, {0: 1, 1: 8}), _cute(w.t(), {0: 8, 1: 8}), _cute(dx, {0: 1, 1: 8}),
            _cute(x2, {0: 1, 1: 8}), *(coefs or _coef_arguments(ws, num32, den32)))


def wgrad_arguments(go, x2, dw, ws, num32, den32, coefs: tuple = ()) -> tuple:
    """``(mA, mB, mC, mX, mWs, mNum, mDen)`` of the wgrad kernel: dY^T and x^T views, dW."""
    xt = _cute(x2.t(), {0: 8, 1: 1})
    return (_cute(go.t(), {0: 8, 1: 1}), xt, _cute(dw, {0: 8, 1: 8}), xt,
            *(coefs or _coef_arguments(ws, num32, den32)))


def _use_sm90(device: torch.device) -> bool:
    """TMA + WGMMA kernels on sm_90 (unless ``FUSEDKAT_BWD_SM90=0``); mma.sync elsewhere."""
    return torch.cuda.get_device_capability(device)[0] == 9 and os.environ.get("FUSEDKAT_BWD_SM90", "1") != "0"


def _kernel(cfg, device: torch.device):
    """Compiled kernel of ``cfg`` for the device's arch (memo, then AOT disk cache, then JIT)."""
    from ..arch import arch_from_capability
    from ..runtime import get_kernel
    from .bwd_variants import SOURCES

    fields = {"mode": cfg.mode, "ab_dtype": cfg.ab_dtype, "c_dtype": cfg.c_dtype, "form": cfg.form,
              "m": cfg.m, "n": cfg.n, "shared_numerator": cfg.shared_numerator, "kernel": cfg.kernel}
    arch = arch_from_capability(torch.cuda.get_device_capability(device))
    return get_kernel("cutlass_kernels.gemm.bwd_compile:compile_variant", fields, arch, SOURCES)


def _stream(device: torch.device):
    import cuda.bindings.driver as cuda

    return cuda.CUstream(torch.cuda.current_stream(device).cuda_stream)


def rational_linear_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    weight: torch.Tensor,
    has_bias: bool,
    form: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused backward of ``rational_linear``; same contract as the torch implementation.

    x ``[..., K]`` bf16/fp16 (CUDA); grad_out ``[..., N]``; numerator ``(1|g, m+1)``; denominator
    ``(g, n)``; weight ``(N, K)``.  Returns ``(dx [x.shape, x.dtype], d_numerator, d_denominator,
    d_weight [weight.dtype], d_bias (N,) [weight.dtype])`` (d_bias whatever ``has_bias`` says).
    """
    from .bwd_sm80 import CHUNK, BwdConfig

    rm.check_form(form)
    reason = unsupported_reason(grad_out, x, numerator, denominator, weight)
    if reason is not None:
        raise ValueError(reason)
    ab = _AB[x.dtype]
    k, n_out = x.shape[-1], weight.shape[0]
    g = denominator.shape[0]
    m, n = numerator.shape[1] - 1, denominator.shape[1]
    shared = numerator.shape[0] == 1
    x2 = _aligned(x.reshape(-1, k).contiguous())
    go = _aligned(grad_out.reshape(-1, n_out).to(x.dtype).contiguous())
    w = _aligned(weight.to(x.dtype).contiguous())
    num32 = numerator.to(torch.float32).contiguous()
    den32 = denominator.to(torch.float32).contiguous()
    rows = x2.shape[0]
    if rows == 0:
        z = torch.zeros
        return (torch.zeros_like(x), z(numerator.shape, dtype=numerator.dtype, device=x.device),
                z(denominator.shape, dtype=denominator.dtype, device=x.device),
                z(weight.shape, dtype=weight.dtype, device=x.device), z((n_out,), dtype=weight.dtype, device=x.device))

    # 1. dgrad + coefficient partials
    if _use_sm90(x.device):
        dcfg = BwdConfig("dgrad", ab, ab, form, m, n, shared, tile=(128, 128, 64), stages=4, kernel="sm90")
    else:
        dcfg = BwdConfig("dgrad", ab, ab, form, m, n, shared)
    s_rows = -(-rows // dcfg.tile[0]) * dcfg.ws_rows_per_tile
    # Every (row, chunk) slot has exactly one writer (see bwd_sm80), so no zero-fill is needed.
    ws = torch.empty((s_rows, k // CHUNK, dcfg.num_params), dtype=torch.float32, device=x.device)
    dx = torch.empty_like(x2)
    import cutlass

    with torch.cuda.device(x.device):  # launch on x's GPU, not on whichever is current
        coefs = _coef_arguments(ws, num32, den32)  # host time matters: made once for both kernels
        _kernel(dcfg, x.device)(*dgrad_arguments(go, w, dx, x2, ws, num32, den32, coefs),
                                cutlass.Int32(k // g), _stream(x.device))
    # 2. deterministic second pass
    d_num, d_den = fold_partials(ws, g, shared, m)

    # 3. wgrad: dW = dY^T F(x), F applied in the kernel's prologue
    if _use_sm90(x.device):
        wcfg = BwdConfig("wgrad", ab, "fp32", form, m, n, shared, tile=(128, 128, 64), stages=4, kernel="sm90")
    else:
        wcfg = BwdConfig("wgrad", ab, "fp32", form, m, n, shared)
    dw = torch.empty((n_out, k), dtype=torch.float32, device=x.device)
    with torch.cuda.device(x.device):
        _kernel(wcfg, x.device)(*wgrad_arguments(go, x2, dw, ws, num32, den32, coefs),
                                cutlass.Int32(k // g), _stream(x.device))

    # 4. dbias
    d_bias = go.sum(dim=0, dtype=torch.float32)
    return (dx.reshape(x.shape), d_num.to(numerator.dtype), d_den.to(denominator.dtype),
            dw.to(weight.dtype), d_bias.to(weight.dtype))
