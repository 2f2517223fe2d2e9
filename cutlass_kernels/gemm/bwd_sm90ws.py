"""GR-KAN dgrad for Hopper (sm_90a), persistent and warp-specialized, whose epilogue writes
everything the backward needs besides the weight-gradient GEMM.

``G = dY @ W`` ``[M, K]`` (reduction over N), then in one pass over the accumulator:

* ``dx = G * F'(x)`` in x's dtype (``mC``);
* the fp32 coefficient partials ``ws[tile_m * 8 + warp, chunk, :]`` of ``G * dF/da_i`` and
  ``G * dF/db_j`` (one writer per slot, fixed-order warp reduction: :mod:`.bwd_epilogue`);
* ``F(x)`` into ``mF`` ``[M, K]``, a view with row stride ``K + 8`` of the launcher's
  ``[M, K + 8]`` buffer ``[F(x) | 1 0 ... 0]`` (the launcher writes the 8 tail columns), so one
  cuBLAS GEMM ``dY^T [F(x) | 1]`` then gives dW and the bias gradient together.

Roles (384 threads, ``setmaxnreg`` per warpgroup):

* warpgroup 0, **producer** (``setmaxnreg.dec`` to 40): warp 0, one elected thread, issues the
  TMA loads of dY (128 x 64, K-major) and W^T (128 x 64, MN-major) k-tiles into a ``stages``-deep
  128B-swizzled ring (``PipelineTmaAsync``: full = 1 arrive + transaction bytes; empty = 8
  consumer-warp arrivals).  It runs ahead across tiles, so the next tile's loads overlap the
  consumers' epilogue.
* warpgroups 1-2, **consumers** (``setmaxnreg.inc`` to 232): 64 rows each, SS-WGMMA 64 x 128 x 16,
  fp32 accumulators; a stage is released one k-tile late (after ``wait_group(1)``), the last one
  after ``wait_group(0)``, before the epilogue.  The two warpgroups work *cooperatively* on one
  128 x 128 tile; they are not ping-ponged (one warpgroup's epilogue does not overlap the other's
  main loop): only the producer runs ahead during the epilogue.

Persistent schedule as in :mod:`.fwd_sm90ws`: ``ctas`` CTAs, CTA ``c`` takes tiles
``[c T / ctas, (c+1) T / ctas)`` ordered K-fastest (consecutive tiles share their dY rows).

dx and F go straight from registers to global memory (the accumulator's column pairs; no smem
staging, which the producer's ring would have to give up).  Tails: TMA zero-fills; the epilogue
predicates rows >= M and columns >= K.  K % 8 == 0, N % 8 == 0, (K/g) % 8 == 0 (launcher checks).
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.tensor_utils as tensor_utils
import cutlass.utils.hopper_helpers as sm90_utils

from .bwd_epilogue import chunk_groups, dgrad_epilogue
from .bwd_sm80 import BwdConfig, dsl_dtype
from .sm90_common import create_tma_pipeline, make_tma_atoms, partition_tma, pipe_load

#: Threads: warpgroup 0 producer, 1-2 consumers.
NUM_THREADS = 384
CONSUMER_THREADS = 256
#: ``setmaxnreg`` targets (producer, consumer): 40 + 2 x 232 = 504 <= 512 per 128-thread slot.
REGS = (40, 232)


class RationalDgradSm90Ws:
    """Call: ``(mA dY [M,N], mB W^T view [K,N], mC dx [M,K], mX x [M,K], mF F(x) [M,K] (row stride
    K+8), mWs [S, K/8, m+1+n] f32, mNum (1|g, m+1) f32, mDen (g, n) f32, group_size, ctas, stream)``."""

    def __init__(self, cfg: BwdConfig):
        if cfg.kernel not in ("sm90ws", "sm90wspp") or cfg.mode != "dgrad":
            raise ValueError("RationalDgradSm90Ws takes a dgrad BwdConfig with kernel='sm90ws' or 'sm90wspp'")
        self.cfg = cfg
        self.dtype = dsl_dtype(cfg.ab_dtype)
        _, self.bN, self.bK = cfg.tile
        # ping-pong: each consumer warpgroup owns whole 64-row tiles (alternate tiles of the CTA)
        self.pingpong = cfg.kernel == "sm90wspp"
        self.bM = 64 if self.pingpong else 128
        self.cons_threads = 128 if self.pingpong else CONSUMER_THREADS
        self.warps_m = self.bM // 16

    @cute.jit
    def __call__(self, mA: cute.Tensor, mB: cute.Tensor, mC: cute.Tensor, mX: cute.Tensor, mF: cute.Tensor,
                 mWs: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor, group_size: cutlass.Int32,
                 ctas: cutlass.Int32, stream):
        cfg = self.cfg
        a_layout = tensor_utils.LayoutEnum.from_tensor(mA)
        b_layout = tensor_utils.LayoutEnum.from_tensor(mB)
        tiled_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, a_layout.sm90_mma_major_mode(), b_layout.sm90_mma_major_mode(),
            cutlass.Float32, (self.bM // 64, 1, 1), tiler_mn=(64, self.bN))
        tile = (self.bM, self.bN, self.bK)
        sA_staged = sm90_utils.make_smem_layout_a(a_layout, tile, self.dtype, cfg.stages)
        sB_staged = sm90_utils.make_smem_layout_b(b_layout, tile, self.dtype, cfg.stages)
        tma_a, tma_mA, tma_b, tma_mB = make_tma_atoms(mA, mB, sA_staged, sB_staged, tile)
        self.kernel(tma_a, tma_mA, tma_b, tma_mB, mC, mX, mF, mWs, mNum, mDen, group_size, tiled_mma,
                    sA_staged, sB_staged).launch(
            grid=[ctas, 1, 1], block=[NUM_THREADS, 1, 1], cluster=(1, 1, 1), stream=stream)

    @cute.kernel
    def kernel(self, tma_a: cute.CopyAtom, mA: cute.Tensor, tma_b: cute.CopyAtom, mB: cute.Tensor,
               mC: cute.Tensor, mX: cute.Tensor, mF: cute.Tensor, mWs: cute.Tensor, mNum: cute.Tensor,
               mDen: cute.Tensor, group_size: cutlass.Int32, tiled_mma: cute.TiledMma,
               sA_staged: cute.ComposedLayout, sB_staged: cute.ComposedLayout):
        cfg = self.cfg
        stages = cfg.stages
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = warp_idx // 4
        if warp_idx == 0:
            cute.nvgpu.cpasync.prefetch_descriptor(tma_a)
            cute.nvgpu.cpasync.prefetch_descriptor(tma_b)
        tidx, _, _ = cute.arch.thread_idx()
        cta, _, _ = cute.arch.block_idx()
        ctas, _, _ = cute.arch.grid_dim()

        @cute.struct
        class Storage:
            barriers: cute.struct.MemRange[cutlass.Int64, stages * 2]
            a: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sA_staged)], 1024]
            b: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sB_staged)], 1024]

        smem = cutlass.memory.SmemAllocator()
        st = smem.allocate(Storage)
        sA = st.a.get_tensor(sA_staged.outer, swizzle=sA_staged.inner)
        sB = st.b.get_tensor(sB_staged.outer, swizzle=sB_staged.inner)
        pipe = create_tma_pipeline(st.barriers.data_ptr(), stages, self.cons_threads, self.dtype,
                                   sA_staged, sB_staged)
        cute.arch.sync_threads()  # barrier init visible to all roles

        tiles_m = (mC.shape[0] + self.bM - 1) // self.bM
        tiles_n = (mC.shape[1] + self.bN - 1) // self.bN
        total = tiles_m * tiles_n
        t_begin = cta * total // ctas
        t_end = (cta + 1) * total // ctas
        m_first = t_begin // tiles_n
        n_first = t_begin - m_first * tiles_n
        k_tiles = (mA.shape[1] + self.bK - 1) // self.bK
        tiler = (self.bM, self.bN, self.bK)

        if wg == 0:
            cute.arch.setmaxregister_decrease(REGS[0])
            if warp_idx == 0:
                prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, stages)
                m_t, n_t = m_first, n_first
                for _ in cutlass.range(t_begin, t_end, unroll=1):
                    gA = cute.local_tile(mA, tiler=tiler, coord=(m_t, n_t, None), proj=(1, None, 1))
                    gB = cute.local_tile(mB, tiler=tiler, coord=(m_t, n_t, None), proj=(None, 1, 1))
                    tAsA, tAgA, tBsB, tBgB = partition_tma(tma_a, tma_b, sA, sB, gA, gB)
                    for kt in cutlass.range(k_tiles, unroll=1):
                        pipe_load(pipe, prod, tma_a, tAgA, tAsA, tma_b, tBgB, tBsB, kt)
                        prod.advance()
                    n_t += 1
                    if n_t == tiles_n:
                        n_t = 0
                        m_t += 1
                pipe.producer_tail(prod)
        else:
            cute.arch.setmaxregister_increase(REGS[1])
            ctid = tidx - 128
            first = cutlass.Int32(0)
            step = 1
            if cutlass.const_expr(self.pingpong):
                first = ctid // 128  # warpgroup 2 starts one tile later
                ctid = ctid % 128
                step = 2
            self._consumer_role(ctid, first, step, pipe, sA, sB, mC, mX, mF, mWs, mNum, mDen, group_size, tiled_mma,
                                t_begin, t_end, m_first, n_first, tiles_n, k_tiles)

    @cute.jit
    def _consumer_role(self, ctid: cutlass.Int32, first: cutlass.Int32, step: cutlass.Constexpr, pipe, sA: cute.Tensor, sB: cute.Tensor, mC: cute.Tensor,
                       mX: cute.Tensor, mF: cute.Tensor, mWs: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor,
                       group_size: cutlass.Int32, tiled_mma: cute.TiledMma, t_begin: cutlass.Int32,
                       t_end: cutlass.Int32, m_first: cutlass.Int32, n_first: cutlass.Int32,
                       tiles_n: cutlass.Int32, k_tiles: cutlass.Int32):
        cfg = self.cfg
        tiler = (self.bM, self.bN, self.bK)
        warps_m = self.warps_m
        thr_mma = tiled_mma.get_slice(ctid)
        tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sA))  # smem descriptors, per stage
        tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))
        num_kb = cute.size(tCrA, mode=[2])
        gC0 = cute.local_tile(mC, tiler=tiler, coord=(0, 0, None), proj=(1, 1, None))
        acc = cute.make_rmem_tensor(thr_mma.partition_C(gC0).shape, cutlass.Float32)
        groups = chunk_groups(tiled_mma, self.bM, self.bN, self.cons_threads, warps_m)  # trace time
        cons = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.stages)
        rel = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.stages)
        lane = ctid % 32
        warp = ctid // 32
        chunk_of = self._chunk_offsets(tiled_mma, groups)  # trace time: chunk (in the tile) per group entry
        last_group = mDen.shape[0] - 1
        # The group of the tile's first column n_t * bN, carried without division (as the forward's
        # transform does): bN = q * group_size + r found by subtraction once, then per tile step
        # ``off += r; g += q + (off >= group_size)``; K/g is a multiple of 8, so the chunks of a tile
        # advance the same way by 8 columns.
        q = cutlass.Int32(0)
        r = cutlass.Int32(self.bN)
        while r >= group_size:
            q += 1
            r -= group_size
        g_b = cutlass.Int32(0)
        off_b = cutlass.Int32(0)
        m_t, n_t = m_first, n_first
        if first > 0:  # ping-pong, second warpgroup: its first tile is the CTA's second
            n_t += 1
            if n_t == tiles_n:
                n_t = 0
                m_t += 1
            for _ in cutlass.range(k_tiles, unroll=1):  # the stages of the other warpgroup's tile
                cons.advance()
                rel.advance()
        for _ in cutlass.range(n_t, unroll=1):
            off_b += r
            wrap = off_b >= group_size
            g_b += q + cutlass.select_(wrap, 1, 0)
            off_b -= cutlass.select_(wrap, group_size, 0)
        for _ in cutlass.range(t_begin + first, t_end, step, unroll=1):
            g_chunk = [g_b]
            off = off_b
            g = g_b
            for _j in cutlass.range_constexpr(1, self.bN // 8):
                off += 8
                wrap = off >= group_size
                g += cutlass.select_(wrap, 1, 0)
                off -= cutlass.select_(wrap, group_size, 0)
                g_chunk.append(g)
            chunk_group = [cutlass.min(g_chunk[c], last_group) for c in chunk_of]
            acc.fill(0.0)
            tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
            for kt in cutlass.range(k_tiles, unroll=1):
                pipe.consumer_wait(cons)
                cute.nvgpu.warpgroup.fence()
                for kb in cutlass.range_constexpr(num_kb):
                    cute.gemm(tiled_mma, acc, tCrA[None, None, kb, cons.index], tCrB[None, None, kb, cons.index], acc)
                cute.nvgpu.warpgroup.commit_group()
                cute.nvgpu.warpgroup.wait_group(1)  # the previous k-tile's MMAs retired
                if kt > 0:
                    pipe.consumer_release(rel)
                    rel.advance()
                cons.advance()
            cute.nvgpu.warpgroup.wait_group(0)
            pipe.consumer_release(rel)
            rel.advance()
            self._epilogue(acc, thr_mma, mC, mX, mF, mWs, mNum, mDen, group_size, m_t, n_t,
                           m_t * warps_m + warp % warps_m, lane, groups, chunk_group)
            for _s in cutlass.range_constexpr(step):  # next tile of this warpgroup
                n_t += 1
                off_b += r
                wrap_b = off_b >= group_size
                g_b += q + cutlass.select_(wrap_b, 1, 0)
                off_b -= cutlass.select_(wrap_b, group_size, 0)
                if n_t == tiles_n:
                    n_t = 0
                    m_t += 1
                    g_b = cutlass.Int32(0)
                    off_b = cutlass.Int32(0)
            if cutlass.const_expr(self.pingpong):
                for _ in cutlass.range(k_tiles, unroll=1):  # skip the other warpgroup's tile
                    cons.advance()
                    rel.advance()

    def _chunk_offsets(self, tiled_mma, groups) -> list:
        """Trace time: the 8-column chunk (within the tile) of each entry of ``groups``; the same
        for every consumer warp (WGMMA warps differ by rows only), which is asserted."""
        ident = cute.make_identity_tensor((self.bM, self.bN))
        ref = tiled_mma.get_slice(0).partition_C(ident)
        out = [int(ref[idx[0]][1]) // 8 for idx in groups]
        for w in range(self.cons_threads // 32):
            part = tiled_mma.get_slice(32 * w + 31).partition_C(ident)
            if [int(part[idx[0]][1]) // 8 for idx in groups] != out:
                raise AssertionError(f"accumulator layout: warp {w} holds other chunks than warp 0")
        return out

    @cute.jit
    def _epilogue(self, acc: cute.Tensor, thr_mma, mC: cute.Tensor, mX: cute.Tensor, mF: cute.Tensor,
                  mWs: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor, group_size: cutlass.Int32,
                  m_t: cutlass.Int32, n_t: cutlass.Int32, ws_row: cutlass.Int32, lane: cutlass.Int32,
                  groups: cutlass.Constexpr, chunk_group):
        """dx, the partials and F(x) of tile ``(m_t, n_t)``, straight from the accumulator."""
        cfg = self.cfg
        tiler = (self.bM, self.bN, self.bK)
        coord = (m_t, n_t, None)
        gC = cute.local_tile(mC, tiler=tiler, coord=coord, proj=(1, 1, None))
        gX = cute.local_tile(mX, tiler=tiler, coord=coord, proj=(1, 1, None))
        gF = cute.local_tile(mF, tiler=tiler, coord=coord, proj=(1, 1, None))
        cC = cute.local_tile(cute.make_identity_tensor(mC.layout.shape), tiler=tiler, coord=coord, proj=(1, 1, None))
        tCcC = thr_mma.partition_C(cC)
        tCgC = thr_mma.partition_C(gC)
        dgrad_epilogue(acc, tCcC, thr_mma.partition_C(gX), mC, mWs, mNum, mDen, group_size, ws_row, lane,
                       groups, cfg.form, cfg.m, cfg.n, cfg.shared_numerator, tCgF=thr_mma.partition_C(gF),
                       chunk_group=chunk_group,
                       # the large-|x| guard as one warp-voted test per chunk (issue 20): the
                       # per-element guard put the 1/x path's reciprocals into this epilogue
                       # (126 issue slots per value, 3 MUFU.RCP each)
                       guard="vector")
        rows, cols = mC.shape[0], mC.shape[1]
        out = cute.make_fragment_like(acc, self.dtype)
        for i in cutlass.range_constexpr(cute.size(acc)):
            out[i] = acc[i].to(self.dtype)
        if (m_t + 1) * self.bM <= rows and (n_t + 1) * self.bN <= cols:
            cute.autovec_copy(out, tCgC)
        else:
            for i in cutlass.range_constexpr(cute.size(acc)):
                if cute.elem_less(tCcC[i][0], rows) and cute.elem_less(tCcC[i][1], cols):
                    tCgC[i] = out[i]

