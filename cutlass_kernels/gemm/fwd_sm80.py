"""Fused GR-KAN forward GEMM for sm_80-class GPUs (sm_80/86/89, runs on sm_90 too), CuTe DSL.

``y[M, N] = F(x)[M, K] @ W[N, K]^T + bias[N]`` in ONE kernel; F(x) never reaches memory.

Mainloop: cp.async multistage (gmem -> smem, ``stages`` buffers), ldmatrix (smem -> registers, one
16-wide k-block ahead), mma.sync m16n8k16 with fp32 accumulation.  The prologue runs on the A
register fragment: right after a k-block's ldmatrix, and issued after the MMAs of the previous
k-block so that the FP32 pipe works while the tensor cores do, each A value is converted to fp32,
passed through :func:`fusedkat.ops.rational_math.forward` (Horner, ``rcp.approx``) with the
coefficients of its group, and converted back to bf16/fp16.  The group of a value is constant over
an aligned 8-column chunk (``(K/g) % 8 == 0``); the coefficients come from a ``(MAX_GROUPS, m+1+n)``
fp32 table in shared memory, filled once per CTA, and are read once per k-block half (or once per
k-block / k-tile when ``group_align`` allows).

Epilogue: ``acc + bias`` (bias in fp32), converted to the output dtype, staged through swizzled
shared memory and written with 128-bit predicated stores.

Shapes: M arbitrary (predicated rows), N % 8 == 0 (predicated 8-column vectors), K % bK == 0 with
bK >= 32 (the launcher picks bK; K is never predicated).  Zero-filled A rows of a ragged M tile become F(0) =
a_0, which only reach output rows that are never stored; zero-filled B rows likewise only reach
unstored columns.
"""

import cutlass
import cutlass.cute as cute

from fusedkat.ops import rational_math as rm

from ..dsl import DslMath
from .common import (MAX_GROUPS, FwdConfig, a_value_chunks, apply_rational, coef_set, dsl_dtype,
                     epilogue_bias_store, fill_coef_table, rowmajor_tiled_copy, smem_layout_kmajor, smem_layout_rowmajor)


