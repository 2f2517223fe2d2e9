"""Fused GR-KAN forward GEMM for Hopper (sm_90a): TMA + WGMMA with A from registers (RS), CuTe DSL.

``y[M, N] = F(x)[M, K] @ W[N, K]^T + bias[N]`` in ONE kernel; F(x) never reaches memory.

* TMA brings x and W tiles into 128B-swizzled shared memory, ``stages`` deep, tracked by an
  mbarrier pipeline (one elected thread of warp 0 issues the loads; OOB rows of a ragged M or N
  tile are zero-filled by the TMA unit).
* WGMMA in the RS form: B (W) is read from shared memory by descriptor, A comes from registers.
  For each 16-wide k-block the A values go smem -> registers with ldmatrix, through F in fp32
  (:func:`fusedkat.ops.rational_math.forward`, ``rcp.approx``, coefficients from the smem table
  of :mod:`.common`) and back to bf16/fp16, then ``wgmma.fence`` and the asynchronous MMA.  The
  MMAs of the previous k-blocks (one commit group each) are in flight while block k is loaded and
  transformed into its own registers; a block's registers are rewritten only after the MMA that
  read them (``num_kb`` groups earlier) retired, and a smem stage is released one k-tile late,
  once all its groups retired -- so there is no full drain between k-tiles.
* Epilogue: ``acc + bias`` -> output dtype -> swizzled smem (aliasing the drained A stages) ->
  predicated 128-bit stores.

``bM`` is 64 per consumer warpgroup (128 = two warpgroups, 256 threads); K % bK == 0.
"""

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.tensor_utils as tensor_utils
import cutlass.utils.hopper_helpers as sm90_utils

from .common import (MAX_GROUPS, FwdConfig, a_value_chunks, apply_rational, coef_set, dsl_dtype,
                     epilogue_bias_store, fill_coef_table, rowmajor_tiled_copy, smem_layout_rowmajor)
from .sm90_common import create_tma_pipeline, make_tma_atoms, partition_tma, produce


