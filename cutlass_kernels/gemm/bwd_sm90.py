"""Fused GR-KAN backward GEMMs for Hopper (sm_90a): TMA + WGMMA (both operands from shared memory).

* **dgrad** ``G = dY @ W`` ``[M, K]`` (reduction over N) with the epilogue of :mod:`.bwd_epilogue`:
  ``dx = G * F'(x)`` and the per-(warp, 8-column chunk) coefficient partials (no atomics).
* **wgrad** ``dW = dY^T @ F(x)`` ``[N, K]`` (reduction over M): after a stage's TMA lands, every
  thread applies F in place to its 32 elements of the x (B) tile in shared memory (one 8-column
  chunk, so one coefficient set per thread for the whole main loop), ``fence.proxy.async`` makes
  the generic-proxy stores visible to WGMMA, and a CTA barrier orders them before the MMA.  The
  MMAs of tile k run on the tensor cores while the threads transform tile k+1.  ragged tails: TMA
  zero-fills, F(0) is finite and meets a zero dY^T row/column, so nothing leaks into stored output.

* TMA brings dY tiles (K-major: N contiguous) and W^T tiles (MN-major: W's K is contiguous) into
  128B-swizzled shared memory, ``stages`` deep, tracked by an mbarrier pipeline; one elected
  thread of warp 0 issues the loads.  OOB rows/columns (ragged M, K or N tails) are zero-filled by
  the TMA unit, so a partial last k-tile adds zeros.
* WGMMA SS: two consumer warpgroups, 64 rows each (tile 128 x 128 x 64).  Each k-tile's MMAs are
  one commit group; ``wait_group(1)`` keeps one k-tile of MMAs in flight while the previous
  tile's stage is released and refilled.
* Epilogue: the accumulator's 8-column blocks are lane-uniform (proven at trace time by
  :func:`.bwd_epilogue.chunk_groups`); each warp owns distinct 16-row blocks, so the partial slot
  is ``tile_m * 8 + warp``.  dx goes out through swizzled smem (aliasing the drained A stages).

"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.tensor_utils as tensor_utils
import cutlass.utils.hopper_helpers as sm90_utils

from fusedkat.ops import rational_math as rm

from ..dsl import DslMath
from .bwd_epilogue import CHUNK, chunk_groups, dgrad_epilogue, load_coefficients, store_tile
from .bwd_sm80 import BwdConfig, dsl_dtype
from .common import rowmajor_tiled_copy, smem_layout_rowmajor
from .sm90_common import create_tma_pipeline, make_tma_atoms, partition_tma, produce


class RationalBwdSm90:
    """Same call signature as :class:`~cutlass_kernels.gemm.bwd_sm80.RationalBwdSm80`."""

    def __init__(self, cfg: BwdConfig):
        if cfg.kernel != "sm90":
            raise ValueError("RationalBwdSm90 takes a BwdConfig with kernel='sm90'")
        self.cfg = cfg
        self.dtype = dsl_dtype(cfg.ab_dtype)
        self.c_dtype = dsl_dtype(cfg.c_dtype)
        self.bM, self.bN, self.bK = cfg.tile
        self.num_wg = self.bM // 64
        self.num_threads = cfg.num_threads

    @cute.jit
    def __call__(self, mA: cute.Tensor, mB: cute.Tensor, mC: cute.Tensor, mX: cute.Tensor,
                 mWs: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor, group_size: cutlass.Int32, stream):
        cfg = self.cfg
        a_layout = tensor_utils.LayoutEnum.from_tensor(mA)
        b_layout = tensor_utils.LayoutEnum.from_tensor(mB)
        tiled_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, a_layout.sm90_mma_major_mode(), b_layout.sm90_mma_major_mode(),
            cutlass.Float32, (self.num_wg, 1, 1), tiler_mn=(64, self.bN))
        tile = (self.bM, self.bN, self.bK)
        sA_staged = sm90_utils.make_smem_layout_a(a_layout, tile, self.dtype, cfg.stages)
        sB_staged = sm90_utils.make_smem_layout_b(b_layout, tile, self.dtype, cfg.stages)
        tma_a, tma_mA, tma_b, tma_mB = make_tma_atoms(mA, mB, sA_staged, sB_staged, tile)
        sC_layout, sC_swz = smem_layout_rowmajor(self.c_dtype, self.bM, self.bN)
        c_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.c_dtype, num_bits_per_copy=128)
        copy_C = rowmajor_tiled_copy(c_atom, self.c_dtype, self.num_threads, self.bN)
        # wgrad's in-smem transform: 128-bit vectors along B's contiguous mode (K of x), threads
        # 16 x 16 over the (bN, bK) tile: every element of a thread lies in one 8-column chunk.
        v_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.dtype, num_bits_per_copy=128)
        vec = 128 // self.dtype.width
        tcols = self.bN // vec
        xform = cute.make_tiled_copy_tv(
            v_atom, cute.make_layout((tcols, self.num_threads // tcols), stride=(1, tcols)),
            cute.make_layout((vec, 1)))
        grid = cute.ceil_div(mC.shape, (self.bM, self.bN))
        self.kernel(tma_a, tma_mA, tma_b, tma_mB, mC, mX, mWs, mNum, mDen, group_size, tiled_mma,
                    sA_staged, sB_staged, sC_layout, sC_swz, copy_C, xform).launch(
            grid=[cute.size(grid[0]), cute.size(grid[1]), 1], block=[self.num_threads, 1, 1],
            cluster=(1, 1, 1), stream=stream)

    @cute.kernel
    def kernel(self, tma_a: cute.CopyAtom, mA: cute.Tensor, tma_b: cute.CopyAtom, mB: cute.Tensor,
               mC: cute.Tensor, mX: cute.Tensor, mWs: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor,
               group_size: cutlass.Int32, tiled_mma: cute.TiledMma, sA_staged: cute.ComposedLayout,
               sB_staged: cute.ComposedLayout, sC_layout: cute.Layout, sC_swz: cute.Swizzle,
               copy_C: cute.TiledCopy, xform: cute.TiledCopy):
        cfg = self.cfg
        stages = cfg.stages
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp_idx == 0:
            cute.nvgpu.cpasync.prefetch_descriptor(tma_a)
            cute.nvgpu.cpasync.prefetch_descriptor(tma_b)
        tidx, _, _ = cute.arch.thread_idx()
        bidx, bidy, _ = cute.arch.block_idx()

        @cute.struct
        class Storage:
            barriers: cute.struct.MemRange[cutlass.Int64, stages * 2]
            a: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sA_staged)], 1024]
            b: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sB_staged)], 1024]

        smem = cutlass.memory.SmemAllocator()
        st = smem.allocate(Storage)
        sA = st.a.get_tensor(sA_staged.outer, swizzle=sA_staged.inner)
        sB = st.b.get_tensor(sB_staged.outer, swizzle=sB_staged.inner)
        # The output staging tile reuses the A stages (all MMAs retired by then).
        sC = cute.make_tensor(cute.recast_ptr(sA.iterator, sC_swz, dtype=self.c_dtype), sC_layout)

        pipe = create_tma_pipeline(st.barriers.data_ptr(), stages, self.num_threads, self.dtype, sA_staged, sB_staged)
        cute.arch.sync_threads()  # barrier init visible to all

        tiler = (self.bM, self.bN, self.bK)
        coord = (bidx, bidy, None)
        gA = cute.local_tile(mA, tiler=tiler, coord=coord, proj=(1, None, 1))
        gB = cute.local_tile(mB, tiler=tiler, coord=coord, proj=(None, 1, 1))
        gC = cute.local_tile(mC, tiler=tiler, coord=coord, proj=(1, 1, None))
        gX = cute.local_tile(mX, tiler=tiler, coord=coord, proj=(1, 1, None))
        cC = cute.local_tile(cute.make_identity_tensor(mC.layout.shape), tiler=tiler, coord=coord, proj=(1, 1, None))
        tAsA, tAgA, tBsB, tBgB = partition_tma(tma_a, tma_b, sA, sB, gA, gB)

        thr_mma = tiled_mma.get_slice(tidx)
        tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sA))  # smem descriptors, per stage
        tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))
        acc = cute.make_rmem_tensor(thr_mma.partition_C(gC).shape, cutlass.Float32)
        acc.fill(0.0)
        tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
        num_kb = cute.size(tCrA, mode=[2])
        k_tiles = cute.size(gA, mode=[2])
        # wgrad: this thread's slice of every B stage and its group's coefficients (registers).
        thr_x = xform.get_slice(tidx)
        tXsB = thr_x.partition_D(sB)
        coef_a, coef_b = None, None
        if cutlass.const_expr(cfg.mode == "wgrad"):
            cB = cute.local_tile(cute.make_identity_tensor(mB.layout.shape), tiler=tiler, coord=coord,
                                 proj=(None, 1, 1))
            tXcB = thr_x.partition_D(cB)
            self._check_single_chunk(xform)
            group = cutlass.min(tXcB[0][0] // group_size, mDen.shape[0] - 1)
            coef_a, coef_b = load_coefficients(mNum, mDen, group, cfg.m, cfg.n, cfg.shared_numerator)

        prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, stages)
        if warp_idx == 0:
            for _ in cutlass.range(cutlass.min(stages, k_tiles), unroll=1):
                produce(pipe, prod, tma_a, tAgA, tAsA, tma_b, tBgB, tBsB)
                prod.advance()

        cons = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, stages)
        rel = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, stages)
        for k_tile in cutlass.range(k_tiles, unroll=1):
            pipe.consumer_wait(cons)
            if cutlass.const_expr(cfg.mode == "wgrad"):
                self._transform_stage(tXsB, cons.index, coef_a, coef_b)
                cute.arch.fence_view_async_shared()  # generic-proxy smem stores -> WGMMA (async proxy)
                cute.arch.sync_threads()  # every thread's slice is transformed before any MMA reads it
            cute.nvgpu.warpgroup.fence()
            for kb in cutlass.range_constexpr(num_kb):
                cute.gemm(tiled_mma, acc, tCrA[None, None, kb, cons.index], tCrB[None, None, kb, cons.index], acc)
            cute.nvgpu.warpgroup.commit_group()
            # Keep this tile's MMAs in flight; the previous tile's are done, so its stage is free.
            cute.nvgpu.warpgroup.wait_group(1)
            cons.advance()
            if k_tile > 0:
                pipe.consumer_release(rel)
                rel.advance()
                if warp_idx == 0:
                    if prod.count < k_tiles:
                        produce(pipe, prod, tma_a, tAgA, tAsA, tma_b, tBgB, tBsB)
                        prod.advance()
        cute.nvgpu.warpgroup.wait_group(0)

        if cutlass.const_expr(cfg.mode == "dgrad"):
            warps_m = cfg.ws_rows_per_tile
            groups = chunk_groups(tiled_mma, self.bM, self.bN, self.num_threads, warps_m)  # trace time
            dgrad_epilogue(acc, thr_mma.partition_C(cC), thr_mma.partition_C(gX), mC, mWs, mNum, mDen,
                           group_size, bidx * warps_m + warp_idx % warps_m, tidx % 32, groups,
                           cfg.form, cfg.m, cfg.n, cfg.shared_numerator)
        cute.arch.sync_threads()  # every warp is past its MMAs before sC overwrites the A stages
        store_tile(acc, mC, gC, cC, sC, thr_mma, copy_C, tidx, self.c_dtype)

    @cute.jit
    def _transform_stage(self, tXsB: cute.Tensor, stage, coef_a, coef_b):
        """F in place on this thread's elements of B stage ``stage`` (fp32 math, rcp.approx)."""
        src = tXsB[None, None, None, stage]
        frag = cute.make_fragment_like(src)
        cute.autovec_copy(src, frag)
        for i in cutlass.range_constexpr(cute.size(frag)):
            v = frag[i].to(cutlass.Float32)
            frag[i] = rm.forward(coef_a, coef_b, v, self.cfg.form, DslMath).to(self.dtype)
        cute.autovec_copy(frag, src)

    def _check_single_chunk(self, xform):
        """Trace-time proof that a thread's transform slice lies in one 8-column chunk (one group)."""
        ident = cute.make_identity_tensor((self.bN, self.bK))
        for t in list(range(32)) + [self.num_threads - 1]:
            part = xform.get_slice(t).partition_D(ident)
            for i in range(cute.size(part)):
                if part[i][0] // CHUNK != part[0][0] // CHUNK:
                    raise AssertionError("wgrad transform layout: a thread's elements straddle 8-column chunks")

