"""The resident-panel variant of the warp-specialized sm_90a forward (K <= 384): the transformed
128 x K panel of x stays in shared memory while the CTA sweeps the N tiles of its m-tile, so F runs
once per element per CTA and m-tile instead of once per N tile (``WsFwdConfig(panel=True)``).

Same roles, schedule, epilogue and transform code as :mod:`.fwd_sm90ws`; what differs is the data
flow (``K <= 64 x panel_slots``, checked by the launcher):

* producer: x k-tiles go into their own TMA ring (``PANEL_X_STAGES`` deep) only when the CTA's tile
  enters a new m-tile; W k-tiles into the W ring (``stages`` deep) for every tile;
* x ring (``PipelineTmaAsync``): full = 1 arrive + the x stage's bytes; empty = **4 arrivals**,
  lane 0 of each transform warp after ``sync_warp``;
* W ring (``PipelineTmaAsync``): full = 1 arrive + the W stage's bytes; empty = **8 arrivals**, lane 0
  of each consumer warp once the WGMMAs that read it retired (one k-tile late, as in the base kernel);
* panel (``PipelineAsync`` of ``panel_slots`` stages, one per k-tile slot): the transform acquires
  slot after slot (128 arrivals on full, after each thread's ``fence.proxy.async``); the consumers
  wait on slot ``kt`` during the *first* N tile of an m-tile only, read the same slots (index
  ``base + kt`` mod ``panel_slots``) for the later N tiles, and release all ``K/64`` slots (256
  arrivals each) after the *last* N tile's WGMMAs retired.  With K/64 < ``panel_slots`` (K = 192:
  3 of 6) the transform already fills the next m-tile's panel while the consumers finish the
  current one.

Deadlock freedom: the producer blocks on the x ring only while the transform waits for panel slots,
which the consumers free after the W k-tiles of their current tile -- already issued, since the
producer issues a tile's W loads before the next tile's x loads.
"""

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.tensor_utils as tensor_utils
import cutlass.utils.hopper_helpers as sm90_utils

from .common import MAX_GROUPS, fill_coef_table
from .fwd_sm90ws import _CHUNK, _ROWS_PER_PASS, RationalGemmFwdSm90Ws, check_transform_partition
from .sm90_common import make_tma_atoms, partition_tma
from .ws_config import BK, BM, NUM_THREADS, PANEL_X_STAGES