class RationalGemmFwdSm90:
    """Same call signature as :class:`~cutlass_kernels.gemm.fwd_sm80.RationalGemmFwdSm80`."""

    def __init__(self, cfg: FwdConfig):
        self.cfg = cfg
        self.dtype = dsl_dtype(cfg.dtype)
        self.bM, self.bN, self.bK = cfg.tile
        if self.bM not in (64, 128) or self.bN not in (64, 128, 256) or self.bK != 64:
            raise ValueError(f"sm_90a tile must be (64|128, 64|128|256, 64), got {cfg.tile}")
        if cfg.prologue != "regs":
            raise ValueError("the sm_90a kernel applies F on the A register fragment (prologue='regs')")
        if self.bM * self.bN > self.bM * self.bK * cfg.stages:
            raise ValueError("the epilogue tile aliases the A stages: need bN <= bK * stages")
        self.num_wg = self.bM // 64
        self.num_threads = 128 * self.num_wg

    @cute.jit
    def __call__(self, mA: cute.Tensor, mB: cute.Tensor, mC: cute.Tensor, mBias: cute.Tensor,
                 mNum: cute.Tensor, mDen: cute.Tensor, group_size: cutlass.Int32, stream):
        cfg = self.cfg
        a_layout = tensor_utils.LayoutEnum.from_tensor(mA)
        b_layout = tensor_utils.LayoutEnum.from_tensor(mB)
        tiled_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, a_layout.sm90_mma_major_mode(), b_layout.sm90_mma_major_mode(),
            cutlass.Float32, (self.num_wg, 1, 1), tiler_mn=(64, self.bN),
            a_source=cute.nvgpu.warpgroup.OperandSource.RMEM)
        tile = (self.bM, self.bN, self.bK)
        sA_staged = sm90_utils.make_smem_layout_a(a_layout, tile, self.dtype, cfg.stages)
        sB_staged = sm90_utils.make_smem_layout_b(b_layout, tile, self.dtype, cfg.stages)
        tma_a, tma_mA, tma_b, tma_mB = make_tma_atoms(mA, mB, sA_staged, sB_staged, tile)
        sC_layout, sC_swz = smem_layout_rowmajor(self.dtype, self.bM, self.bN)
        c_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.dtype, num_bits_per_copy=128)
        copy_C = rowmajor_tiled_copy(c_atom, self.dtype, self.num_threads, self.bN)
        grid = cute.ceil_div(mC.shape, (self.bM, self.bN))
        self.kernel(tma_a, tma_mA, tma_b, tma_mB, mC, mBias, mNum, mDen, group_size, tiled_mma,
                    sA_staged, sB_staged, sC_layout, sC_swz, copy_C).launch(
            grid=[cute.size(grid[0]), cute.size(grid[1]), 1], block=[self.num_threads, 1, 1],
            cluster=(1, 1, 1), stream=stream)

    @cute.kernel
    def kernel(self, tma_a: cute.CopyAtom, mA: cute.Tensor, tma_b: cute.CopyAtom, mB: cute.Tensor,
               mC: cute.Tensor, mBias: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor,
               group_size: cutlass.Int32, tiled_mma: cute.TiledMma, sA_staged: cute.ComposedLayout,
               sB_staged: cute.ComposedLayout, sC_layout: cute.Layout, sC_swz: cute.Swizzle,
               copy_C: cute.TiledCopy):
        cfg = self.cfg
        P = cfg.num_coefs
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
            coef: cute.struct.Align[cute.struct.MemRange[cutlass.Float32, MAX_GROUPS * P], 16]
            a: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sA_staged)], 1024]
            b: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sB_staged)], 1024]

        smem = cutlass.memory.SmemAllocator()
        st = smem.allocate(Storage)
        sA = st.a.get_tensor(sA_staged.outer, swizzle=sA_staged.inner)
        sB = st.b.get_tensor(sB_staged.outer, swizzle=sB_staged.inner)
        sCoef = st.coef.get_tensor(cute.make_layout((MAX_GROUPS, P), stride=(P, 1)))
        # The epilogue tile reuses the A stages (all drained by then).
        sC = cute.make_tensor(cute.recast_ptr(sA.iterator, sC_swz, dtype=self.dtype), sC_layout)

        pipe = create_tma_pipeline(st.barriers.data_ptr(), stages, self.num_threads, self.dtype, sA_staged, sB_staged)
        fill_coef_table(sCoef, mNum, mDen, tidx, self.num_threads, cfg.m, cfg.n)
        cute.arch.sync_threads()  # barrier init and the coefficient table are visible to all

        tiler = (self.bM, self.bN, self.bK)
        coord = (bidx, bidy, None)
        gA = cute.local_tile(mA, tiler=tiler, coord=coord, proj=(1, None, 1))
        gB = cute.local_tile(mB, tiler=tiler, coord=coord, proj=(None, 1, 1))
        gC = cute.local_tile(mC, tiler=tiler, coord=coord, proj=(1, 1, None))
        cC = cute.local_tile(cute.make_identity_tensor(mC.layout.shape), tiler=tiler, coord=coord, proj=(1, 1, None))
        tAsA, tAgA, tBsB, tBgB = partition_tma(tma_a, tma_b, sA, sB, gA, gB)

        thr_mma = tiled_mma.get_slice(tidx)
        tCsA = thr_mma.partition_A(sA)
        tCrA = tiled_mma.make_fragment_A(tCsA[None, None, None, 0])  # registers (RS)
        tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))  # smem descriptors, per stage
        acc = cute.make_rmem_tensor(thr_mma.partition_C(gC).shape, cutlass.Float32)
        acc.fill(0.0)
        tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
        s2r_A = cute.make_tiled_copy_A(cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(False, 4), self.dtype),
                                       tiled_mma)
        thr_s2r = s2r_A.get_slice(tidx)
        tXsA = thr_s2r.partition_S(sA)
        tXrA = thr_s2r.retile(tCrA)
        chunks = a_value_chunks(tiled_mma, self.bM, self.bK)
        num_kb = cute.size(tCrA, mode=[2])
        last_group = mDen.shape[0] - 1
        k_tiles = cute.size(gA, mode=[2])

        prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, stages)
        if warp_idx == 0:
            for _ in cutlass.range(cutlass.min(stages, k_tiles), unroll=1):
                produce(pipe, prod, tma_a, tAgA, tAsA, tma_b, tBgB, tBsB)
                prod.advance()

        cons = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, stages)
        rel = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, stages)
        for k_tile in cutlass.range(k_tiles, unroll=1):
            pipe.consumer_wait(cons)
            for kb in cutlass.range_constexpr(num_kb):
                # One MMA group per k-block.  Block kb's registers were last read by the MMA issued
                # num_kb groups ago: wait for it, leaving the num_kb - 1 newer ones in flight, so
                # this block's ldmatrix + F overlap the previous blocks' tensor-core work.
                cute.nvgpu.warpgroup.wait_group(num_kb - 1)
                cute.copy(s2r_A, tXsA[None, None, kb, cons.index], tXrA[None, None, kb])
                self._transform(tCrA, kb, k_tile * self.bK + kb * 16, chunks, sCoef, group_size, last_group)
                cute.nvgpu.warpgroup.fence()  # the register writes above precede the async MMA's reads
                cute.gemm(tiled_mma, acc, tCrA[None, None, kb], tCrB[None, None, kb, cons.index], acc)
                cute.nvgpu.warpgroup.commit_group()
            cons.advance()
            # The wait before the last block drained every group of the previous k-tile: its smem
            # stage (B read by descriptor) can be refilled.
            if k_tile > 0:
                pipe.consumer_release(rel)
                rel.advance()
                if warp_idx == 0:
                    if prod.count < k_tiles:
                        produce(pipe, prod, tma_a, tAgA, tAsA, tma_b, tBgB, tBsB)
                        prod.advance()
        cute.nvgpu.warpgroup.wait_group(0)

        cute.arch.sync_threads()
        epilogue_bias_store(acc, mBias, mC, gC, cC, sC, thr_mma, copy_C, tidx, self.dtype)

    # ------------------------------------------------------------------ helpers (trace time)

    def _transform(self, tCrA, kb: int, col0, chunks, sCoef, group_size, last_group):
        """F on k-block ``kb`` of the A fragment; ``col0`` = global column of its first element."""
        cfg = self.cfg
        step = 16 if cfg.group_align >= 16 else 8

        def get_set(chunk: int):
            group = cutlass.min((col0 + (chunk * 8 // step) * step) // group_size, last_group)
            return coef_set(sCoef, group, cfg.m, cfg.n)

        apply_rational(tCrA[None, None, kb], chunks if step == 8 else [0] * len(chunks), get_set,
                       cfg.form, self.dtype)