class RationalGemmFwdSm80:
    """Compile with ``cute.compile(obj, mA, mB, mC, mBias, mNum, mDen, group_size, stream)``.

    mA x ``(M, K)`` K-contiguous; mB W ``(N, K)`` K-contiguous; mC y ``(M, N)`` N-contiguous;
    mBias ``(N,)`` fp32; mNum ``(1|g, m+1)`` fp32; mDen ``(g, n)`` fp32; group_size = K / g.
    """

    def __init__(self, cfg: FwdConfig):
        self.cfg = cfg
        self.dtype = dsl_dtype(cfg.dtype)
        self.bM, self.bN, self.bK = cfg.tile
        if self.bK < 32:
            # The register pipeline loads k-block kb+1 while kb is multiplied: with a single k-block
            # per stage the load would overwrite the fragment before its MMA.
            raise ValueError(f"the sm_80 kernel needs bK >= 32 (two k-blocks per stage), got {cfg.tile}")
        self.num_threads = 32 * cfg.atoms[0] * cfg.atoms[1]

    @cute.jit
    def __call__(self, mA: cute.Tensor, mB: cute.Tensor, mC: cute.Tensor, mBias: cute.Tensor,
                 mNum: cute.Tensor, mDen: cute.Tensor, group_size: cutlass.Int32, stream):
        cfg = self.cfg
        sA_layout, sA_swz = smem_layout_kmajor(self.dtype, self.bM, self.bK, cfg.stages)
        sB_layout, sB_swz = smem_layout_kmajor(self.dtype, self.bN, self.bK, cfg.stages)
        sC_layout, sC_swz = smem_layout_rowmajor(self.dtype, self.bM, self.bN)
        g2s = cute.make_copy_atom(cute.nvgpu.cpasync.CopyG2SOp(cache_mode=cute.nvgpu.LoadCacheMode.GLOBAL),
                                  self.dtype, num_bits_per_copy=128)
        copy_A = rowmajor_tiled_copy(g2s, self.dtype, self.num_threads, self.bK)
        copy_B = rowmajor_tiled_copy(g2s, self.dtype, self.num_threads, self.bK)
        c_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.dtype, num_bits_per_copy=128)
        copy_C = rowmajor_tiled_copy(c_atom, self.dtype, self.num_threads, self.bN)
        am, an, _ = cfg.atoms
        op = cute.nvgpu.warp.MmaF16BF16Op(self.dtype, cutlass.Float32, (16, 8, 16))
        # N permuted to 16 per warp so that B can use the 4-matrix ldmatrix.
        tiled_mma = cute.make_tiled_mma(op, cute.make_layout(cfg.atoms), permutation_mnk=(am * 16, an * 16, 16))
        grid = cute.ceil_div(mC.shape, (self.bM, self.bN))
        self.kernel(mA, mB, mC, mBias, mNum, mDen, group_size, sA_layout, sA_swz, sB_layout, sB_swz,
                    sC_layout, sC_swz, copy_A, copy_B, copy_C, tiled_mma).launch(
            grid=[cute.size(grid[0]), cute.size(grid[1]), 1], block=[self.num_threads, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, mA: cute.Tensor, mB: cute.Tensor, mC: cute.Tensor, mBias: cute.Tensor,
               mNum: cute.Tensor, mDen: cute.Tensor, group_size: cutlass.Int32,
               sA_layout: cute.Layout, sA_swz: cute.Swizzle, sB_layout: cute.Layout, sB_swz: cute.Swizzle,
               sC_layout: cute.Layout, sC_swz: cute.Swizzle, copy_A: cute.TiledCopy, copy_B: cute.TiledCopy,
               copy_C: cute.TiledCopy, tiled_mma: cute.TiledMma):
        cfg = self.cfg
        P = cfg.num_coefs
        tidx, _, _ = cute.arch.thread_idx()
        bidx, bidy, _ = cute.arch.block_idx()
        tiler = (self.bM, self.bN, self.bK)
        coord = (bidx, bidy, None)
        gA = cute.local_tile(mA, tiler=tiler, coord=coord, proj=(1, None, 1))  # (bM, bK, k)
        gB = cute.local_tile(mB, tiler=tiler, coord=coord, proj=(None, 1, 1))  # (bN, bK, k)
        gC = cute.local_tile(mC, tiler=tiler, coord=coord, proj=(1, 1, None))  # (bM, bN)
        cA = cute.local_tile(cute.make_identity_tensor(mA.layout.shape), tiler=tiler, coord=coord, proj=(1, None, 1))
        cB = cute.local_tile(cute.make_identity_tensor(mB.layout.shape), tiler=tiler, coord=coord, proj=(None, 1, 1))
        cC = cute.local_tile(cute.make_identity_tensor(mC.layout.shape), tiler=tiler, coord=coord, proj=(1, 1, None))

        @cute.struct
        class Storage:
            a: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sA_layout)], 128]
            b: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sB_layout)], 128]
            coef: cute.struct.Align[cute.struct.MemRange[cutlass.Float32, MAX_GROUPS * P], 16]

        @cute.struct
        class StorageC:
            c: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sC_layout)], 128]

        smem = cutlass.memory.SmemAllocator()
        # The epilogue's C staging tile reuses the A/B pipeline buffers.
        raw = smem.allocate(max(Storage.size_in_bytes(), StorageC.size_in_bytes()), byte_alignment=128)
        st = Storage(raw)
        sA = st.a.get_tensor(sA_layout, swizzle=sA_swz)
        sB = st.b.get_tensor(sB_layout, swizzle=sB_swz)
        sCoef = st.coef.get_tensor(cute.make_layout((MAX_GROUPS, P), stride=(P, 1)))
        sC = StorageC(raw).c.get_tensor(sC_layout, swizzle=sC_swz)

        fill_coef_table(sCoef, mNum, mDen, tidx, self.num_threads, cfg.m, cfg.n)

        thr_A = copy_A.get_slice(tidx)
        thr_B = copy_B.get_slice(tidx)
        tAgA, tAsA, tAcA = thr_A.partition_S(gA), thr_A.partition_D(sA), thr_A.partition_S(cA)
        tBgB, tBsB, tBcB = thr_B.partition_S(gB), thr_B.partition_D(sB), thr_B.partition_S(cB)
        # Row predicates (M for A, N for B), once; K is never predicated (K % bK == 0).
        tApA = self._row_pred(tAgA, tAcA, mA.shape[0])
        tBpB = self._row_pred(tBgB, tBcB, mB.shape[0])

        # Rows a predicated-off cp.async skips must read as zero: clear once, before any copy.
        tAsA.fill(0)
        tBsB.fill(0)
        cute.arch.sync_threads()
        stages = cfg.stages
        k_tiles = cute.size(tAgA, mode=[3])
        k_next = cutlass.Int32(0)
        for s in range(stages - 1):
            if k_next < k_tiles:
                cute.copy(copy_A, tAgA[None, None, None, k_next], tAsA[None, None, None, s], pred=tApA)
                cute.copy(copy_B, tBgB[None, None, None, k_next], tBsB[None, None, None, s], pred=tBpB)
            k_next = k_next + 1
            cute.arch.cp_async_commit_group()

        thr_mma = tiled_mma.get_slice(tidx)
        tCsA = thr_mma.partition_A(sA)
        tCsB = thr_mma.partition_B(sB)
        tCrA = tiled_mma.make_fragment_A(tCsA[None, None, None, 0])
        tCrB = tiled_mma.make_fragment_B(tCsB[None, None, None, 0])
        acc = tiled_mma.make_fragment_C(thr_mma.partition_C(gC))
        acc.fill(0.0)
        s2r_A = cute.make_tiled_copy_A(cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(False, 4), self.dtype),
                                       tiled_mma)
        s2r_B = cute.make_tiled_copy_B(cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(False, 4), self.dtype),
                                       tiled_mma)
        t_s2r_A = s2r_A.get_slice(tidx)
        t_s2r_B = s2r_B.get_slice(tidx)
        tXsA, tXrA = t_s2r_A.partition_S(sA), t_s2r_A.retile(tCrA)
        tXsB, tXrB = t_s2r_B.partition_S(sB), t_s2r_B.retile(tCrB)

        chunks = a_value_chunks(tiled_mma, self.bM, self.bK)
        num_kb = cute.size(tCrA, mode=[2])
        last_group = mDen.shape[0] - 1

        pipe_read = cutlass.Int32(0)
        pipe_write = cutlass.Int32(stages - 1)
        cute.arch.cp_async_wait_group(stages - 2)
        smem_prologue = cfg.prologue == "smem"
        if cutlass.const_expr(smem_prologue):
            cute.arch.sync_threads()  # the coefficient table is visible
            self._transform_smem(tAsA, tAcA, 0, cutlass.Int32(0), sCoef, group_size, last_group)
        cute.arch.sync_threads()  # stage 0 and the coefficient table are visible
        sA_p = tXsA[None, None, None, pipe_read]
        sB_p = tXsB[None, None, None, pipe_read]
        cute.copy(s2r_A, sA_p[None, None, 0], tXrA[None, None, 0])
        cute.copy(s2r_B, sB_p[None, None, 0], tXrB[None, None, 0])
        if cutlass.const_expr(not smem_prologue):
            self._transform(tCrA, 0, cutlass.Int32(0), chunks, sCoef, group_size, last_group)

        for k_tile in range(k_tiles):
            for kb in cutlass.range_constexpr(num_kb):
                if kb == num_kb - 1:
                    # The next k-block lives in the next smem stage: wait for it, then barrier.
                    sA_p = tXsA[None, None, None, pipe_read]
                    sB_p = tXsB[None, None, None, pipe_read]
                    cute.arch.cp_async_wait_group(stages - 2)
                    if cutlass.const_expr(smem_prologue):
                        # this thread's own cp.async writes to the stage of k-tile k_tile + 1 are
                        # complete and visible to it: transform them; the barrier publishes them
                        self._transform_smem(tAsA, tAcA, pipe_read, k_tile + 1, sCoef, group_size, last_group)
                    cute.arch.sync_threads()
                kb_next = (kb + 1) % num_kb
                cute.copy(s2r_A, sA_p[None, None, kb_next], tXrA[None, None, kb_next])
                cute.copy(s2r_B, sB_p[None, None, kb_next], tXrB[None, None, kb_next])
                if kb == 0:
                    if k_next < k_tiles:
                        cute.copy(copy_A, tAgA[None, None, None, k_next], tAsA[None, None, None, pipe_write], pred=tApA)
                        cute.copy(copy_B, tBgB[None, None, None, k_next], tBsB[None, None, None, pipe_write], pred=tBpB)
                    k_next = k_next + 1
                    cute.arch.cp_async_commit_group()
                    pipe_write = pipe_read
                    pipe_read = pipe_read + 1
                    if pipe_read == stages:
                        pipe_read = cutlass.Int32(0)
                cute.gemm(tiled_mma, acc, tCrA[None, None, kb], tCrB[None, None, kb], acc)
                if cutlass.const_expr(not smem_prologue):
                    # F on the next k-block's A values, after this block's MMAs were issued.
                    col_next = k_tile * self.bK + (kb + 1) * 16
                    self._transform(tCrA, kb_next, col_next, chunks, sCoef, group_size, last_group)

        cute.arch.cp_async_wait_group(0)
        cute.arch.sync_threads()
        epilogue_bias_store(acc, mBias, mC, gC, cC, sC, thr_mma, copy_C, tidx, self.dtype)

    # ------------------------------------------------------------------ helpers (trace time)
    def _row_pred(self, tXg, tXc, rows):
        """Boolean ``(vec_rows, copies_m, copies_k)`` predicate, stride 0 along k."""
        pred = cute.make_rmem_tensor(
            cute.make_layout((tXg.shape[0][1], cute.size(tXg, mode=[1]), cute.size(tXg, mode=[2])),
                             stride=(cute.size(tXg, mode=[1]), 1, 0)), cutlass.Boolean)
        for rv in range(pred.shape[0]):
            for r in range(pred.shape[1]):
                pred[rv, r, 0] = cute.elem_less(tXc[(0, rv), r, 0, 0][0], rows)
        return pred

    def _transform_smem(self, tAsA, tAcA, stage, k_idx, sCoef, group_size, last_group):
        """F in place on this thread's cp.async vectors of A in smem ``stage`` (holding k-tile
        ``k_idx``).  A vector is 8 aligned columns, so one group; rows past M hold zeros (or F of
        them from an earlier pass) and only reach output rows that are never stored."""
        cfg = self.cfg
        src = tAsA[None, None, None, stage]
        # One vector at a time (load, F, store): fewer values live at once -- with the whole
        # fragment in registers the 128x256 tile went past 255 registers once F gained its
        # large-|x| fallback (rational_math.rescue).
        for r in range(cute.size(src, mode=[1])):
            for kk in range(cute.size(src, mode=[2])):
                vec = src[None, r, kk]
                frag = cute.make_fragment_like(vec)
                cute.autovec_copy(vec, frag)
                col = tAcA[0, r, kk, k_idx][1]
                a, b = coef_set(sCoef, cutlass.min(col // group_size, last_group), cfg.m, cfg.n)
                for v in range(cute.size(frag)):
                    x = frag[v].to(cutlass.Float32)
                    frag[v] = rm.forward(a, b, x, cfg.form, DslMath).to(self.dtype)
                cute.autovec_copy(frag, vec)

    def _transform(self, tCrA, kb: int, col0, chunks, sCoef, group_size, last_group):
        """F on k-block ``kb`` of the A fragment; ``col0`` = global column of its first element."""
        cfg = self.cfg
        step = 16 if cfg.group_align >= 16 else 8  # columns over which one set is valid

        def get_set(chunk: int):
            group = cutlass.min((col0 + (chunk * 8 // step) * step) // group_size, last_group)
            return coef_set(sCoef, group, cfg.m, cfg.n)  # clamped: the look-ahead past K is unused

        apply_rational(tCrA[None, None, kb], chunks if step == 8 else [0] * len(chunks), get_set,
                       cfg.form, self.dtype)
