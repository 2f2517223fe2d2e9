"""Compile the fused backward GEMM variants, with fake tensors (no GPU) or for real launches.

``compile_bwd(cfg, arch)`` traces :class:`~cutlass_kernels.gemm.bwd_sm80.RationalBwdSm80` with
symbolic shapes (M, N, K and the workspace rows are runtime values; N and K are declared divisible by
8 so 128-bit copies are legal) and returns the compiled object.  The same compiled kernel serves
every problem size of a variant, so the cache key is the :class:`BwdConfig` plus the arch.

The DSL is imported lazily by callers (``import fusedkat`` never imports this module).
"""
from __future__ import annotations

import functools

import cutlass
import cutlass.cute as cute
from cutlass.cute.runtime import make_fake_compact_tensor, make_fake_stream, make_fake_tensor

from .bwd_sm80 import BwdConfig, RationalBwdSm80, dsl_dtype

SUPPORTED_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_90a")


def fake_arguments(cfg: BwdConfig):
    """Fake tensors with the layouts the launcher passes (see RationalBwdSm80's table)."""
    ab = dsl_dtype(cfg.ab_dtype)
    c = dsl_dtype(cfg.c_dtype)
    M = cute.sym_int()
    N = cute.sym_int(divisibility=8)
    K = cute.sym_int(divisibility=8)
    f32 = cutlass.Float32
    num_rows = 1 if cfg.shared_numerator else cute.sym_int()
    num = make_fake_compact_tensor(f32, (num_rows, cfg.m + 1), stride_order=(1, 0))
    den = make_fake_compact_tensor(f32, (cute.sym_int(), cfg.n), stride_order=(1, 0))
    ws = make_fake_compact_tensor(f32, (cute.sym_int(), cute.sym_int(), cfg.num_params), stride_order=(2, 1, 0))
    if cfg.mode == "dgrad":
        mA = make_fake_tensor(ab, (M, N), (N, 1), assumed_align=16)  # dY
        mB = make_fake_tensor(ab, (K, N), (1, K), assumed_align=16)  # W^T view
        mC = make_fake_tensor(c, (M, K), (K, 1), assumed_align=16)  # dx
        mX = make_fake_tensor(ab, (M, K), (K, 1), assumed_align=16)  # x
    else:
        mA = make_fake_tensor(ab, (N, M), (1, N), assumed_align=16)  # dY^T view
        mB = make_fake_tensor(ab, (K, M), (1, K), assumed_align=16)  # x^T view
        mC = make_fake_tensor(c, (N, K), (K, 1), assumed_align=16)  # dW
        mX = mB
    return mA, mB, mC, mX, ws, num, den, cutlass.Int32(8), make_fake_stream()


@functools.lru_cache(maxsize=None)
def compile_bwd(cfg: BwdConfig, arch: str = "sm_80"):
    """Compile one variant for ``arch`` (e.g. "sm_80", "sm_90a"); no GPU needed."""
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"the sm_80 backward GEMM targets {SUPPORTED_ARCHS}, got {arch!r}")
    kernel = RationalBwdSm80(cfg)
    return cute.compile(kernel, *fake_arguments(cfg), options=f"--gpu-arch {arch}")


def compile_variant(arch: str, options: str, mode: str, ab_dtype: str, c_dtype: str, form: str):
    """Registry entry point (``cutlass_kernels.gemm.bwd_variants``): ``options`` carries the arch
    and dump dir chosen by ``cutlass_kernels.build``."""
    cfg = BwdConfig(mode, ab_dtype, c_dtype, form)
    return cute.compile(RationalBwdSm80(cfg), *fake_arguments(cfg), options=options)
