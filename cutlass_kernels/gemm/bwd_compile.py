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
from cutlass.cute.runtime import make_fake_compact_tensor, make_fake_stream

from .bwd_sm80 import BwdConfig, RationalBwdSm80, dsl_dtype

SUPPORTED_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_90a")


def fake_arguments(cfg: BwdConfig):
    """Fake tensors with the layouts the launcher passes (see RationalBwdSm80's table).

    Every tensor is compact; dynamic modes are exactly those the launcher marks dynamic with
    ``mark_compact_shape_dynamic`` (same divisibility), so the compiled function's argument packing
    matches the runtime tensors.  ``stride_order`` here ranks modes (0 = contiguous); K and N are
    declared divisible by 8 so 128-bit cp.async of every row is provably aligned.
    """
    ab = dsl_dtype(cfg.ab_dtype)
    c = dsl_dtype(cfg.c_dtype)
    M = cute.sym_int()
    N = cute.sym_int(divisibility=8)
    K = cute.sym_int(divisibility=8)
    f32 = cutlass.Float32
    row, col = (1, 0), (0, 1)  # row-major (last mode contiguous) / transposed view (first mode contiguous)

    def t(dtype, shape, order):
        return make_fake_compact_tensor(dtype, shape, stride_order=order, assumed_align=16)

    num_rows = 1 if cfg.shared_numerator else cute.sym_int()
    num = t(f32, (num_rows, cfg.m + 1), row)
    den = t(f32, (cute.sym_int(), cfg.n), row)
    ws = t(f32, (cute.sym_int(), cute.sym_int(), cfg.num_params), (2, 1, 0))
    if cfg.mode == "dgrad":
        mA = t(ab, (M, N), row)  # dY
        mB = t(ab, (K, N), col)  # W^T view of W (N, K)
        mC = t(c, (M, K), row)  # dx
        mX = t(ab, (M, K), row)  # x
    else:
        mA = t(ab, (N, M), col)  # dY^T view
        mB = t(ab, (K, M), col)  # x^T view
        mC = t(c, (N, K), row)  # dW
        mX = mB
    return mA, mB, mC, mX, ws, num, den, cutlass.Int32(8), make_fake_stream()


@functools.lru_cache(maxsize=None)
def compile_bwd(cfg: BwdConfig, arch: str = "sm_80"):
    """Compile one variant for ``arch`` (e.g. "sm_80", "sm_90a"); no GPU needed."""
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"the sm_80 backward GEMM targets {SUPPORTED_ARCHS}, got {arch!r}")
    kernel = RationalBwdSm80(cfg)
    return cute.compile(kernel, *fake_arguments(cfg), options=f"--gpu-arch {arch}")


def compile_variant(arch: str, options: str, mode: str, ab_dtype: str, c_dtype: str, form: str,
                    m: int = 5, n: int = 4, shared_numerator: bool = True, kernel: str = "sm80"):
    """Registry / runtime entry point (``cutlass_kernels.build`` and ``cutlass_kernels.runtime``
    call it with ``options`` carrying the arch and, for the build, the dump dir)."""
    if kernel == "sm90":
        from .bwd_sm90 import RationalBwdSm90

        cfg = BwdConfig(mode, ab_dtype, c_dtype, form, m, n, shared_numerator, tile=(128, 128, 64),
                        stages=4, kernel="sm90")
        return cute.compile(RationalBwdSm90(cfg), *fake_arguments(cfg), options=options)
    cfg = BwdConfig(mode, ab_dtype, c_dtype, form, m, n, shared_numerator)
    return cute.compile(RationalBwdSm80(cfg), *fake_arguments(cfg), options=options)
