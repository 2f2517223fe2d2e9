"""Fused GR-KAN forward for Hopper (sm_90a), persistent and warp-specialized: F applied once per
element per CTA tile by a transform warpgroup, overlapped with the consumers' SS-WGMMAs.

``y[M, N] = F(x)[M, K] @ W[N, K]^T + bias[N]``; F(x) never reaches global memory.

Roles (512 threads, ``setmaxnreg`` per warpgroup, see :data:`.ws_config.REGS`):

* warpgroup 0, **producer**: warp 0, one elected thread, issues the TMA loads of raw x (128 x 64)
  and W (bN x 64) k-tiles into the *raw* ring (``stages`` deep, 128B-swizzled); the other warps
  idle.  ``setmaxnreg.dec`` to 40.
* warpgroup 1, **transform**: thread ``t`` owns the 8-column chunk ``t % 8`` of rows
  ``t // 8 + 16 i`` (i < 8) of every k-tile: 128-bit load of 8 raw values from the raw stage,
  F in fp32 (:func:`fusedkat.ops.rational_math.forward` via :class:`~cutlass_kernels.dsl.DslMath`,
  Horner, one ``rcp.approx``), 128-bit store into the *transformed-A ring* (``ring`` deep).  Both
  rings use the same ``cute`` smem layout object (:func:`cutlass.utils.hopper_helpers.make_smem_layout_a`)
  and the copies are partitions of it, so the stores land exactly where the WGMMA descriptor reads.
  The thread's group is carried incrementally (64 = q group_size + r, found by subtraction once;
  per k-tile ``off += r; g += q + (off >= group_size); off -= ...``, branch-free): no division in
  any loop.  The coefficients of the group are read from the smem table (rows padded to 16 bytes,
  128-bit loads) once per k-tile.
* warpgroups 2-3, **consumers**: 64 rows each, SS-WGMMA 64 x bN x 16 from the transformed ring (A)
  and the raw ring's W stage (B), fp32 accumulators; epilogue ``acc + bias`` -> dtype, stored
  straight from registers (32-bit pairs; predicated only on tail tiles).  While the consumers run
  the epilogue, the producer and the transform already work on the next tile.

Persistent schedule: ``ctas`` CTAs (the launcher passes the SM count); CTA ``c`` takes the
contiguous tile range ``[c T / ctas, (c+1) T / ctas)`` of the ``T = ceil(M/128) ceil(N/bN)`` tiles
ordered N-fastest, so consecutive tiles of a CTA share their x rows (L2 hits).  Every role walks
the same sequence; the tile coordinates advance incrementally.

Protocol (phase bits live in ``PipelineState``; every role advances its states once per k-tile and
keeps them across tiles):

* raw ring (``PipelineTmaAsync``): full barrier = 1 producer arrive + TMA transaction bytes (x and
  W stage); empty barrier = **12 arrivals**: lane 0 of each of the 4 transform warps (after the
  warp's loads of the stage were consumed: ``sync_warp`` first) and of the 8 consumer warps (after
  the WGMMAs that read the W stage retired: released one k-tile late, after ``wait_group(1)``).
* transformed ring (``PipelineAsync``): full barrier = **128 arrivals**, every transform thread
  after its stores and its own ``fence.proxy.async.shared::cta`` (generic-proxy writes made
  visible to the async proxy that the WGMMA reads through); empty barrier = **256 arrivals**, every
  consumer thread once the WGMMAs that read the stage retired (one k-tile late, like the raw ring).
  The transform acquires a ring stage before it writes it.
* Order of releases per consumer k-tile: wait full(raw), wait full(ring), issue MMAs, commit,
  ``wait_group(1)``, release the *previous* k-tile's raw and ring stages.  After the last k-tile of
  a tile: ``wait_group(0)`` and release both last stages before the epilogue.

Tails: TMA zero-fills rows >= M and W rows >= N; F(0) != 0 lands only in rows that are not stored.
K % 64 == 0 (the launcher checks it).

Issue budget per k-tile and SM sub-partition (each has one transform warp and two consumer warps;
the build check's role counts, bf16 form A): 864 transform instructions (13.5 per element x 64) +
2 x 83 consumer instructions (4 of them HGMMA) = ~1030 issue cycles, against 128 x 192 x 64 / 2048 =
768 cycles of tensor-core work at bN = 192.  A static reading, not a measurement: issue-bound at
>= 1.34x the MMA time (cuBLAS reached ~70% of the MMA peak on the H100, i.e. ~1.43x), so the
non-panel kernel can at best match cuBLAS; the resident-panel variant (K <= 384) divides the
transform work by the number of N tiles.  bN = 256 (1024 MMA cycles) would balance it but does not
compile at 512 threads (see :mod:`.ws_config`).

Register budget (``ptxas`` via the build check; the cubin reports the launch cap 128 = 64K / 512,
and ptxas fits every role within it -- ``setmaxnreg`` re-partitions the register file at run time):
producer 40, transform 104, consumers 184 (64 x bN fp32 accumulator: 96 registers at bN=192, 64
at 128).  40 + 104 + 2 x 184 = 512.
"""

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.tensor_utils as tensor_utils
import cutlass.utils.hopper_helpers as sm90_utils

