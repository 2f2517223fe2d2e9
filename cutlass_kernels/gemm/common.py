"""Pieces shared by the fused rational GEMMs (forward sm_80 / sm_90a, and the backward ones).

Importing this module imports the CuTe DSL: import it only from kernel modules.

* :class:`FwdConfig` — compile-time parameters of a forward variant (picklable, hashable).
* the rational coefficient table: ``(MAX_GROUPS, m+1+n)`` fp32 in shared memory, filled once per
  CTA from the ``numerator (1|g, m+1)`` / ``denominator (g, n)`` tensors (:func:`fill_coef_table`),
  read per k-block with :func:`coef_set`;
* :func:`a_value_chunks` — for an MMA A fragment, which 8-column chunk of the k-block each value
  lies in, derived at trace time from the tiled MMA (so no hand-written fragment layout);
* :func:`apply_rational` — F applied in place to a register fragment: every element goes to fp32,
  through :func:`fusedkat.ops.rational_math.forward` (the single source of truth) with the fast
  reciprocal, and back to the MMA dtype.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Tuple

import cutlass
import cutlass.cute as cute

from fusedkat.ops import rational_math as rm

from ..dsl import DslMath

#: The largest group count the fused kernels take (static size of the smem coefficient table).
MAX_GROUPS = 64
#: Columns per chunk: groups must be multiples of it, so an 8-column chunk has one group.
CHUNK = 8

_DTYPES = {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16, "fp32": cutlass.Float32}


def dsl_dtype(name: str) -> Any:
    """``"bf16" -> cutlass.BFloat16`` (also fp16, fp32)."""
    return _DTYPES[name]


@dataclass(frozen=True)
class FwdConfig:
    """One forward variant: ``y = F(x) W^T + bias``.

    ``group_align`` is the column granularity at which the group is known to be constant:
    8 always works (the launcher requires ``(K/g) % 8 == 0``); 16 lets one coefficient set serve a
    whole 16-wide MMA k-block; a value ``>= tile[2]`` (bK) loads the set once per k-tile.  The
    launcher picks the largest that divides ``K/g``.
    """

    dtype: str = "bf16"  # x, W and y dtype
    form: str = rm.DEFAULT_FORM
    m: int = rm.DEFAULT_ORDER[0]
    n: int = rm.DEFAULT_ORDER[1]
    tile: Tuple[int, int, int] = (128, 128, 32)
    atoms: Tuple[int, int, int] = (4, 2, 1)  # warps along (M, N, K); sm_80 only
    stages: int = 3
    group_align: int = 8
    #: sm_80 only: "regs" = F on the A register fragment after ldmatrix (each warp column of the CTA
    #: transforms its A rows); "smem" = each thread transforms the A elements it cp.async'ed, in
    #: shared memory, once per CTA, before the barrier that publishes the stage.
    prologue: str = "regs"

    def __post_init__(self) -> None:
        rm.RationalSpec(self.m, self.n, self.form)
        if self.prologue not in ("regs", "smem"):
            raise ValueError(f"prologue must be 'regs' or 'smem', got {self.prologue!r}")
        if self.dtype not in ("bf16", "fp16"):
            raise ValueError(f"the fused GEMM takes bf16 or fp16, got {self.dtype!r}")
        bm, bn, bk = self.tile
        if bm % 64 or bn % 64 or bk % 16 or bk > 64 or self.stages < 2:
            raise ValueError(f"unsupported tile/stages {self.tile} {self.stages}")
        if self.group_align not in (8, 16) and self.group_align % bk:
            raise ValueError(f"group_align must be 8, 16 or a multiple of bK, got {self.group_align}")

    @property
    def num_coefs(self) -> int:
        """Coefficients per group in the table: a_0..a_m, b_1..b_n."""
        return self.m + 1 + self.n

    def key(self) -> str:
        """Short stable name (variant names, caches)."""
        t = "x".join(map(str, self.tile))
        a = "x".join(map(str, self.atoms))
        return f"{self.dtype}_{self.form}_m{self.m}n{self.n}_{t}_w{a}_s{self.stages}_ga{self.group_align}_{self.prologue}"


# ---------------------------------------------------------------------------- layouts / copies
def smem_layout_kmajor(dtype: Any, rows: int, bk: int, stages: int) -> Tuple[Any, Any]:
    """Swizzled ``(rows, bK, stages)`` smem layout for a K-contiguous operand (ldmatrix/TMA-free)."""
    width = dtype.width
    major = min(bk, 128 * 8 // width)  # at most one 128-byte row per swizzle atom
    bits = min(int(math.log2(major * width // 128)), 3)
    swizzle = cute.make_swizzle(bits, 4, int(math.log2(128 // width)))
    atom = cute.make_layout((8, major), stride=(major, 1))
    return cute.tile_to_shape(atom, (rows, bk, stages), (0, 1, 2)), swizzle


def smem_layout_rowmajor(dtype: Any, rows: int, cols: int) -> Tuple[Any, Any]:
    """Swizzled row-major ``(rows, cols)`` staging tile (epilogue)."""
    width = dtype.width
    major = min(cols, 128 * 8 // width)
    bits = min(int(math.log2(major * width // 128)), 3)
    swizzle = cute.make_swizzle(bits, 4, int(math.log2(128 // width)))
    atom = cute.make_layout((8, major), stride=(major, 1))
    return cute.tile_to_shape(atom, (rows, cols), (0, 1)), swizzle


def rowmajor_tiled_copy(atom: Any, dtype: Any, num_threads: int, cols: int) -> Any:
    """Threads along the contiguous mode, one 128-bit vector each."""
    vec = 128 // dtype.width
    tcols = cols // vec
    thr = cute.make_layout((num_threads // tcols, tcols), stride=(tcols, 1))
    return cute.make_tiled_copy_tv(atom, thr, cute.make_layout((1, vec)))


# ---------------------------------------------------------------------------- coefficients
@cute.jit
def fill_coef_table(sCoef: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor, tidx: cutlass.Int32,
                    num_threads: cutlass.Constexpr, m: cutlass.Constexpr, n: cutlass.Constexpr):
    """``sCoef[g, :] = (a_0..a_m of g, b_1..b_n of g)`` for every group (caller syncs after).

    The numerator is shared (``mNum`` has one row) or per group; the row is chosen at run time.
    """
    groups = mDen.shape[0]
    per = m + 1 + n
    last_num_row = mNum.shape[0] - 1
    for i in cutlass.range(tidx, groups * per, num_threads):
        g = i // per
        c = i - g * per
        if c <= m:
            # row 0 when the numerator is shared (one row), else the group's own row
            sCoef[g, c] = mNum[cutlass.min(g, last_num_row), c].to(cutlass.Float32)
        else:
            sCoef[g, c] = mDen[g, c - (m + 1)].to(cutlass.Float32)


def coef_set(sCoef: cute.Tensor, group: Any, m: int, n: int) -> Tuple[list, list]:
    """Registers ``(a, b)`` of ``group`` read from the smem table (trace-time helper)."""
    a = [sCoef[group, i] for i in range(m + 1)]
    b = [sCoef[group, m + 1 + j] for j in range(n)]
    return a, b


def a_value_chunks(tiled_mma: Any, bm: int, bk: int) -> list:
    """For the A fragment of one k-block (mode 0 of ``tiled_mma.make_fragment_A``), the index of
    the 8-column chunk (within the 16-wide k-block) of each value, identical for every thread.

    Read from the tiled MMA's partition of a static identity tensor for lanes 0..31; raises if the
    chunk of a value depends on the lane (then a per-thread group would be needed).
    """
    ident = cute.make_identity_tensor((bm, bk))
    chunks = None
    for lane in range(32):
        part = tiled_mma.get_slice(lane).partition_A(ident)
        mine = [int(part[v, 0, 0][1]) // CHUNK for v in range(cute.size(part, mode=[0]))]
        if chunks is None:
            chunks = mine
        elif mine != chunks:
            raise ValueError("A fragment columns are lane-dependent across 8-column chunks")
    return chunks


def apply_rational(frag: cute.Tensor, chunks: Sequence[int], get_set: Callable[[int], Tuple[list, list]],
                   form: str, dtype: Any) -> None:
    """``frag[v, i] <- F(frag[v, i])`` in place (fp32 math, fast reciprocal), for a fragment
    ``(values, rest)`` whose value ``v`` uses coefficient set ``get_set(chunks[v])``.

    Chunk by chunk, each set read just before its values: only one set is live at a time (with two
    sets live the sm_80 kernel went past 255 registers and spilled).
    """
    for chunk in sorted(set(chunks)):
        a, b = get_set(chunk)
        for i in range(cute.size(frag, mode=[1])):
            for v in range(cute.size(frag, mode=[0])):
                if chunks[v] == chunk:
                    x = frag[v, i].to(cutlass.Float32)
                    frag[v, i] = rm.forward(a, b, x, form, DslMath).to(dtype)


# ---------------------------------------------------------------------------- epilogue
@cute.jit
def epilogue_bias_store(acc: cute.Tensor, mBias: cute.Tensor, mC: cute.Tensor, gC: cute.Tensor, cC: cute.Tensor,
                        sC: cute.Tensor, thr_mma: Any, copy_C: Any, tidx: cutlass.Int32, dtype: cutlass.Constexpr):
    """``acc + bias[col]`` (fp32), then :func:`store_tile`.  ``cC`` is the identity tile of ``gC``."""
    tCcC = thr_mma.partition_C(cC)
    last_col = mC.shape[1] - 1
    for i in cutlass.range(cute.size(acc), unroll_full=True):
        col = cutlass.min(tCcC[i][1], last_col)  # clamped, branch-free: columns >= N are not stored
        acc[i] = acc[i] + mBias[col]
    store_tile(acc, mC, gC, cC, sC, thr_mma, copy_C, tidx, dtype)


@cute.jit
def store_tile(acc: cute.Tensor, mC: cute.Tensor, gC: cute.Tensor, cC: cute.Tensor, sC: cute.Tensor,
               thr_mma: Any, copy_C: Any, tidx: cutlass.Int32, dtype: cutlass.Constexpr):
    """``acc`` -> ``dtype`` -> swizzled smem tile ``sC`` -> predicated 128-bit row stores into ``gC``
    (rows < M, 8-column vectors < N).  ``cC`` is the identity tile of ``gC``; the caller makes sure
    nothing else still reads the smem behind ``sC``.  Shared by the forward and the dgrad epilogues."""
    out = cute.make_fragment_like(acc, dtype)
    out.store(acc.load().to(dtype))
    cute.autovec_copy(out, thr_mma.partition_C(sC))
    thr_C = copy_C.get_slice(tidx)
    tsC, tgC, tcC = thr_C.partition_S(sC), thr_C.partition_D(gC), thr_C.partition_S(cC)
    rC = cute.make_fragment_like(tsC)
    cute.arch.sync_threads()
    cute.autovec_copy(tsC, rC)
    tpC = cute.make_rmem_tensor(
        cute.make_layout((tgC.shape[0][1], cute.size(tgC, mode=[1]), cute.size(tgC, mode=[2])),
                         stride=(cute.size(tgC, mode=[1]), 1, 0)), cutlass.Boolean)
    for rv in cutlass.range_constexpr(tpC.shape[0]):
        for r in cutlass.range_constexpr(tpC.shape[1]):
            tpC[rv, r, 0] = cute.elem_less(tcC[(0, rv), r, 0][0], mC.shape[0])
    for rv in cutlass.range_constexpr(tpC.shape[0]):
        for c in cutlass.range_constexpr(tpC.shape[2]):
            if cute.elem_less(tcC[(0, rv), 0, c][1], mC.shape[1]):
                cute.copy(copy_C, rC[None, None, c], tgC[None, None, c], pred=tpC[None, None, c])
