"""Compile the fused forward GEMM variants: with fake tensors (build check, no GPU) or for launches.

One compiled kernel serves every problem size of a variant: M, N, K and the group count are runtime
values (N and K declared divisible by 8 so the 128-bit copies are legal, pointers 16-byte aligned),
so the compile-cache key is the :class:`~cutlass_kernels.gemm.common.FwdConfig` plus the arch.
"""

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


class PointerEntry:
    """The launchable form of a forward kernel: raw global pointers and int sizes in, tensors built
    inside the trace.  Its ABI is plain (pointers + Int32s + stream), so the function compiled here
    with placeholder values (no GPU) is exactly the one launched with real ``data_ptr()`` values --
    no dependence on how DLPack tensors would be typed.  N and K arrive as N/8 and K/8 so the
    compiler knows rows are 16-byte aligned (128-bit copies, TMA)."""

    def __init__(self, kernel: Any, cfg: FwdConfig):
        self.kernel = kernel
        self.cfg = cfg

    @cute.jit
    def __call__(self, pA: cute.Pointer, pB: cute.Pointer, pC: cute.Pointer, pBias: cute.Pointer,
                 pNum: cute.Pointer, pDen: cute.Pointer, M: cutlass.Int32, N8: cutlass.Int32, K8: cutlass.Int32,
                 lda8: cutlass.Int32, groups: cutlass.Int32, num_rows: cutlass.Int32, group_size: cutlass.Int32,
                 stream):
        m1, n = self.cfg.m + 1, self.cfg.n
        N = cute.assume(N8 * 8, divby=8)
        K = cute.assume(K8 * 8, divby=8)
        lda = cute.assume(lda8 * 8, divby=8)  # x's row stride: row-strided views need no copy
        mA = cute.make_tensor(pA, cute.make_layout((M, K), stride=(lda, 1)))
        mB = cute.make_tensor(pB, cute.make_layout((N, K), stride=(K, 1)))
        mC = cute.make_tensor(pC, cute.make_layout((M, N), stride=(N, 1)))
        mBias = cute.make_tensor(pBias, cute.make_layout(N))
        mNum = cute.make_tensor(pNum, cute.make_layout((num_rows, m1), stride=(m1, 1)))
        mDen = cute.make_tensor(pDen, cute.make_layout((groups, n), stride=(n, 1)))
        self.kernel(mA, mB, mC, mBias, mNum, mDen, group_size, stream)


def fake_pointer_arguments(cfg: FwdConfig) -> tuple:
    """Placeholder ``(pA, pB, pC, pBias, pNum, pDen, M, N/8, K/8, lda/8, groups, num_rows, group_size, stream)``."""
    from cutlass.cute.runtime import make_ptr

    dt = dsl_dtype(cfg.dtype)
    gmem = cute.AddressSpace.gmem
    ptrs = [make_ptr(dt, 1 << 20, gmem, assumed_align=16) for _ in range(3)]
    ptrs += [make_ptr(cutlass.Float32, 1 << 20, gmem, assumed_align=16 if i == 0 else 4) for i in range(3)]
    ints = [cutlass.Int32(v) for v in (128, 16, 16, 16, 1, 1, 128)]
    return (*ptrs, *ints, make_fake_stream())


def _kernel_for(fields: dict, arch: str) -> tuple[Any, FwdConfig]:
    fields = dict(fields)
    kernel = fields.pop("kernel", None)
    cfg = FwdConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    if kernel == "sm80":
        from .fwd_sm80 import RationalGemmFwdSm80

        return RationalGemmFwdSm80(cfg), cfg
    if kernel == "sm90":
        from .fwd_sm90 import RationalGemmFwdSm90

        return RationalGemmFwdSm90(cfg), cfg
    return kernel_object(cfg, arch), cfg


def compile_variant(arch: str, options: str, **fields: Any) -> Any:
    """Registry / runtime entry point: the :class:`PointerEntry` of ``FwdConfig(**fields)`` compiled
    for ``arch`` with ``options`` (:func:`cutlass_kernels.dsl.compile_options`).  ``kernel`` picks the
    class: ``"sm80"`` (mma.sync; valid on sm_80..sm_90a) or ``"sm90"`` (WGMMA, sm_90a only)."""
    obj, cfg = _kernel_for(fields, arch)
    return cute.compile(PointerEntry(obj, cfg), *fake_pointer_arguments(cfg), options=options)


def compile_tensor_variant(arch: str, options: str, **fields: Any) -> Any:
    """Like :func:`compile_variant` but with the tensor interface and fake tensors."""
    obj, cfg = _kernel_for(fields, arch)
    return cute.compile(obj, *fake_arguments(cfg), options=options)


# ---------------------------------------------------------------------------- sm90ws (issue 15)
class PointerEntryWs(PointerEntry):
    """:class:`PointerEntry` of the persistent warp-specialized kernel: one more Int32, ``ctas``
    (the persistent grid, the launcher passes ``min(SM count, tiles)``), after ``group_size``."""

    @cute.jit
    def __call__(self, pA: cute.Pointer, pB: cute.Pointer, pC: cute.Pointer, pBias: cute.Pointer,
                 pNum: cute.Pointer, pDen: cute.Pointer, M: cutlass.Int32, N8: cutlass.Int32, K8: cutlass.Int32,
                 lda8: cutlass.Int32, groups: cutlass.Int32, num_rows: cutlass.Int32, group_size: cutlass.Int32,
                 ctas: cutlass.Int32, stream):
        m1, n = self.cfg.m + 1, self.cfg.n
        N = cute.assume(N8 * 8, divby=8)
        K = cute.assume(K8 * 8, divby=8)
        lda = cute.assume(lda8 * 8, divby=8)
        mA = cute.make_tensor(pA, cute.make_layout((M, K), stride=(lda, 1)))
        mB = cute.make_tensor(pB, cute.make_layout((N, K), stride=(K, 1)))
        mC = cute.make_tensor(pC, cute.make_layout((M, N), stride=(N, 1)))
        mBias = cute.make_tensor(pBias, cute.make_layout(N))
        mNum = cute.make_tensor(pNum, cute.make_layout((num_rows, m1), stride=(m1, 1)))
        mDen = cute.make_tensor(pDen, cute.make_layout((groups, n), stride=(n, 1)))
        self.kernel(mA, mB, mC, mBias, mNum, mDen, group_size, ctas, stream)


def ws_config(fields: dict) -> Any:
    """The :class:`~cutlass_kernels.gemm.ws_config.WsFwdConfig` of registry/launcher ``fields``
    (``kernel`` dropped)."""
    from .ws_config import WsFwdConfig

    return WsFwdConfig(**{k: v for k, v in fields.items() if k != "kernel"})


def compile_ws_variant(arch: str, options: str, **fields: Any) -> Any:
    """Registry / runtime entry of the warp-specialized sm_90a kernel (``kernel="sm90ws"``): its
    :class:`PointerEntryWs` compiled with placeholder pointers (no GPU needed)."""
    if not normalize_arch(arch).startswith("sm_90"):
        raise ValueError(f"the sm90ws kernel is built for sm_90a only, got {arch}")
    from .fwd_sm90ws import RationalGemmFwdSm90Ws
    from .fwd_sm90ws_panel import RationalGemmFwdSm90WsPanel

    cfg = ws_config(fields)
    args = fake_pointer_arguments(cfg)
    args = (*args[:-1], cutlass.Int32(132), args[-1])
    kernel = (RationalGemmFwdSm90WsPanel if cfg.panel else RationalGemmFwdSm90Ws)(cfg)
    return cute.compile(PointerEntryWs(kernel, cfg), *args, options=options)
