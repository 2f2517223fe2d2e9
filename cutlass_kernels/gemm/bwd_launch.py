"""Host launcher of the fused GR-KAN backward (CUDA tensors in, gradients out).

``rational_linear_backward`` has the signature and return convention of
:func:`fusedkat.ops.torch_impl.rational_linear_backward`, so ``cutlass_kernels.launch`` can route the
``fusedkat::rational_linear_backward`` op here.  Three launches and one tiny reduction:

1. dgrad kernel: ``dx = (dY W) * F'(x)`` and the coefficient partials ``ws [S, K/8, m+1+n]`` (fp32);
2. ``fold_partials``: the second, deterministic pass — a fixed-shape ``torch.sum`` over
   ``[S, g, K/(8g), P]`` (torch reductions use no atomics, so the result is bitwise reproducible);
3. wgrad kernel: ``dW = dY^T F(x)`` (fp32 accumulate and output, cast to the weight's dtype);
4. ``dbias = dY.sum(0)`` in fp32 (torch; a plain column reduction).

Only x is needed (F(x) is recomputed inside the wgrad prologue).

On sm_90 the default (``FUSEDKAT_BWD_KERNEL=sm90wspp``, or ``sm90ws`` for cooperative consumers;
:func:`bwd_kernel`) is instead :func:`ws_backward`: the persistent warp-specialized dgrad of :mod:`.bwd_sm90ws` writes dx, the
partials and ``[F(x) | 1 0 ...]`` in one pass, the fold as in 2., then one cuBLAS GEMM
``dY^T [F(x) | 1]`` gives dW and db together (no fused wgrad, no column reduction).
Elsewhere (sm_80-89, or ``FUSEDKAT_BWD_SM90=0``) the mma.sync dgrad / fused wgrad pair below runs
(the sm_90a TMA + WGMMA pair was removed: :data:`REMOVED_SM90`).  The kernels are compiled on
first use per (variant, device arch) through :func:`cutlass_kernels.runtime.get_kernel` (AOT disk
cache) as pointer-ABI entries (:class:`~cutlass_kernels.gemm.bwd_compile.PointerEntry`), called
through TVM-FFI when it is installed, like every other launched kernel (:mod:`cutlass_kernels.abi`).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from fusedkat.ops import rational_math as rm

from .. import abi

_AB = {torch.bfloat16: "bf16", torch.float16: "fp16"}


ENV_FUSED_BWD = "FUSEDKAT_FUSED_BWD"


def enabled(device: Optional[torch.device] = None, shape: Optional[tuple[int, int, int]] = None) -> bool:
    """Whether ``rational_linear``'s CUDA backward uses the fused dgrad/wgrad GEMMs at ``shape =
    (M, K, N)`` (read per call).

    ``FUSEDKAT_FUSED_BWD=1`` / ``0`` forces them on / off.  Unset or ``auto``: the decision table
    (:mod:`cutlass_kernels.decisions`): measured on sm_90, where the H100 run of 2026-11-22
    (``bench/results/``) profiled 1392 us of GPU time for the fused backward against 459 us for the
    unfused one at KAT-B fc1 (and the wall-time medians favour unfused at all six KAT shapes); the
    cost model elsewhere (sm_80-89: unfused at the KAT shapes).
    """
    from .. import decisions

    return decisions.fused_enabled(ENV_FUSED_BWD, device, "backward", shape)


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
    if max(x.numel() // max(x.shape[-1], 1) * (x.shape[-1] + 8), grad_out.numel(), weight.numel()) > 2**31 - 1:
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
    """``t`` itself when its data is 16-byte aligned (the kernels' 128-bit copies and vectorised
    coefficient loads assume it), else a copy (e.g. a contiguous view at an odd offset)."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def launch_arguments(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, x2: torch.Tensor, ws: torch.Tensor,
                     num: torch.Tensor, den: torch.Tensor, ffi: bool = False) -> tuple:
    """The :class:`~cutlass_kernels.gemm.bwd_compile.PointerEntry` arguments, stream excluded:
    ``(pA, pB, pC, pX, pWs, pNum, pDen, M, N/8, K/8, ws_rows, groups, num_rows, group_size)``.

    ``a`` = dY ``[M, N]``; ``b`` = W ``[N, K]`` (dgrad) or x ``[M, K]`` (wgrad); ``c`` = dx ``[M, K]``
    or dW ``[N, K]``; ``x2`` = x ``[M, K]``; ``ws`` the ``[S, K/8, m+1+n]`` partials; ``num`` / ``den``
    fp32.  All contiguous and 16-byte aligned.  Ints for TVM-FFI, DSL objects for the executor
    (:mod:`cutlass_kernels.abi`); only addresses and sizes are read, so CPU tests can bind them."""
    m_rows, k = x2.shape
    n_out = a.shape[1]
    g = den.shape[0]
    ptrs = tuple(abi.pointer(t, 16, ffi) for t in (a, b, c, x2, ws, num, den))
    return (*ptrs, *abi.int32s((m_rows, n_out // 8, k // 8, ws.shape[0], g, num.shape[0], k // g), ffi))


ENV_BWD_KERNEL = "FUSEDKAT_BWD_KERNEL"
#: ``FUSEDKAT_BWD_KERNEL`` values on sm_90 (unset = the first): the persistent warp-specialized
#: dgrad + one cuBLAS GEMM ``dY^T [F(x) | 1]`` (:mod:`.bwd_sm90ws`; ``sm90wspp``: its ping-ponged
#: consumers, ``sm90ws``: cooperative ones).
SM90_KERNELS = ("sm90wspp", "sm90ws")
#: Why ``FUSEDKAT_BWD_KERNEL=sm90`` is refused (it chose the old TMA + WGMMA dgrad / fused wgrad).
REMOVED_SM90 = ("FUSEDKAT_BWD_KERNEL=sm90 (the TMA + WGMMA dgrad with the fused wgrad) was removed: on the H100 "
                "it cost 3.8-11x a linear backward and lost to the unfused backward at every KAT shape "
                "(bench/results/2026-11-22-*).  Use sm90wspp (the default), sm90ws, FUSEDKAT_BWD_SM90=0 "
                "(the mma.sync pair) or FUSEDKAT_FUSED_BWD=0 (the unfused backward)")


def bwd_kernel(device: torch.device) -> str:
    """The fused backward's kernel family for ``device``: ``sm80`` (mma.sync) off sm_90 or with
    ``FUSEDKAT_BWD_SM90=0``; on sm_90 ``FUSEDKAT_BWD_KERNEL`` (:data:`SM90_KERNELS`, default
    ``sm90wspp``).  An unknown value is a ValueError, not a silent default."""
    choice = os.environ.get(ENV_BWD_KERNEL, "") or SM90_KERNELS[0]
    if choice == "sm90":
        raise ValueError(REMOVED_SM90)
    if choice not in SM90_KERNELS:
        raise ValueError(f"{ENV_BWD_KERNEL}={choice!r}: expected one of {SM90_KERNELS}")
    if abi.device_info(device)[0][0] != 9 or os.environ.get("FUSEDKAT_BWD_SM90", "1") == "0":
        return "sm80"
    return choice


def wgrad_and_bias(go: torch.Tensor, f_aug: torch.Tensor, k: int, weight_dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``dY^T [F(x) | 1 0 ...] = [dW | db | 0 ...]`` (one cuBLAS GEMM): go ``[M, N]``, f_aug
    ``[M, K + 8]`` in go's dtype.  Returns dense ``(dW [N, K], db [N])`` in ``weight_dtype`` (the
    GEMM rounds to go's dtype first, as a plain ``nn.Linear`` backward under autocast does)."""
    dwb = go.t() @ f_aug  # [N, K + 8]
    # dense results: the op's fake impl promises contiguous outputs (inductor asserts strides)
    return dwb[:, :k].to(weight_dtype).contiguous(), dwb[:, k].to(weight_dtype).contiguous()


def ws_launch_arguments(go: torch.Tensor, w: torch.Tensor, dx: torch.Tensor, x2: torch.Tensor,
                        f_aug: torch.Tensor, ws: torch.Tensor, num: torch.Tensor, den: torch.Tensor, ctas: int,
                        ffi: bool = False) -> tuple:
    """The :class:`~cutlass_kernels.gemm.bwd_compile.WsPointerEntry` arguments, stream excluded:
    ``(pA, pB, pC, pX, pF, pWs, pNum, pDen, M, N/8, K/8, ws_rows, groups, num_rows, group_size, ctas)``
    (f_aug ``[M, K + 8]``, the rest as :func:`launch_arguments`)."""
    m_rows, k = x2.shape
    g = den.shape[0]
    ptrs = tuple(abi.pointer(t, 16, ffi) for t in (go, w, dx, x2, f_aug, ws, num, den))
    sizes = (m_rows, go.shape[1] // 8, k // 8, ws.shape[0], g, num.shape[0], k // g, ctas)
    return (*ptrs, *abi.int32s(sizes, ffi))


def _launch_ws_dgrad(go: torch.Tensor, w: torch.Tensor, dx: torch.Tensor, x2: torch.Tensor, f_aug: torch.Tensor,
                     ws: torch.Tensor, num32: torch.Tensor, den32: torch.Tensor, fields: dict) -> None:
    """One launch of the sm90ws dgrad (one persistent CTA per SM) on x's GPU and stream."""
    ffi = abi.ffi_enabled()
    ctas = abi.device_info(x2.device)[1]
    with abi.on_device(x2.device):
        _kernel(fields, x2.device, ffi)(*ws_launch_arguments(go, w, dx, x2, f_aug, ws, num32, den32, ctas, ffi),
                                        abi.stream(x2.device, ffi))


def ws_backward(go: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, num32: torch.Tensor, den32: torch.Tensor,
                form: str, weight_dtype: torch.dtype, kernel: str = "sm90wspp") -> tuple[torch.Tensor, ...]:
    """The sm90ws backward: the dgrad kernel (dx, partials, F(x) into ``[F(x) | 1 0 ...]``), the
    deterministic fold, one cuBLAS GEMM for dW and db.  go ``[M, N]``, x2 ``[M, K]``, w ``[N, K]``
    in one dtype, contiguous and 16-byte aligned; num32 ``(1|g, m+1)`` / den32 ``(g, n)`` fp32;
    ``kernel``: ``sm90ws`` (cooperative consumers) or ``sm90wspp`` (ping-pong).
    Returns ``(dx [M, K], d_num f32, d_den f32, dW, db)`` (dW, db in ``weight_dtype``)."""
    from .bwd_compile import config_of
    from .bwd_sm80 import CHUNK

    if kernel == "sm90ws" and form != "A":
        raise RuntimeError(f"FUSEDKAT_BWD_KERNEL=sm90ws supports form A only (form {form!r}: its build fails "
                           "the epilogue's division check); use sm90wspp (the default)")

    rows, k = x2.shape
    g, m = den32.shape[0], num32.shape[1] - 1
    shared = num32.shape[0] == 1
    fields = {"mode": "dgrad", "ab_dtype": _AB[x2.dtype], "c_dtype": _AB[x2.dtype], "form": form, "m": m,
              "n": den32.shape[1], "shared_numerator": shared, "kernel": kernel}
    cfg = config_of(**fields)
    # one partial slot per 16 rows of the kernel's M tile (ping-pong: 64-row tiles); every slot
    # of every tile is written (rows past M add zeros), so no zero-fill
    tile_m = 64 if kernel == "sm90wspp" else cfg.tile[0]
    s_rows = -(-rows // tile_m) * (tile_m // 16)
    ws = torch.empty((s_rows, k // CHUNK, cfg.num_params), dtype=torch.float32, device=x2.device)
    dx = torch.empty_like(x2)
    f_aug = torch.empty((rows, k + CHUNK), dtype=x2.dtype, device=x2.device)
    f_aug[:, k:] = 0  # the tail (1, 0, ..., 0): the ones column turns the wgrad GEMM's column k into db
    f_aug[:, k] = 1
    _launch_ws_dgrad(go, w, dx, x2, f_aug, ws, num32, den32, fields)
    d_num, d_den = fold_partials(ws, g, shared, m)
    dw, db = wgrad_and_bias(go, f_aug, k, weight_dtype)
    return dx, d_num, d_den, dw, db


def _kernel(fields: dict, device: torch.device, ffi: bool):
    """Compiled pointer entry of ``config_of(**fields)`` for the device's arch (memo, then AOT disk
    cache, then JIT)."""
    from ..arch import arch_from_capability
    from ..runtime import get_kernel
    from .bwd_variants import SOURCES

    arch = arch_from_capability(abi.device_info(device)[0])
    return get_kernel("cutlass_kernels.gemm.bwd_compile:compile_variant", fields, arch, SOURCES, ffi=ffi)


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
    from .bwd_compile import config_of
    from .bwd_sm80 import CHUNK

    rm.check_form(form)
    reason = unsupported_reason(grad_out, x, numerator, denominator, weight)
    if reason is not None:
        raise ValueError(reason)
    ab = _AB[x.dtype]
    k, n_out = x.shape[-1], weight.shape[0]
    g = denominator.shape[0]
    m, n = numerator.shape[1] - 1, denominator.shape[1]
    shared = numerator.shape[0] == 1
    rows = math.prod(x.shape[:-1])  # not -1: ambiguous for K == 0 or N == 0
    x2 = _aligned(x.reshape(rows, k).contiguous())
    go = _aligned(grad_out.reshape(rows, n_out).to(x.dtype).contiguous())
    w = _aligned(weight.to(x.dtype).contiguous())
    num32 = _aligned(abi.as_f32(numerator))
    den32 = _aligned(abi.as_f32(denominator))
    rows = x2.shape[0]
    if rows == 0:
        z = torch.zeros
        return (torch.zeros_like(x), z(numerator.shape, dtype=numerator.dtype, device=x.device),
                z(denominator.shape, dtype=denominator.dtype, device=x.device),
                z(weight.shape, dtype=weight.dtype, device=x.device), z((n_out,), dtype=weight.dtype, device=x.device))

    family = bwd_kernel(x.device)
    if family.startswith("sm90ws"):
        dx, d_num, d_den, dw, db = ws_backward(go, x2, w, num32, den32, form, weight.dtype, family)
        return (dx.reshape(x.shape), d_num.to(numerator.dtype), d_den.to(denominator.dtype), dw, db)
    # 1. dgrad + coefficient partials (the mma.sync pair of bwd_sm80)
    common = {"form": form, "m": m, "n": n, "shared_numerator": shared, "kernel": family}
    dgrad = {"mode": "dgrad", "ab_dtype": ab, "c_dtype": ab, **common}
    dcfg = config_of(**dgrad)
    s_rows = -(-rows // dcfg.tile[0]) * dcfg.ws_rows_per_tile
    # Every (row, chunk) slot has exactly one writer (see bwd_sm80), so no zero-fill is needed.
    ws = torch.empty((s_rows, k // CHUNK, dcfg.num_params), dtype=torch.float32, device=x.device)
    dx = torch.empty_like(x2)
    ffi = abi.ffi_enabled()
    stream = abi.stream(x.device, ffi)
    with abi.on_device(x.device):  # launch on x's GPU, not on whichever is current
        _kernel(dgrad, x.device, ffi)(*launch_arguments(go, w, dx, x2, ws, num32, den32, ffi), stream)
    # 2. deterministic second pass
    d_num, d_den = fold_partials(ws, g, shared, m)

    # 3. wgrad: dW = dY^T F(x), F applied in the kernel's prologue
    dw = torch.empty((n_out, k), dtype=torch.float32, device=x.device)
    wgrad = {"mode": "wgrad", "ab_dtype": ab, "c_dtype": "fp32", **common}
    with abi.on_device(x.device):
        _kernel(wgrad, x.device, ffi)(*launch_arguments(go, x2, dw, x2, ws, num32, den32, ffi), stream)

    # 4. dbias
    d_bias = go.sum(dim=0, dtype=torch.float32)
    return (dx.reshape(x.shape), d_num.to(numerator.dtype), d_den.to(denominator.dtype),
            dw.to(weight.dtype), d_bias.to(weight.dtype))
