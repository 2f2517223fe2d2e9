"""Compile the fused forward GEMM variants: with fake tensors (build check, no GPU) or for launches.

One compiled kernel serves every problem size of a variant: M, N, K and the group count are runtime
values (N and K declared divisible by 8 so the 128-bit copies are legal, pointers 16-byte aligned),
so the compile-cache key is the :class:`~cutlass_kernels.gemm.common.FwdConfig` plus the arch.
"""
from __future__ import annotations

from typing import Any, Optional

import cutlass
import cutlass.cute as cute
from cutlass.cute.runtime import make_fake_compact_tensor, make_fake_stream, make_fake_tensor

from ..arch import normalize_arch
from .common import FwdConfig, dsl_dtype


def fake_arguments(cfg: FwdConfig) -> tuple:
    """Fake ``(mA, mB, mC, mBias, mNum, mDen, group_size, stream)`` with the launcher's layouts."""
    dt = dsl_dtype(cfg.dtype)
    f32 = cutlass.Float32
    M = cute.sym_int()
    N = cute.sym_int(divisibility=8)
    K = cute.sym_int(divisibility=8)
    mA = make_fake_tensor(dt, (M, K), (K, 1), assumed_align=16)
    mB = make_fake_tensor(dt, (N, K), (K, 1), assumed_align=16)
    mC = make_fake_tensor(dt, (M, N), (N, 1), assumed_align=16)
    bias = make_fake_compact_tensor(f32, (N,))
    num = make_fake_compact_tensor(f32, (cute.sym_int(), cfg.m + 1), stride_order=(1, 0))
    den = make_fake_compact_tensor(f32, (cute.sym_int(), cfg.n), stride_order=(1, 0))
    return mA, mB, mC, bias, num, den, cutlass.Int32(8), make_fake_stream()


def kernel_object(cfg: FwdConfig, arch: str) -> Any:
    """The kernel class instance for ``arch`` (sm_90a -> WGMMA kernel, others -> mma.sync)."""
    arch = normalize_arch(arch)
    if arch.startswith("sm_90"):
        from .fwd_sm90 import RationalGemmFwdSm90

        return RationalGemmFwdSm90(cfg)
    from .fwd_sm80 import RationalGemmFwdSm80

    return RationalGemmFwdSm80(cfg)


def compile_fwd(cfg: FwdConfig, arch: str, options: Optional[str] = None) -> Any:
    """``cute.compile`` one variant for ``arch`` with fake tensors (no GPU needed)."""
    opts = options if options is not None else f"--gpu-arch {normalize_arch(arch)}"
    return cute.compile(kernel_object(cfg, arch), *fake_arguments(cfg), options=opts)


def compile_variant(arch: str, options: str, **fields: Any) -> Any:
    """Registry / runtime entry point: ``FwdConfig(**fields)`` compiled for ``arch`` with ``options``
    (from :func:`cutlass_kernels.dsl.compile_options`).  ``kernel`` picks the class explicitly:
    ``"sm80"`` (mma.sync; also valid for sm_90a) or ``"sm90"`` (WGMMA, sm_90a only)."""
    kernel = fields.pop("kernel", None)
    cfg = FwdConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    if kernel == "sm80":
        from .fwd_sm80 import RationalGemmFwdSm80

        obj = RationalGemmFwdSm80(cfg)
    elif kernel == "sm90":
        from .fwd_sm90 import RationalGemmFwdSm90

        obj = RationalGemmFwdSm90(cfg)
    else:
        obj = kernel_object(cfg, arch)
    return cute.compile(obj, *fake_arguments(cfg), options=options)