class RationalGemmFwdSm90WsPanel(RationalGemmFwdSm90Ws):
    """Same call as :class:`~cutlass_kernels.gemm.fwd_sm90ws.RationalGemmFwdSm90Ws`; K <= 384."""

    @cute.jit
    def __call__(self, mA: cute.Tensor, mB: cute.Tensor, mC: cute.Tensor, mBias: cute.Tensor,
                 mNum: cute.Tensor, mDen: cute.Tensor, group_size: cutlass.Int32, ctas: cutlass.Int32,
                 stream):
        cfg = self.cfg
        a_layout = tensor_utils.LayoutEnum.from_tensor(mA)
        b_layout = tensor_utils.LayoutEnum.from_tensor(mB)
        tiled_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, a_layout.sm90_mma_major_mode(), b_layout.sm90_mma_major_mode(),
            cutlass.Float32, (2, 1, 1), tiler_mn=(64, self.bN))
        tile = (BM, self.bN, BK)
        sX_staged = sm90_utils.make_smem_layout_a(a_layout, tile, self.dtype, PANEL_X_STAGES)
        sP_staged = sm90_utils.make_smem_layout_a(a_layout, tile, self.dtype, cfg.panel_slots)
        sB_staged = sm90_utils.make_smem_layout_b(b_layout, tile, self.dtype, cfg.stages)
        tma_a, tma_mA, tma_b, tma_mB = make_tma_atoms(mA, mB, sX_staged, sB_staged, tile)
        vec_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.dtype, num_bits_per_copy=128)
        copy_T = cute.make_tiled_copy_tv(
            vec_atom, cute.make_layout((_ROWS_PER_PASS, BK // _CHUNK), stride=(BK // _CHUNK, 1)),
            cute.make_layout((1, _CHUNK)))
        check_transform_partition(copy_T)
        self.kernel(tma_a, tma_mA, tma_b, tma_mB, mC, mBias, mNum, mDen, group_size, tiled_mma,
                    sX_staged, sP_staged, sB_staged, copy_T).launch(
            grid=[ctas, 1, 1], block=[NUM_THREADS, 1, 1], cluster=(1, 1, 1), stream=stream)

    @cute.kernel
    def kernel(self, tma_a: cute.CopyAtom, mA: cute.Tensor, tma_b: cute.CopyAtom, mB: cute.Tensor,
               mC: cute.Tensor, mBias: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor,
               group_size: cutlass.Int32, tiled_mma: cute.TiledMma, sX_staged: cute.ComposedLayout,
               sP_staged: cute.ComposedLayout, sB_staged: cute.ComposedLayout, copy_T: cute.TiledCopy):
        cfg = self.cfg
        P = (cfg.num_coefs + 3) // 4 * 4
        stages, slots = cfg.stages, cfg.panel_slots
        r_prod, r_tran, r_cons = cfg.regs
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
            x_bars: cute.struct.MemRange[cutlass.Int64, PANEL_X_STAGES * 2]
            w_bars: cute.struct.MemRange[cutlass.Int64, stages * 2]
            p_bars: cute.struct.MemRange[cutlass.Int64, slots * 2]
            coef: cute.struct.Align[cute.struct.MemRange[cutlass.Float32, MAX_GROUPS * P], 16]
            x: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sX_staged)], 1024]
            p: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sP_staged)], 1024]
            b: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sB_staged)], 1024]

        smem = cutlass.memory.SmemAllocator()
        st = smem.allocate(Storage)
        sX = st.x.get_tensor(sX_staged.outer, swizzle=sX_staged.inner)
        sP = st.p.get_tensor(sP_staged.outer, swizzle=sP_staged.inner)
        sB = st.b.get_tensor(sB_staged.outer, swizzle=sB_staged.inner)
        sCoef = st.coef.get_tensor(cute.make_layout((MAX_GROUPS, P), stride=(P, 1)))

        one = cute.make_layout((1, 1, 1, 1))
        xpipe = pipeline.PipelineTmaAsync.create(
            barrier_storage=st.x_bars.data_ptr(), num_stages=PANEL_X_STAGES,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 4),  # transform warps, lane 0
            tx_count=cute.size_in_bytes(self.dtype, cute.slice_(sX_staged, (None, None, 0))),
            cta_layout_vmnk=one, defer_sync=True)
        wpipe = pipeline.PipelineTmaAsync.create(
            barrier_storage=st.w_bars.data_ptr(), num_stages=stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 8),  # consumer warps, lane 0
            tx_count=cute.size_in_bytes(self.dtype, cute.slice_(sB_staged, (None, None, 0))),
            cta_layout_vmnk=one, defer_sync=True)
        ppipe = pipeline.PipelineAsync.create(
            barrier_storage=st.p_bars.data_ptr(), num_stages=slots,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 128),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 256), defer_sync=True)
        fill_coef_table(sCoef, mNum, mDen, tidx, NUM_THREADS, cfg.m, cfg.n)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        tiles_m = (mC.shape[0] + BM - 1) // BM
        tiles_n = (mC.shape[1] + self.bN - 1) // self.bN
        total = tiles_m * tiles_n
        t_begin = cta * total // ctas
        t_end = (cta + 1) * total // ctas
        m_first = t_begin // tiles_n
        n_first = t_begin - m_first * tiles_n
        k_tiles = mA.shape[1] // BK
        tiler = (BM, self.bN, BK)

        if wg == 0:
            cute.arch.setmaxregister_decrease(r_prod)
            if warp_idx == 0:
                xp = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, PANEL_X_STAGES)
                wp = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, stages)
                m_t, n_t = m_first, n_first
                m_prev = cutlass.Int32(-1)
                for _ in cutlass.range(t_begin, t_end, unroll=1):
                    gA = cute.local_tile(mA, tiler=tiler, coord=(m_t, n_t, None), proj=(1, None, 1))
                    gB = cute.local_tile(mB, tiler=tiler, coord=(m_t, n_t, None), proj=(None, 1, 1))
                    tAsA, tAgA, tBsB, tBgB = partition_tma(tma_a, tma_b, sX, sB, gA, gB)
                    if m_t != m_prev:
                        for kt in cutlass.range(k_tiles, unroll=1):
                            load_one(xpipe, xp, tma_a, tAgA, tAsA, kt)
                            xp.advance()
                        m_prev = m_t
                    for kt in cutlass.range(k_tiles, unroll=1):
                        load_one(wpipe, wp, tma_b, tBgB, tBsB, kt)
                        wp.advance()
                    n_t += 1
                    if n_t == tiles_n:
                        n_t = 0
                        m_t += 1
                xpipe.producer_tail(xp)
                wpipe.producer_tail(wp)
        elif wg == 1:
            cute.arch.setmaxregister_decrease(r_tran)
            self._panel_transform_role(tidx - 128, xpipe, ppipe, sX, sP, sCoef, copy_T, group_size,
                                       t_begin, t_end, m_first, n_first, tiles_n, k_tiles)
        else:
            cute.arch.setmaxregister_increase(r_cons)
            self._panel_consumer_role(tidx - 256, wpipe, ppipe, sP, sB, mC, mBias, tiled_mma,
                                      t_begin, t_end, m_first, n_first, tiles_n, k_tiles)

    @cute.jit
    def _panel_transform_role(self, ttid: cutlass.Int32, xpipe, ppipe, sX: cute.Tensor, sP: cute.Tensor,
                              sCoef: cute.Tensor, copy_T: cute.TiledCopy, group_size: cutlass.Int32,
                              t_begin: cutlass.Int32, t_end: cutlass.Int32, m_first: cutlass.Int32,
                              n_first: cutlass.Int32, tiles_n: cutlass.Int32, k_tiles: cutlass.Int32):
        cfg = self.cfg
        thr = copy_T.get_slice(ttid)
        tXsX = thr.partition_S(sX)
        tXsP = thr.partition_D(sP)
        g0 = cutlass.Int32(0)
        off0 = (ttid % (BK // _CHUNK)) * _CHUNK
        while off0 >= group_size:
            g0 += 1
            off0 -= group_size
        q = cutlass.Int32(0)
        r = cutlass.Int32(BK)
        while r >= group_size:
            q += 1
            r -= group_size
        xc = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, PANEL_X_STAGES)
        pp = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, cfg.panel_slots)
        m_t, n_t = m_first, n_first
        m_prev = cutlass.Int32(-1)
        for _ in cutlass.range(t_begin, t_end, unroll=1):
            if m_t != m_prev:  # a new m-tile: transform its panel, k-tile by k-tile
                g = g0
                off = off0
                for _kt in cutlass.range(k_tiles, unroll=1):
                    xpipe.consumer_wait(xc)
                    ppipe.producer_acquire(pp)
                    self._transform_ktile(tXsX, tXsP, xc.index, pp.index, sCoef, g)
                    ppipe.producer_commit(pp)
                    cute.arch.sync_warp()
                    xpipe.consumer_release(xc)
                    xc.advance()
                    pp.advance()
                    off += r
                    wrap = off >= group_size
                    g += q + cutlass.select_(wrap, 1, 0)
                    off -= cutlass.select_(wrap, group_size, 0)
                m_prev = m_t
            n_t += 1
            if n_t == tiles_n:
                n_t = 0
                m_t += 1

    @cute.jit
    def _panel_consumer_role(self, ctid: cutlass.Int32, wpipe, ppipe, sP: cute.Tensor, sB: cute.Tensor,
                             mC: cute.Tensor, mBias: cute.Tensor, tiled_mma: cute.TiledMma,
                             t_begin: cutlass.Int32, t_end: cutlass.Int32, m_first: cutlass.Int32,
                             n_first: cutlass.Int32, tiles_n: cutlass.Int32, k_tiles: cutlass.Int32):
        cfg = self.cfg
        slots = cfg.panel_slots
        tiler = (BM, self.bN, BK)
        thr_mma = tiled_mma.get_slice(ctid)
        tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sP))  # descriptors, per panel slot
        tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))  # descriptors, per W stage
        num_kb = cute.size(tCrA, mode=[2])
        gC0 = cute.local_tile(mC, tiler=tiler, coord=(0, 0, None), proj=(1, 1, None))
        acc = cute.make_rmem_tensor(thr_mma.partition_C(gC0).shape, cutlass.Float32)
        wc = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.stages)
        wr = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.stages)
        pc = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, slots)
        pr = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, slots)
        m_t, n_t = m_first, n_first
        m_prev = cutlass.Int32(-1)
        base = cutlass.Int32(0)
        for t in cutlass.range(t_begin, t_end, unroll=1):
            first = m_t != m_prev  # the first N tile of this CTA's m-tile: wait for the panel slots
            if first:
                base = pc.index
            acc.fill(0.0)
            tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
            for kt in cutlass.range(k_tiles, unroll=1):
                wpipe.consumer_wait(wc)
                if first:
                    ppipe.consumer_wait(pc)
                    pc.advance()
                slot = base + kt
                if slot >= slots:
                    slot -= slots
                if cutlass.const_expr(cfg.mma):
                    cute.nvgpu.warpgroup.fence()
                    for kb in cutlass.range_constexpr(num_kb):
                        cute.gemm(tiled_mma, acc, tCrA[None, None, kb, slot], tCrB[None, None, kb, wc.index], acc)
                    cute.nvgpu.warpgroup.commit_group()
                    cute.nvgpu.warpgroup.wait_group(1)
                if kt > 0:
                    wpipe.consumer_release(wr)
                    wr.advance()
                wc.advance()
            if cutlass.const_expr(cfg.mma):
                cute.nvgpu.warpgroup.wait_group(0)
            wpipe.consumer_release(wr)
            wr.advance()
            # the last N tile of the m-tile in this CTA's range: free the panel for the next one
            if n_t + 1 == tiles_n or t + 1 == t_end:
                for _kt in cutlass.range(k_tiles, unroll=1):
                    ppipe.consumer_release(pr)
                    pr.advance()
            self._epilogue(acc, mC, mBias, thr_mma, m_t, n_t)
            m_prev = m_t
            n_t += 1
            if n_t == tiles_n:
                n_t = 0
                m_t += 1


@cute.jit
def load_one(pipe, state, atom: cute.CopyAtom, src, dst, kt: cutlass.Int32):
    """Acquire stage ``state.index`` of ``pipe`` and start the TMA load of k-tile ``kt`` into it."""
    pipe.producer_acquire(state)
    cute.copy(atom, src[None, kt], dst[None, state.index], tma_bar_ptr=pipe.producer_get_barrier(state))
