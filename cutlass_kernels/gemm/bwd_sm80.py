"""Fused GR-KAN backward GEMMs for sm_80-class GPUs (cp.async + ldmatrix + mma.sync), CuTe DSL.

For ``y = F(x) W^T + b`` with only x saved (x ``[M, K]``, W ``[N, K]``, dY ``[M, N]``):

* **dgrad** ``G = dY @ W`` ``[M, K]`` (reduction over N).  The epilogue loads the x element under
  each accumulator, writes ``dx = G * F'(x)`` and reduces ``G * dF/da_i`` and ``G * dF/db_j`` into
  per-(warp-row, 8-column chunk) fp32 partials in a workspace ``[S, K/8, m+1+n]``
  (``S = ceil(M/bM) * warps_m``).  No atomics: every partial has exactly one writer, and a second,
  deterministic pass (the host launcher's fixed-shape ``torch.sum``) folds chunks into groups.
* **wgrad** ``dW = dY^T @ F(x)`` ``[N, K]`` (reduction over M).  x is the B operand (N-major in
  GEMM terms, i.e. K-contiguous).  Each thread applies F *in shared memory* to exactly the elements
  its own cp.async brought in, right after ``cp.async.wait_group`` (its own copies are complete and
  visible to itself) and before the CTA barrier that precedes ``ldmatrix``; so the transform needs
  no extra barrier, each x element is transformed once per CTA (not once per warp), and F(x) never
  reaches global memory.

Math: every formula comes from :mod:`fusedkat.ops.rational_math` (``forward`` / ``grad_terms``)
evaluated on DSL ``Float32`` registers through :class:`cutlass_kernels.dsl.DslMath` (fast
``rcp.approx``; IEEE division spilled registers in the DESIGN.md experiment).

Layout requirements (checked by the launcher): K % 8 == 0, N % 8 == 0, (K / g) % 8 == 0 so that an
8-column chunk never straddles a group; M arbitrary (ragged tails predicated).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple, Type

import cutlass
import cutlass.cute as cute
from cutlass.tensor_utils import LayoutEnum

from fusedkat.ops import rational_math as rm

from ..dsl import DslMath  # shared MathOps on DSL Float32 (fast rcp.approx)
from .bwd_epilogue import CHUNK, chunk_groups, dgrad_epilogue, load_coefficients



@dataclass(frozen=True)
class BwdConfig:
    """Compile-time parameters of one backward GEMM variant (hashable: a compile-cache key)."""

    mode: str  # "dgrad" | "wgrad"
    ab_dtype: str  # "bf16" | "fp16": dtype of x, dY, W as fed to the MMA
    c_dtype: str  # output dtype: dx (dgrad, = x dtype) or dW ("bf16" | "fp16" | "fp32")
    form: str = rm.DEFAULT_FORM
    m: int = rm.DEFAULT_ORDER[0]
    n: int = rm.DEFAULT_ORDER[1]
    shared_numerator: bool = True  # numerator (1, m+1) shared by all groups, else (g, m+1)
    tile: Tuple[int, int, int] = (128, 128, 32)
    # 8 warps (warp tile 64x32): 4 warps (64x64) spill in wgrad (255 regs) once F is in the loop.
    atoms: Tuple[int, int, int] = (2, 4, 1)
    stages: int = 3
    kernel: str = "sm80"  # "sm80": mma.sync (this module);
    # "sm90ws": the persistent warp-specialized dgrad that also writes F(x) (bwd_sm90ws, dgrad only);
    # "sm90wspp": the same with ping-ponged consumer warpgroups (64-row tiles each)

    def __post_init__(self) -> None:
        if self.mode not in ("dgrad", "wgrad"):
            raise ValueError(f"mode must be 'dgrad' or 'wgrad', got {self.mode!r}")
        rm.RationalSpec(self.m, self.n, self.form)  # validates degrees and form
        if self.ab_dtype not in _DTYPES or self.ab_dtype == "fp32":
            raise ValueError(f"ab_dtype must be bf16 or fp16, got {self.ab_dtype!r}")
        if self.c_dtype not in _DTYPES:
            raise ValueError(f"c_dtype must be one of {sorted(_DTYPES)}, got {self.c_dtype!r}")
        if self.mode == "dgrad" and self.c_dtype != self.ab_dtype:
            raise ValueError("dgrad writes dx in x's dtype: c_dtype must equal ab_dtype")
        bm, bn, bk = self.tile
        am, an, ak = self.atoms
        if self.kernel in ("sm90ws", "sm90wspp"):
            if self.tile != (128, 128, 64) or self.stages < 2:
                raise ValueError(f"the {self.kernel} backward kernels use the tile (128, 128, 64)")
            if self.mode != "dgrad":
                raise ValueError(f"the {self.kernel} backward kernel is a dgrad (dW is one cuBLAS GEMM)")
            return
        if self.kernel != "sm80":
            raise ValueError(f"kernel must be 'sm80', 'sm90ws' or 'sm90wspp', got {self.kernel!r}")
        if ak != 1 or bm % (16 * am) or bn % (16 * an) or bk % 16 or self.stages < 3:
            raise ValueError(f"unsupported tile/atoms/stages {self.tile} {self.atoms} {self.stages}")

    @property
    def num_params(self) -> int:
        """Coefficient-gradient partials per chunk: (m+1) numerator + n denominator."""
        return self.m + 1 + self.n

    @property
    def num_threads(self) -> int:
        if self.kernel in ("sm90ws", "sm90wspp"):
            return 128 * (self.tile[0] // 64)  # one consumer warpgroup per 64 rows (sm90ws: + a producer)
        return 32 * self.atoms[0] * self.atoms[1]

    @property
    def ws_rows_per_tile(self) -> int:
        """dgrad partial slots per M tile: the warps with distinct rows (see bwd_epilogue)."""
        return self.tile[0] // 16 if self.kernel in ("sm90ws", "sm90wspp") else self.atoms[0]

    def key(self) -> str:
        """Short stable name, used in variant names and caches."""
        t = "x".join(map(str, self.tile)) + "_w" + "x".join(map(str, self.atoms[:2]))
        num = "sn" if self.shared_numerator else "gn"
        return f"{self.kernel}_{self.mode}_{self.ab_dtype}_{self.c_dtype}_{self.form}_m{self.m}n{self.n}_{num}_{t}_s{self.stages}"


_CHECKED_LAYOUTS: set = set()  # layouts already proven by _check_layout_assumptions

_DTYPES = {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16, "fp32": cutlass.Float32}


def dsl_dtype(name: str) -> Type[cutlass.Numeric]:
    return _DTYPES[name]


class RationalBwdSm80:
    """One compiled variant; call through ``cute.compile(obj, *tensors, group_size, stream)``.

    Tensor arguments (cute views, all with unit stride on their contiguous mode):

    ========  ===========================  ============================================
    arg       dgrad                        wgrad
    ========  ===========================  ============================================
    mA        dY ``(M, N)`` row-major       dY^T ``(N, M)`` view, stride ``(1, N)``
    mB        W^T ``(K, N)`` view (1, K)    x^T ``(K, M)`` view, stride ``(1, K)``
    mC        dx ``(M, K)`` row-major       dW ``(N, K)`` row-major
    mX        x ``(M, K)``                  unused (pass x)
    mWs       ``(S, K/8, P)`` fp32          unused (pass any fp32 tensor)
    mNum      ``(1|g, m+1)`` fp32           same
    mDen      ``(g, n)`` fp32               same
    ========  ===========================  ============================================
    """

    def __init__(self, cfg: BwdConfig):
        self.cfg = cfg
        self.ab_dtype = dsl_dtype(cfg.ab_dtype)
        self.c_dtype = dsl_dtype(cfg.c_dtype)
        self.bM, self.bN, self.bK = cfg.tile
        self.num_threads = cfg.num_threads
        self.num_stages = cfg.stages

    # ------------------------------------------------------------------ host-side (trace) part
    @cute.jit
    def __call__(self, mA: cute.Tensor, mB: cute.Tensor, mC: cute.Tensor, mX: cute.Tensor,
                 mWs: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor,
                 group_size: cutlass.Int32, stream):
        a_major = LayoutEnum.from_tensor(mA)
        b_major = LayoutEnum.from_tensor(mB)
        copy_bits = 128
        sA_layout, sA_swz = self._smem_layout_ab(a_major, (self.bM, self.bK, self.num_stages))
        sB_layout, sB_swz = self._smem_layout_ab(b_major, (self.bN, self.bK, self.num_stages))
        sC_layout, sC_swz = self._smem_layout_c((self.bM, self.bN))

        g2s = cute.make_copy_atom(
            cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.LoadCacheMode.GLOBAL),
            self.ab_dtype, num_bits_per_copy=copy_bits)
        tiled_copy_A = self._gmem_tiled_copy(g2s, self.ab_dtype, a_major, self.bM)
        tiled_copy_B = self._gmem_tiled_copy(g2s, self.ab_dtype, b_major, self.bN)
        c_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.c_dtype, num_bits_per_copy=copy_bits)
        tiled_copy_C = self._gmem_tiled_copy_c(c_atom)

        am, an, _ = self.cfg.atoms
        op = cute.nvgpu.warp.MmaF16BF16Op(self.ab_dtype, cutlass.Float32, (16, 8, 16))
        # N permutation 2x the atom width so that B can be read with 4-matrix ldmatrix.
        tiled_mma = cute.make_tiled_mma(op, cute.make_layout(self.cfg.atoms),
                                        permutation_mnk=(am * 16, an * 16, 16))

        self._check_layout_assumptions(tiled_mma, tiled_copy_B)
        grid = cute.ceil_div(mC.shape, (self.bM, self.bN))
        self.kernel(mA, mB, mC, mX, mWs, mNum, mDen, group_size,
                    sA_layout, sA_swz, sB_layout, sB_swz, sC_layout, sC_swz,
                    tiled_copy_A, tiled_copy_B, tiled_copy_C, tiled_mma).launch(
            grid=[cute.size(grid[0]), cute.size(grid[1]), 1],
            block=[self.num_threads, 1, 1], stream=stream)

    def _check_layout_assumptions(self, tiled_mma, tiled_copy_B):
        """Trace-time (plain Python, static coordinates) proof that every B element a thread
        cp.async's lies in one 8-column chunk, hence one group (wgrad; the dgrad epilogue's facts
        are proven by :func:`.bwd_epilogue.chunk_groups`)."""
        key = (self.cfg.tile, self.cfg.atoms, self.cfg.mode, self.ab_dtype.width)
        if self.cfg.mode != "wgrad" or key in _CHECKED_LAYOUTS:
            return
        ident_b = cute.make_identity_tensor((self.bN, self.bK))
        for t in list(range(32)) + [self.num_threads - 1]:
            part = tiled_copy_B.get_slice(t).partition_S(ident_b)
            for i in range(cute.size(part)):
                if part[i][0] // CHUNK != part[0][0] // CHUNK:
                    raise AssertionError("B copy layout: a thread's elements straddle 8-column chunks")
        _CHECKED_LAYOUTS.add(key)

    def _smem_layout_ab(self, major, tiler):
        """Swizzled (rows, bK, stages) smem layout so that ldmatrix reads are conflict-free."""
        width = self.ab_dtype.width
        major_size = tiler[1] if major == LayoutEnum.ROW_MAJOR else tiler[0]
        major_size = min(major_size, 128 * 8 // width)  # one 128-byte row per atom
        swz_bits = min(int(math.log2(major_size * width // 128)), 3)
        swizzle = cute.make_swizzle(swz_bits, 4, int(math.log2(128 // width)))
        if major == LayoutEnum.ROW_MAJOR:
            atom = cute.make_layout((8, major_size), stride=(major_size, 1))
        else:
            atom = cute.make_layout((major_size, 8), stride=(1, major_size))
        return cute.tile_to_shape(atom, tiler, (0, 1, 2)), swizzle

    def _smem_layout_c(self, tiler):
        """Row-major (bM, bN) staging tile for the epilogue, swizzled through the pointer."""
        width = self.c_dtype.width
        major_size = min(tiler[1], 128 * 8 // width)
        swz_bits = min(int(math.log2(major_size * width // 128)), 3)
        swizzle = cute.make_swizzle(swz_bits, 4, int(math.log2(128 // width)))
        atom = cute.make_layout((8, major_size), stride=(major_size, 1))
        return cute.tile_to_shape(atom, tiler, (0, 1)), swizzle

    def _gmem_tiled_copy(self, atom, dtype, major, rows):
        """Thread layout that follows the contiguous mode, 128-bit vectors."""
        vec = 128 // dtype.width
        if major == LayoutEnum.ROW_MAJOR:
            cols = self.bK // vec
            thr = cute.make_layout((self.num_threads // cols, cols), stride=(cols, 1))
            val = cute.make_layout((1, vec))
        else:
            r = rows // vec
            thr = cute.make_layout((r, self.num_threads // r), stride=(1, r))
            val = cute.make_layout((vec, 1))
        return cute.make_tiled_copy_tv(atom, thr, val)

    def _gmem_tiled_copy_c(self, atom):
        vec = 128 // self.c_dtype.width
        cols = self.bN // vec
        thr = cute.make_layout((self.num_threads // cols, cols), stride=(cols, 1))
        return cute.make_tiled_copy_tv(atom, thr, cute.make_layout((1, vec)))

    # ------------------------------------------------------------------ device part
    @cute.kernel
    def kernel(self, mA: cute.Tensor, mB: cute.Tensor, mC: cute.Tensor, mX: cute.Tensor,
               mWs: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor, group_size: cutlass.Int32,
               sA_layout: cute.Layout, sA_swz: cute.Swizzle, sB_layout: cute.Layout, sB_swz: cute.Swizzle,
               sC_layout: cute.Layout, sC_swz: cute.Swizzle, tiled_copy_A: cute.TiledCopy, tiled_copy_B: cute.TiledCopy,
               tiled_copy_C: cute.TiledCopy, tiled_mma: cute.TiledMma):
        cfg = self.cfg
        tidx, _, _ = cute.arch.thread_idx()
        bidx, bidy, _ = cute.arch.block_idx()
        tiler = (self.bM, self.bN, self.bK)
        coord = (bidx, bidy, None)

        gA = cute.local_tile(mA, tiler=tiler, coord=coord, proj=(1, None, 1))
        gB = cute.local_tile(mB, tiler=tiler, coord=coord, proj=(None, 1, 1))
        gC = cute.local_tile(mC, tiler=tiler, coord=coord, proj=(1, 1, None))
        # The reduction residue (red % bK) is handled in the FIRST k-tile: shift the tiles by the
        # (negative) residue so the main loop never needs a k predicate.
        residue = cute.size(mA, mode=[1]) - cutlass.Int32(self.bK) * cute.size(gA, mode=[2])
        gA = cute.domain_offset((0, residue, 0), gA)
        gB = cute.domain_offset((0, residue, 0), gB)
        gA = cute.make_tensor(gA.iterator.align(16), gA.layout)
        gB = cute.make_tensor(gB.iterator.align(16), gB.layout)
        cA = cute.local_tile(cute.make_identity_tensor(mA.layout.shape), tiler=tiler, coord=coord, proj=(1, None, 1))
        cB = cute.local_tile(cute.make_identity_tensor(mB.layout.shape), tiler=tiler, coord=coord, proj=(None, 1, 1))
        cA = cute.domain_offset((0, residue, 0), cA)
        cB = cute.domain_offset((0, residue, 0), cB)

        @cute.struct
        class StorageAB:
            a: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(sA_layout)], 16]
            b: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(sB_layout)], 16]

        @cute.struct
        class StorageC:
            c: cute.struct.Align[cute.struct.MemRange[self.c_dtype, cute.cosize(sC_layout)], 16]

        smem = cutlass.utils.SmemAllocator()
        # The C staging buffer reuses the A/B pipeline buffers after the main loop.
        storage = smem.allocate(max(StorageAB.size_in_bytes(), StorageC.size_in_bytes()), byte_alignment=16)
        sA = StorageAB(storage).a.get_tensor(sA_layout, swizzle=sA_swz)
        sB = StorageAB(storage).b.get_tensor(sB_layout, swizzle=sB_swz)
        sC = StorageC(storage).c.get_tensor(sC_layout, swizzle=sC_swz)

        thr_copy_A = tiled_copy_A.get_slice(tidx)
        thr_copy_B = tiled_copy_B.get_slice(tidx)
        tAgA = thr_copy_A.partition_S(gA)
        tAsA = thr_copy_A.partition_D(sA)
        tBgB = thr_copy_B.partition_S(gB)
        tBsB = thr_copy_B.partition_D(sB)
        tAcA = thr_copy_A.partition_S(cA)
        tBcB = thr_copy_B.partition_S(cB)

        # Row predicates (M for A, N for B), evaluated once; the k residue is an if at the copy.
        tApA = cute.make_rmem_tensor(
            cute.make_layout((tAgA.shape[0][1], cute.size(tAgA, mode=[1]), cute.size(tAgA, mode=[2])),
                             stride=(cute.size(tAgA, mode=[1]), 1, 0)), cutlass.Boolean)
        tBpB = cute.make_rmem_tensor(
            cute.make_layout((tBsB.shape[0][1], cute.size(tBsB, mode=[1]), cute.size(tBsB, mode=[2])),
                             stride=(cute.size(tBsB, mode=[1]), 1, 0)), cutlass.Boolean)
        for rv in range(tApA.shape[0]):
            for r in range(tApA.shape[1]):
                tApA[rv, r, 0] = cute.elem_less(tAcA[(0, rv), r, 0, 0][0], mA.shape[0])
        for rv in range(tBpB.shape[0]):
            for r in range(tBpB.shape[1]):
                tBpB[rv, r, 0] = cute.elem_less(tBcB[(0, rv), r, 0, 0][0], mB.shape[0])

        # wgrad: the rational coefficients of the (single) group this thread's B elements belong to.
        coef_a, coef_b = self._thread_b_coefficients(tBcB, mNum, mDen, group_size)

        # ---- prologue: zero smem (predicated-off loads read as 0), start stages 0..S-2
        tAsA.fill(0)
        tBsB.fill(0)
        cute.arch.sync_threads()
        num_stages = cute.size(tAsA, mode=[3])
        k_tiles = cute.size(tAgA, mode=[3])
        k_next = cutlass.Int32(0)
        for k in range(tApA.shape[2]):
            if cute.elem_less(cutlass.Int32(-1), tAcA[0, 0, k, 0][1]):
                cute.copy(tiled_copy_A, tAgA[None, None, k, k_next], tAsA[None, None, k, 0], pred=tApA[None, None, k])
        for k in range(tBpB.shape[2]):
            if cute.elem_less(cutlass.Int32(-1), tBcB[0, 0, k, 0][1]):
                cute.copy(tiled_copy_B, tBgB[None, None, k, k_next], tBsB[None, None, k, 0], pred=tBpB[None, None, k])
        k_next = k_next + 1
        cute.arch.cp_async_commit_group()
        for s in range(1, num_stages - 1):
            if s == k_tiles:
                tApA.fill(0)
                tBpB.fill(0)
            cute.copy(tiled_copy_A, tAgA[None, None, None, k_next], tAsA[None, None, None, s], pred=tApA)
            cute.copy(tiled_copy_B, tBgB[None, None, None, k_next], tBsB[None, None, None, s], pred=tBpB)
            k_next = k_next + 1
            cute.arch.cp_async_commit_group()

        thr_mma = tiled_mma.get_slice(tidx)
        tCsA = thr_mma.partition_A(sA)
        tCsB = thr_mma.partition_B(sB)
        tCsC = thr_mma.partition_C(sC)
        tCgC = thr_mma.partition_C(gC)
        tCrA = tiled_mma.make_fragment_A(tCsA[None, None, None, 0])
        tCrB = tiled_mma.make_fragment_B(tCsB[None, None, None, 0])
        acc = tiled_mma.make_fragment_C(tCgC)
        acc.fill(0.0)

        a_row_major = LayoutEnum.from_tensor(mA) == LayoutEnum.ROW_MAJOR
        b_row_major = LayoutEnum.from_tensor(mB) == LayoutEnum.ROW_MAJOR
        s2r_A = cute.make_tiled_copy_A(
            cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(not a_row_major, 4), self.ab_dtype), tiled_mma)
        s2r_B = cute.make_tiled_copy_B(
            cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(not b_row_major, 4), self.ab_dtype), tiled_mma)
        thr_s2r_A = s2r_A.get_slice(tidx)
        thr_s2r_B = s2r_B.get_slice(tidx)
        tCsA_v = thr_s2r_A.partition_S(sA)
        tCrA_v = thr_s2r_A.retile(tCrA)
        tCsB_v = thr_s2r_B.partition_S(sB)
        tCrB_v = thr_s2r_B.retile(tCrB)

        pipe_read = 0
        pipe_write = num_stages - 1
        tCsA_p = tCsA_v[None, None, None, pipe_read]
        tCsB_p = tCsB_v[None, None, None, pipe_read]

        num_k_block = cute.size(tCrA, mode=[2])
        # Stage 0 is needed before the first ldmatrix, whatever num_k_block is.
        cute.arch.cp_async_wait_group(num_stages - 2)
        self._transform_b(tBsB, 0, coef_a, coef_b)
        cute.arch.sync_threads()
        cute.copy(s2r_A, tCsA_p[None, None, 0], tCrA_v[None, None, 0])
        cute.copy(s2r_B, tCsB_p[None, None, 0], tCrB_v[None, None, 0])

        # ---- main loop: smem pipeline (gmem->smem, S stages) x register pipeline (k-blocks)
        for k_tile in range(k_tiles):
            for kb in cutlass.range(num_k_block, unroll_full=True):
                if kb == num_k_block - 1:
                    tCsA_p = tCsA_v[None, None, None, pipe_read]
                    tCsB_p = tCsB_v[None, None, None, pipe_read]
                    cute.arch.cp_async_wait_group(num_stages - 2)
                    # Own cp.async writes are complete: transform them, then the barrier publishes.
                    self._transform_b(tBsB, pipe_read, coef_a, coef_b)
                    cute.arch.sync_threads()
                kb_next = (kb + 1) % num_k_block
                cute.copy(s2r_A, tCsA_p[None, None, kb_next], tCrA_v[None, None, kb_next])
                cute.copy(s2r_B, tCsB_p[None, None, kb_next], tCrB_v[None, None, kb_next])
                if kb == 0:
                    if k_tile + num_stages - 1 < k_tiles:
                        cute.copy(tiled_copy_A, tAgA[None, None, None, k_next], tAsA[None, None, None, pipe_write], pred=tApA)
                        cute.copy(tiled_copy_B, tBgB[None, None, None, k_next], tBsB[None, None, None, pipe_write], pred=tBpB)
                    k_next = k_next + 1
                    cute.arch.cp_async_commit_group()
                    pipe_write = pipe_read
                    pipe_read = pipe_read + 1
                    if pipe_read == num_stages:
                        pipe_read = 0
                cute.gemm(tiled_mma, acc, tCrA[None, None, kb], tCrB[None, None, kb], acc)

        cute.arch.cp_async_wait_group(0)
        cute.arch.sync_threads()

        # ---- epilogue
        cC = cute.local_tile(cute.make_identity_tensor(mC.layout.shape), tiler=tiler, coord=coord, proj=(1, 1, None))
        tCcC = thr_mma.partition_C(cC)
        if cutlass.const_expr(cfg.mode == "dgrad"):
            gX = cute.local_tile(mX, tiler=tiler, coord=coord, proj=(1, 1, None))
            tCgX = thr_mma.partition_C(gX)
            warps_m = cfg.atoms[0]
            groups = chunk_groups(tiled_mma, self.bM, self.bN, self.num_threads, warps_m)  # trace time
            # Warps are laid out column-major over (warps_m, warps_n): warp % warps_m is its row slot.
            dgrad_epilogue(acc, tCcC, tCgX, mC, mWs, mNum, mDen, group_size,
                           bidx * warps_m + (tidx // 32) % warps_m, tidx % 32, groups,
                           cfg.form, cfg.m, cfg.n, cfg.shared_numerator)

        out = cute.make_fragment_like(acc, self.c_dtype)
        out.store(acc.load().to(self.c_dtype))
        cute.autovec_copy(out, tCsC)
        thr_copy_C = tiled_copy_C.get_slice(tidx)
        tCsC_e = thr_copy_C.partition_S(sC)
        tCgC_e = thr_copy_C.partition_D(gC)
        tCcC_e = thr_copy_C.partition_S(cC)
        tCrC_e = cute.make_fragment_like(tCsC_e)
        cute.arch.sync_threads()
        cute.autovec_copy(tCsC_e, tCrC_e)
        tCpC = cute.make_rmem_tensor(
            cute.make_layout((tCgC_e.shape[0][1], cute.size(tCgC_e, mode=[1]), cute.size(tCgC_e, mode=[2])),
                             stride=(cute.size(tCgC_e, mode=[1]), 1, 0)), cutlass.Boolean)
        for rv in range(tCpC.shape[0]):
            for r in range(tCpC.shape[1]):
                tCpC[rv, r, 0] = cute.elem_less(tCcC_e[(0, rv), r, 0][0], mC.shape[0])
        for rv in range(tCpC.shape[0]):
            for ci in range(tCpC.shape[2]):
                if cute.elem_less(tCcC_e[(0, rv), 0, ci][1], mC.shape[1]):
                    cute.copy(tiled_copy_C, tCrC_e[None, None, ci], tCgC_e[None, None, ci], pred=tCpC[None, None, ci])
        return

    # ------------------------------------------------------------------ wgrad prologue
    def _thread_b_coefficients(self, tBcB, mNum, mDen, group_size):
        if cutlass.const_expr(self.cfg.mode != "wgrad"):
            return None, None
        # With the B copy layout every element a thread copies lies in one 8-column chunk (one
        # 128-bit vector along K, repeated along M) -- checked in _check_b_single_chunk at trace
        # time -- so (K/g) % 8 == 0 puts them in one group for the whole main loop.
        col = tBcB[0, 0, 0, 0][0]
        group = cutlass.min(col // group_size, mDen.shape[0] - 1)
        return load_coefficients(mNum, mDen, group, self.cfg.m, self.cfg.n, self.cfg.shared_numerator)

    @cute.jit
    def _transform_b(self, tBsB: cute.Tensor, stage, coef_a, coef_b):
        """F applied in place to this thread's own elements of B's smem stage (wgrad only)."""
        if cutlass.const_expr(self.cfg.mode == "wgrad"):
            src = tBsB[None, None, None, stage]
            frag = cute.make_fragment_like(src)
            cute.autovec_copy(src, frag)
            for i in cutlass.range_constexpr(cute.size(frag)):
                v = frag[i].to(cutlass.Float32)
                frag[i] = rm.forward(coef_a, coef_b, v, self.cfg.form, DslMath).to(self.ab_dtype)
            cute.autovec_copy(frag, src)
