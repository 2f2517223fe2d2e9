"""Compile the fused backward GEMM variants, with fake tensors (no GPU) or for real launches.

``compile_variant`` traces the :class:`PointerEntry` of a variant (M, N, K and the workspace rows
are runtime values; N and K are multiples of 8 so 128-bit copies are legal) and returns the compiled
object.  The same compiled kernel serves every problem size of a variant, so the cache key is the
:class:`BwdConfig`'s fields plus the arch.

The DSL is imported lazily by callers (``import fusedkat`` never imports this module).
"""
# (no "from __future__ import annotations": the DSL evaluates PointerEntry's annotations at trace time)

from typing import Any

import cutlass
import cutlass.cute as cute
from cutlass.cute.runtime import make_fake_compact_tensor, make_fake_stream

from .bwd_sm80 import BwdConfig, RationalBwdSm80, dsl_dtype

SUPPORTED_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_90a")


def fake_arguments(cfg: BwdConfig):
    """Fake tensors of the kernels' tensor interface (see RationalBwdSm80's table), with the
    layouts :class:`PointerEntry` builds: compact, ``stride_order`` ranking modes (0 = contiguous),
    K and N divisible by 8 so 128-bit cp.async of every row is provably aligned.  For
    :func:`compile_tensor_variant` and the tests that compare the two interfaces.
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


class PointerEntry:
    """The launchable form of a backward kernel: raw global pointers and Int32 sizes in, the CuTe
    tensors of :func:`fake_arguments`' table built inside the trace (same layouts, same dynamic
    modes), so the function compiled here with placeholders (no GPU) is exactly the one launched,
    through TVM-FFI or the DSL executor (:mod:`cutlass_kernels.abi`).

    ``(pA, pB, pC, pX, pWs, pNum, pDen, M, N/8, K/8, ws_rows, groups, num_rows, group_size, stream)``:
    dgrad: pA = dY ``[M, N]``, pB = W ``[N, K]`` (read as W^T), pC = dx ``[M, K]``, pX = x;
    wgrad: pA = dY (read as dY^T), pB = x ``[M, K]`` (read as x^T), pC = dW ``[N, K]``, pX = x;
    pWs = the ``[ws_rows, K/8, m+1+n]`` fp32 partials (dgrad writes them; wgrad ignores them).
    Every tensor is row-major and compact; N and K arrive divided by 8 so the compiler knows rows
    are 16-byte aligned (128-bit copies, TMA)."""

    def __init__(self, kernel: Any, cfg: BwdConfig):
        self.kernel = kernel
        self.cfg = cfg

    @cute.jit
    def __call__(self, pA: cute.Pointer, pB: cute.Pointer, pC: cute.Pointer, pX: cute.Pointer,
                 pWs: cute.Pointer, pNum: cute.Pointer, pDen: cute.Pointer, M: cutlass.Int32, N8: cutlass.Int32,
                 K8: cutlass.Int32, ws_rows: cutlass.Int32, groups: cutlass.Int32, num_rows: cutlass.Int32,
                 group_size: cutlass.Int32, stream):
        cfg = self.cfg
        m1, n, P = cfg.m + 1, cfg.n, cfg.num_params
        N = cute.assume(N8 * 8, divby=8)
        K = cute.assume(K8 * 8, divby=8)
        mX = cute.make_tensor(pX, cute.make_layout((M, K), stride=(K, 1)))
        if cutlass.const_expr(cfg.mode == "dgrad"):
            mA = cute.make_tensor(pA, cute.make_layout((M, N), stride=(N, 1)))  # dY
            mB = cute.make_tensor(pB, cute.make_layout((K, N), stride=(1, K)))  # W^T view of W
            mC = cute.make_tensor(pC, cute.make_layout((M, K), stride=(K, 1)))  # dx
        else:
            mA = cute.make_tensor(pA, cute.make_layout((N, M), stride=(1, N)))  # dY^T view
            mB = cute.make_tensor(pB, cute.make_layout((K, M), stride=(1, K)))  # x^T view
            mC = cute.make_tensor(pC, cute.make_layout((N, K), stride=(K, 1)))  # dW
            mX = mB
        mWs = cute.make_tensor(pWs, cute.make_layout((ws_rows, K8, P), stride=(K8 * P, P, 1)))
        if cutlass.const_expr(cfg.shared_numerator):  # one static row, as the fake tensor declares
            mNum = cute.make_tensor(pNum, cute.make_layout((1, m1), stride=(m1, 1)))
        else:
            mNum = cute.make_tensor(pNum, cute.make_layout((num_rows, m1), stride=(m1, 1)))
        mDen = cute.make_tensor(pDen, cute.make_layout((groups, n), stride=(n, 1)))
        self.kernel(mA, mB, mC, mX, mWs, mNum, mDen, group_size, stream)


def fake_pointer_arguments(cfg: BwdConfig) -> tuple:
    """Placeholder arguments of :class:`PointerEntry` (values are never read at compile time)."""
    from cutlass.cute.runtime import make_ptr

    gmem = cute.AddressSpace.gmem
    ab, c, f32 = dsl_dtype(cfg.ab_dtype), dsl_dtype(cfg.c_dtype), cutlass.Float32
    # every pointer 16-byte aligned (the launcher copies a coefficient view that is not): the
    # coefficient loads are vectorised, the tiles' 128-bit copies need it
    ptrs = [make_ptr(dt, 1 << 20, gmem, assumed_align=16) for dt in (ab, ab, c, ab, f32, f32, f32)]
    ints = [cutlass.Int32(v) for v in (128, 16, 16, 8, 8, 1, 16)]
    return (*ptrs, *ints, make_fake_stream())


class WsPointerEntry:
    """The launchable form of the sm90ws dgrad (:mod:`.bwd_sm90ws`):

    ``(pA, pB, pC, pX, pF, pWs, pNum, pDen, M, N/8, K/8, ws_rows, groups, num_rows, group_size, ctas,
    stream)``: pA = dY ``[M, N]``, pB = W ``[N, K]`` (read as W^T), pC = dx ``[M, K]``, pX = x, pF =
    the ``[M, K + 8]`` buffer ``[F(x) | 1 0 ...]`` (the kernel writes its first K columns), pWs the
    ``[ws_rows, K/8, m+1+n]`` fp32 partials; ``ctas`` persistent CTAs (the SM count)."""

    def __init__(self, kernel: Any, cfg: BwdConfig):
        self.kernel = kernel
        self.cfg = cfg

    @cute.jit
    def __call__(self, pA: cute.Pointer, pB: cute.Pointer, pC: cute.Pointer, pX: cute.Pointer,
                 pF: cute.Pointer, pWs: cute.Pointer, pNum: cute.Pointer, pDen: cute.Pointer, M: cutlass.Int32,
                 N8: cutlass.Int32, K8: cutlass.Int32, ws_rows: cutlass.Int32, groups: cutlass.Int32,
                 num_rows: cutlass.Int32, group_size: cutlass.Int32, ctas: cutlass.Int32, stream):
        cfg = self.cfg
        m1, n, P = cfg.m + 1, cfg.n, cfg.num_params
        N = cute.assume(N8 * 8, divby=8)
        K = cute.assume(K8 * 8, divby=8)
        KF = cute.assume(K8 * 8 + 8, divby=8)  # row stride of [F(x) | 1 0 ...]
        mX = cute.make_tensor(pX, cute.make_layout((M, K), stride=(K, 1)))
        mF = cute.make_tensor(pF, cute.make_layout((M, K), stride=(KF, 1)))
        mA = cute.make_tensor(pA, cute.make_layout((M, N), stride=(N, 1)))  # dY
        mB = cute.make_tensor(pB, cute.make_layout((K, N), stride=(1, K)))  # W^T view of W
        mC = cute.make_tensor(pC, cute.make_layout((M, K), stride=(K, 1)))  # dx
        mWs = cute.make_tensor(pWs, cute.make_layout((ws_rows, K8, P), stride=(K8 * P, P, 1)))
        if cutlass.const_expr(cfg.shared_numerator):
            mNum = cute.make_tensor(pNum, cute.make_layout((1, m1), stride=(m1, 1)))
        else:
            mNum = cute.make_tensor(pNum, cute.make_layout((num_rows, m1), stride=(m1, 1)))
        mDen = cute.make_tensor(pDen, cute.make_layout((groups, n), stride=(n, 1)))
        self.kernel(mA, mB, mC, mX, mF, mWs, mNum, mDen, group_size, ctas, stream)


def fake_ws_pointer_arguments(cfg: BwdConfig) -> tuple:
    """Placeholder arguments of :class:`WsPointerEntry` (never read at compile time)."""
    from cutlass.cute.runtime import make_ptr

    gmem = cute.AddressSpace.gmem
    ab, f32 = dsl_dtype(cfg.ab_dtype), cutlass.Float32
    ptrs = [make_ptr(dt, 1 << 20, gmem, assumed_align=16) for dt in (ab, ab, ab, ab, ab, f32, f32, f32)]
    ints = [cutlass.Int32(v) for v in (128, 16, 16, 8, 8, 1, 16, 132)]
    return (*ptrs, *ints, make_fake_stream())


def kernel_object(cfg: BwdConfig) -> Any:
    """The kernel class instance of ``cfg`` (``kernel``: "sm80" mma.sync, "sm90ws" / "sm90wspp" the
    persistent warp-specialized dgrad)."""
    if cfg.kernel in ("sm90ws", "sm90wspp"):
        from .bwd_sm90ws import RationalDgradSm90Ws

        return RationalDgradSm90Ws(cfg)
    return RationalBwdSm80(cfg)


def config_of(mode: str, ab_dtype: str, c_dtype: str, form: str, m: int = 5, n: int = 4,
              shared_numerator: bool = True, kernel: str = "sm80") -> BwdConfig:
    """The :class:`BwdConfig` of a registry / launcher field set (sm90ws*: its one tile and depth)."""
    if kernel in ("sm90ws", "sm90wspp"):
        return BwdConfig(mode, ab_dtype, c_dtype, form, m, n, shared_numerator, tile=(128, 128, 64), stages=4,
                         kernel=kernel)
    return BwdConfig(mode, ab_dtype, c_dtype, form, m, n, shared_numerator)


def compile_variant(arch: str, options: str, **fields: Any) -> Any:
    """Registry / runtime entry point: the :class:`PointerEntry` of ``config_of(**fields)`` compiled
    for ``arch`` with ``options`` (:func:`cutlass_kernels.dsl.compile_options`, which carries the arch
    and, for the build check, the dump dir; the runtime adds ``--enable-tvm-ffi``)."""
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"the backward GEMMs target {SUPPORTED_ARCHS}, got {arch!r}")
    cfg = config_of(**fields)
    if cfg.kernel in ("sm90ws", "sm90wspp"):
        if arch != "sm_90a":
            raise ValueError(f"the {cfg.kernel} dgrad targets sm_90a, got {arch!r}")
        return cute.compile(WsPointerEntry(kernel_object(cfg), cfg), *fake_ws_pointer_arguments(cfg), options=options)
    return cute.compile(PointerEntry(kernel_object(cfg), cfg), *fake_pointer_arguments(cfg), options=options)


def compile_tensor_variant(arch: str, options: str, **fields: Any) -> Any:
    """Like :func:`compile_variant` but with the tensor interface and :func:`fake_arguments`."""
    cfg = config_of(**fields)
    return cute.compile(kernel_object(cfg), *fake_arguments(cfg), options=options)