from fusedkat.ops import rational_math as rm

from ..dsl import DslMath
from .common import MAX_GROUPS, coef_set, dsl_dtype, fill_coef_table
from .sm90_common import make_tma_atoms, partition_tma, pipe_load
from .ws_config import BK, BM, NUM_THREADS, WsFwdConfig

_CHUNK = 8  # elements per transform vector (16 bytes)
_ROWS_PER_PASS = 16  # 128 transform threads = 16 rows x 8 chunks of one 64-wide k-tile


class RationalGemmFwdSm90Ws:
    """Call: ``(mA [M,K], mB [N,K], mC [M,N], mBias [N] f32, mNum (1|g, m+1) f32, mDen (g, n) f32,
    group_size, ctas, stream)``."""

    def __init__(self, cfg: WsFwdConfig):
        self.cfg = cfg
        self.dtype = dsl_dtype(cfg.dtype)
        self.bN = cfg.bn

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
        sA_staged = sm90_utils.make_smem_layout_a(a_layout, tile, self.dtype, cfg.stages)
        sT_staged = sm90_utils.make_smem_layout_a(a_layout, tile, self.dtype, cfg.ring)
        sB_staged = sm90_utils.make_smem_layout_b(b_layout, tile, self.dtype, cfg.stages)
        tma_a, tma_mA, tma_b, tma_mB = make_tma_atoms(mA, mB, sA_staged, sB_staged, tile)
        vec_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.dtype, num_bits_per_copy=128)
        copy_T = cute.make_tiled_copy_tv(
            vec_atom, cute.make_layout((_ROWS_PER_PASS, BK // _CHUNK), stride=(BK // _CHUNK, 1)),
            cute.make_layout((1, _CHUNK)))
        check_transform_partition(copy_T)
        self.kernel(tma_a, tma_mA, tma_b, tma_mB, mC, mBias, mNum, mDen, group_size, tiled_mma,
                    sA_staged, sT_staged, sB_staged, copy_T).launch(
            grid=[ctas, 1, 1], block=[NUM_THREADS, 1, 1], cluster=(1, 1, 1), stream=stream)

    @cute.kernel
    def kernel(self, tma_a: cute.CopyAtom, mA: cute.Tensor, tma_b: cute.CopyAtom, mB: cute.Tensor,
               mC: cute.Tensor, mBias: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor,
               group_size: cutlass.Int32, tiled_mma: cute.TiledMma, sA_staged: cute.ComposedLayout,
               sT_staged: cute.ComposedLayout, sB_staged: cute.ComposedLayout, copy_T: cute.TiledCopy):
        cfg = self.cfg
        P = (cfg.num_coefs + 3) // 4 * 4  # table rows padded to 16 bytes: 128-bit coefficient loads
        stages, ring = cfg.stages, cfg.ring
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
            raw_bars: cute.struct.MemRange[cutlass.Int64, stages * 2]
            ring_bars: cute.struct.MemRange[cutlass.Int64, ring * 2]
            coef: cute.struct.Align[cute.struct.MemRange[cutlass.Float32, MAX_GROUPS * P], 16]
            a: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sA_staged)], 1024]
            t: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sT_staged)], 1024]
            b: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sB_staged)], 1024]

        smem = cutlass.memory.SmemAllocator()
        st = smem.allocate(Storage)
        sA = st.a.get_tensor(sA_staged.outer, swizzle=sA_staged.inner)
        sT = st.t.get_tensor(sT_staged.outer, swizzle=sT_staged.inner)
        sB = st.b.get_tensor(sB_staged.outer, swizzle=sB_staged.inner)
        sCoef = st.coef.get_tensor(cute.make_layout((MAX_GROUPS, P), stride=(P, 1)))

        tx_bytes = cute.size_in_bytes(self.dtype, cute.slice_(sA_staged, (None, None, 0))) + \
            cute.size_in_bytes(self.dtype, cute.slice_(sB_staged, (None, None, 0)))
        raw = pipeline.PipelineTmaAsync.create(
            barrier_storage=st.raw_bars.data_ptr(), num_stages=stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 12),  # 4 + 8 warps, lane 0
            tx_count=tx_bytes, cta_layout_vmnk=cute.make_layout((1, 1, 1, 1)), defer_sync=True)
        tring = pipeline.PipelineAsync.create(
            barrier_storage=st.ring_bars.data_ptr(), num_stages=ring,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 128),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 256), defer_sync=True)
        fill_coef_table(sCoef, mNum, mDen, tidx, NUM_THREADS, cfg.m, cfg.n)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()  # barriers initialised, coefficient table visible to all roles

        # ------------------------------------------------------------ persistent schedule
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
                prod = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, stages)
                m_t, n_t = m_first, n_first
                for _ in cutlass.range(t_begin, t_end, unroll=1):
                    gA = cute.local_tile(mA, tiler=tiler, coord=(m_t, n_t, None), proj=(1, None, 1))
                    gB = cute.local_tile(mB, tiler=tiler, coord=(m_t, n_t, None), proj=(None, 1, 1))
                    tAsA, tAgA, tBsB, tBgB = partition_tma(tma_a, tma_b, sA, sB, gA, gB)
                    for kt in cutlass.range(k_tiles, unroll=1):
                        pipe_load(raw, prod, tma_a, tAgA, tAsA, tma_b, tBgB, tBsB, kt)
                        prod.advance()
                    n_t += 1
                    if n_t == tiles_n:
                        n_t = 0
                        m_t += 1
                raw.producer_tail(prod)
        elif wg == 1:
            cute.arch.setmaxregister_decrease(r_tran)  # r_tran < LAUNCH_REGS (ws_config)
            self._transform_role(tidx - 128, raw, tring, sA, sT, sCoef, copy_T, group_size,
                                 t_begin, t_end, k_tiles)
        else:
            cute.arch.setmaxregister_increase(r_cons)
            self._consumer_role(tidx - 256, raw, tring, sT, sB, mC, mBias, tiled_mma,
                                t_begin, t_end, m_first, n_first, tiles_n, k_tiles)

    # ------------------------------------------------------------------ transform warpgroup

    @cute.jit
    def _transform_role(self, ttid: cutlass.Int32, raw, tring, sA: cute.Tensor, sT: cute.Tensor,
                        sCoef: cute.Tensor, copy_T: cute.TiledCopy, group_size: cutlass.Int32,
                        t_begin: cutlass.Int32, t_end: cutlass.Int32, k_tiles: cutlass.Int32):
        cfg = self.cfg
        thr = copy_T.get_slice(ttid)
        tXsA = thr.partition_S(sA)  # ((1, 8), 8 row passes, 1, stages)
        tXsT = thr.partition_D(sT)  # same shape over the transformed ring
        # The thread's first column col0 = g0 * group_size + off0 and the k-tile step
        # BK = q * group_size + r, found by subtraction (once, outside the loops); per k-tile the
        # group then advances by q or q + 1, branch-free.
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
        rc = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.stages)
        wp = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, cfg.ring)
        for _ in cutlass.range(t_begin, t_end, unroll=1):
            g = g0
            off = off0
            for _kt in cutlass.range(k_tiles, unroll=1):
                raw.consumer_wait(rc)
                tring.producer_acquire(wp)
                self._transform_ktile(tXsA, tXsT, rc.index, wp.index, sCoef, g)
                tring.producer_commit(wp)
                cute.arch.sync_warp()  # every lane of the warp has its raw values in registers
                raw.consumer_release(rc)
                rc.advance()
                wp.advance()
                off += r
                wrap = off >= group_size
                g += q + cutlass.select_(wrap, 1, 0)
                off -= cutlass.select_(wrap, group_size, 0)

    @cute.jit
    def _transform_ktile(self, tXsA: cute.Tensor, tXsT: cute.Tensor, src: cutlass.Int32, dst: cutlass.Int32,
                         sCoef: cute.Tensor, g: cutlass.Int32):
        """F on this thread's 8 x 8 values of raw stage ``src`` into transformed stage ``dst``
        (group ``g``), then the thread's ``fence.proxy.async`` (the caller arrives after it)."""
        cfg = self.cfg
        a, b = coef_set(sCoef, g, cfg.m, cfg.n)
        for i in cutlass.range_constexpr(cute.size(tXsA, mode=[1])):
            v = cute.make_fragment_like(tXsA[None, i, 0, 0])
            cute.autovec_copy(tXsA[None, i, 0, src], v)
            if cutlass.const_expr(not cfg.identity):
                xs = self._unpack(v)
                # one large-|x| test per vector (rational_math.forward_many), not per element
                # (all 128 transform threads run this: the test is voted per warp, a uniform branch)
                vals = [xs[j] for j in range(cute.size(v))]
                if cutlass.const_expr(cfg.mma):
                    fs = rm.forward_many(a, b, vals, cfg.form, DslMath, warp_uniform=True)
                else:
                    # the _nomma diagnostic: ptxas predicates the guarded exact path into this
                    # variant's loop (measured: 29.9 slots/el), which would misstate the ALU floor;
                    # it evaluates F directly instead (~1.4 slots/el under the full kernel's 14.9)
                    fs = [rm.forward_direct(a, b, x, cfg.form, DslMath)[0] for x in vals]
                for j in cutlass.range_constexpr(cute.size(v)):
                    v[j] = fs[j].to(self.dtype)
            cute.autovec_copy(v, tXsT[None, i, 0, dst])
        # this thread's generic-proxy stores -> visible to the WGMMA (async proxy)
        cute.arch.fence_view_async_shared()

    @cute.jit
    def _unpack(self, v: cute.Tensor) -> cute.Tensor:
        """The 8 values of ``v`` as an fp32 fragment.  bf16 -> fp32 is a bit shift: per 32-bit word
        ``w`` the low value is ``w << 16`` and the high one ``w & 0xffff0000`` (one ALU op each; the
        generic conversion spends two on the high half).  fp16 goes through the generic path."""
        xs = cute.make_rmem_tensor(cute.make_layout(cute.size(v)), cutlass.Float32)
        if cutlass.const_expr(self.cfg.dtype == "bf16"):
            words = cute.recast_tensor(v, cutlass.Uint32)
            bits = cute.recast_tensor(xs, cutlass.Uint32)
            for w in cutlass.range_constexpr(cute.size(words)):
                bits[2 * w] = words[w] << 16
                bits[2 * w + 1] = words[w] & cutlass.Uint32(0xFFFF0000)
        else:
            for j in cutlass.range_constexpr(cute.size(v)):
                xs[j] = v[j].to(cutlass.Float32)
        return xs

    # ------------------------------------------------------------------ consumer warpgroups

    @cute.jit
    def _consumer_role(self, ctid: cutlass.Int32, raw, tring, sT: cute.Tensor, sB: cute.Tensor,
                       mC: cute.Tensor, mBias: cute.Tensor, tiled_mma: cute.TiledMma,
                       t_begin: cutlass.Int32, t_end: cutlass.Int32, m_first: cutlass.Int32,
                       n_first: cutlass.Int32, tiles_n: cutlass.Int32, k_tiles: cutlass.Int32):
        cfg = self.cfg
        tiler = (BM, self.bN, BK)
        thr_mma = tiled_mma.get_slice(ctid)
        tCrA = tiled_mma.make_fragment_A(thr_mma.partition_A(sT))  # descriptors, per ring stage
        tCrB = tiled_mma.make_fragment_B(thr_mma.partition_B(sB))  # descriptors, per raw stage
        num_kb = cute.size(tCrA, mode=[2])
        gC0 = cute.local_tile(mC, tiler=tiler, coord=(0, 0, None), proj=(1, 1, None))
        acc = cute.make_rmem_tensor(thr_mma.partition_C(gC0).shape, cutlass.Float32)
        rc = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.stages)
        rr = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.stages)  # release
        tc = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.ring)
        tr = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.ring)  # release
        m_t, n_t = m_first, n_first
        for _ in cutlass.range(t_begin, t_end, unroll=1):
            acc.fill(0.0)
            tiled_mma.set(cute.nvgpu.warpgroup.Field.ACCUMULATE, True)
            for kt in cutlass.range(k_tiles, unroll=1):
                raw.consumer_wait(rc)
                tring.consumer_wait(tc)
                if cutlass.const_expr(cfg.mma):
                    cute.nvgpu.warpgroup.fence()
                    for kb in cutlass.range_constexpr(num_kb):
                        cute.gemm(tiled_mma, acc, tCrA[None, None, kb, tc.index], tCrB[None, None, kb, rc.index], acc)
                    cute.nvgpu.warpgroup.commit_group()
                    # the previous k-tile's MMAs retired: its stages can be refilled
                    cute.nvgpu.warpgroup.wait_group(1)
                if kt > 0:
                    raw.consumer_release(rr)
                    tring.consumer_release(tr)
                    rr.advance()
                    tr.advance()
                rc.advance()
                tc.advance()
            if cutlass.const_expr(cfg.mma):
                cute.nvgpu.warpgroup.wait_group(0)
            raw.consumer_release(rr)
            tring.consumer_release(tr)
            rr.advance()
            tr.advance()
            self._epilogue(acc, mC, mBias, thr_mma, m_t, n_t)
            n_t += 1
            if n_t == tiles_n:
                n_t = 0
                m_t += 1

    @cute.jit
    def _epilogue(self, acc: cute.Tensor, mC: cute.Tensor, mBias: cute.Tensor, thr_mma,
                  m_t: cutlass.Int32, n_t: cutlass.Int32):
        """``acc + bias`` -> dtype -> y, straight from the accumulator registers (column pairs)."""
        tiler = (BM, self.bN, BK)
        gC = cute.local_tile(mC, tiler=tiler, coord=(m_t, n_t, None), proj=(1, 1, None))
        cC = cute.local_tile(cute.make_identity_tensor(mC.layout.shape), tiler=tiler, coord=(m_t, n_t, None),
                             proj=(1, 1, None))
        tCgC = thr_mma.partition_C(gC)
        tCcC = thr_mma.partition_C(cC)
        rows, cols = mC.shape[0], mC.shape[1]
        full = (m_t + 1) * BM <= rows and (n_t + 1) * self.bN <= cols
        out = cute.make_fragment_like(acc, self.dtype)
        if full:
            for i in cutlass.range_constexpr(cute.size(acc)):  # (unroll_full put 8 bytes on the stack)
                out[i] = (acc[i] + mBias[tCcC[i][1]]).to(self.dtype)
            cute.autovec_copy(out, tCgC)
        else:
            last_col = cols - 1
            for i in cutlass.range_constexpr(cute.size(acc)):  # (unroll_full put 8 bytes on the stack)
                out[i] = (acc[i] + mBias[cutlass.min(tCcC[i][1], last_col)]).to(self.dtype)
            for i in cutlass.range_constexpr(cute.size(acc)):  # (unroll_full put 8 bytes on the stack)
                if tCcC[i][0] < rows and tCcC[i][1] < cols:
                    tCgC[i] = out[i]


def check_transform_partition(copy_T) -> None:
    """Trace time: transform thread ``t`` owns columns ``8 (t % 8) .. + 7`` of rows ``t // 8 + 16 i``
    of the 128 x 64 k-tile -- what the kernel's group arithmetic assumes.  Raises otherwise."""
    ident = cute.make_identity_tensor((BM, BK))
    for t in (0, 1, 7, 8, 37, 127):
        part = copy_T.get_slice(t).partition_S(ident)
        for i in range(cute.size(part, mode=[1])):
            for j in range(_CHUNK):
                row, col = part[j, i, 0]
                if (int(row), int(col)) != (t // 8 + _ROWS_PER_PASS * i, (t % 8) * _CHUNK + j):
                    raise AssertionError(f"transform partition: thread {t} value {j} pass {i} at {(row, col)}")
