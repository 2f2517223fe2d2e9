"""The dgrad epilogue shared by the sm_80 (mma.sync) and sm_90a (WGMMA) backward GEMMs.

On the fp32 accumulator ``G = dY W`` of a thread: ``acc <- G * F'(x)`` and, per 8-column chunk,
the sums of ``G * dF/da_i`` and ``G * dF/db_j`` over the thread's values, then over the warp (fixed
butterfly), written by lane 0 to ``ws[slot, chunk, :]`` with ``slot = tile_m * warps_m + warp %
warps_m``.  No atomics: every (slot, chunk) has exactly one writer, which
:func:`chunk_groups` proves at trace time from the tiled MMA's static layout, together with the
facts the sums rely on:

* every value a lane holds at a given fragment index lies in the same 8-column chunk for all 32
  lanes of a warp (so the butterfly adds values of one chunk);
* the rows of warp ``w`` are the 16-row blocks ``r`` with ``r % warps_m == w % warps_m``;
* for each slot, the warps sharing it cover every chunk of the tile exactly once.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute

from fusedkat.ops import rational_math as rm

from ..dsl import DslMath

CHUNK = 8  # columns per partial: one m16n8 / WGMMA n8 accumulator block
_PROVEN: dict = {}


def chunk_groups(tiled_mma, bm: int, bn: int, num_threads: int, warps_m: int) -> list[list[int]]:
    """Flat accumulator indices grouped by 8-column chunk (same grouping for every thread).

    Plain Python at trace time on static coordinates; raises AssertionError when a layout fact of
    the module docstring does not hold.  Samples every lane of warp 0 and lanes 0, 31 of the
    others (each slice costs ~0.1 s to build); cached per layout.
    """
    key = (str(tiled_mma), bm, bn, num_threads, warps_m)
    if key in _PROVEN:
        return _PROVEN[key]
    ident = cute.make_identity_tensor((bm, bn))
    ref = tiled_mma.get_slice(0).partition_C(ident)
    size = cute.size(ref)
    order: list[int] = []
    groups: dict[int, list[int]] = {}
    for i in range(size):
        c = ref[i][1] // CHUNK
        if c not in groups:
            order.append(c)
            groups[c] = []
        groups[c].append(i)
    covered: dict[int, list[int]] = {}
    for w in range(num_threads // 32):
        wref = tiled_mma.get_slice(32 * w).partition_C(ident)
        chunks_w = sorted({wref[i][1] // CHUNK for i in range(size)})
        covered.setdefault(w % warps_m, []).extend(chunks_w)
        for lane in (range(32) if w == 0 else (0, 31)):
            part = tiled_mma.get_slice(32 * w + lane).partition_C(ident)
            for c in order:
                base = wref[groups[c][0]][1] // CHUNK
                for i in groups[c]:
                    if part[i][1] // CHUNK != base:
                        raise AssertionError("accumulator layout: a fragment index straddles 8-column chunks")
                    if (part[i][0] // 16) % warps_m != w % warps_m:
                        raise AssertionError("accumulator layout: warp rows are not the slot's 16-row blocks")
    for slot, chunks in covered.items():
        if sorted(chunks) != list(range(bn // CHUNK)):
            raise AssertionError(f"slot {slot}: warps do not cover every chunk exactly once")
    out = [groups[c] for c in order]
    _PROVEN[key] = out
    return out


def reduce_scatter(vals: list, lane, ops, width: int = 32):
    """Warp sum of ``n = len(vals)`` per-lane values with ~n + small shuffles instead of 5n.

    Halving steps (offsets 16, 8, ...) while n is even: a lane keeps the half of the values its
    lane bit selects and adds the partner's copy of that half (one shuffle per kept value); then a
    plain butterfly over the remaining offsets.  Returns ``(vals, base, rest)``: lanes with
    ``lane & rest == 0`` hold the warp totals of the original indices ``base .. base+len(vals)-1``
    (each index on exactly one such lane).  Fixed operation order: deterministic.  ``ops`` supplies
    ``bit(lane, off)``, ``select(cond, a, b)``, ``select_int(cond, a, b)``, ``shfl_xor(v, off)`` so the
    same code runs in a kernel and in a CPU simulation of 32 lanes (tests).
    """
    n = len(vals)
    off = width // 2
    base = 0
    while off >= 1 and n % 2 == 0:
        half = n // 2
        upper = ops.bit(lane, off)
        keep = [ops.select(upper, vals[half + i], vals[i]) for i in range(half)]
        send = [ops.select(upper, vals[i], vals[half + i]) for i in range(half)]
        vals = [keep[i] + ops.shfl_xor(send[i], off) for i in range(half)]
        base = base + ops.select_int(upper, half, 0)
        n = half
        off //= 2
    rest = max(2 * off - 1, 0)  # off == 0: every lane holds distinct totals
    while off >= 1:
        vals = [v + ops.shfl_xor(v, off) for v in vals]
        off //= 2
    return vals, base, rest


class DslWarpOps:
    """:func:`reduce_scatter`'s operations on DSL values inside a kernel."""

    @staticmethod
    def bit(lane, off):
        return (lane & off) != 0

    @staticmethod
    def select(cond, a, b):
        return cutlass.Float32(cutlass.select_(cond, a, b))

    @staticmethod
    def select_int(cond, a, b):
        return cutlass.Int32(cutlass.select_(cond, cutlass.Int32(a), cutlass.Int32(b)))

    @staticmethod
    def shfl_xor(v, off):
        return cute.arch.shuffle_sync_bfly(v, offset=off)


#: Chunks whose partials are reduced together (BATCH * P values per reduce_scatter).
BATCH = 2


@cute.jit
def load_coefficients(mNum: cute.Tensor, mDen: cute.Tensor, group, m: cutlass.Constexpr,
                      n: cutlass.Constexpr, shared_numerator: cutlass.Constexpr):
    """Registers holding a_0..a_m and b_1..b_n of ``group`` (fp32, from global memory)."""
    num_row = 0 if shared_numerator else group
    a = [mNum[num_row, i] for i in range(m + 1)]
    b = [mDen[group, j] for j in range(n)]
    return a, b


@cute.jit
def dgrad_epilogue(acc: cute.Tensor, tCcC: cute.Tensor, tCgX: cute.Tensor, mC: cute.Tensor,
                   mWs: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor, group_size: cutlass.Int32,
                   ws_row, lane, groups: cutlass.Constexpr, form: cutlass.Constexpr, m: cutlass.Constexpr,
                   n: cutlass.Constexpr, shared_numerator: cutlass.Constexpr, tCgF=None, chunk_group=None,
                   guard: cutlass.Constexpr = True):
    """See the module docstring; ``groups`` from :func:`chunk_groups`.  ``tCgF`` (optional, the
    accumulator's partition of an ``[M, K]`` view in x's dtype): F(x) is stored there too.
    ``chunk_group`` (optional, one Int32 per entry of ``groups``): the chunks' coefficient groups,
    computed by the caller without division (else ``chunk_col // group_size`` here).  ``guard``
    (default True): the large-|x| exact evaluation of ``rational_math.grad_terms`` per element;
    ``"vector"``: the direct path with one warp-voted test per chunk and the exact path in a
    uniform branch (:func:`_chunk_values_vector_guard`); ``False`` evaluates directly
    (``grad_terms_direct``: inf/NaN for |x| where x^m overflows fp32)."""
    P = m + 1 + n
    rows = mC.shape[0]
    cols = mC.shape[1]
    last_group = mDen.shape[0] - 1
    for b0 in cutlass.range_constexpr(0, len(groups), BATCH):
        nb = min(BATCH, len(groups) - b0)
        flat = []
        chunk_cols = []
        for gi in cutlass.range_constexpr(b0, b0 + nb):
            sums, chunk_col = _chunk_sums(acc, tCcC, tCgX, mNum, mDen, group_size, rows, cols, last_group,
                                          groups[gi], form, m, n, shared_numerator, tCgF,
                                          None if chunk_group is None else chunk_group[gi], guard)
            flat = flat + sums
            chunk_cols.append(chunk_col)
        vals, base, rest = reduce_scatter(flat, lane, DslWarpOps)
        if (lane & rest) == 0:
            for j in cutlass.range_constexpr(len(vals)):
                idx = base + j
                c = cutlass.Int32(0)
                col = chunk_cols[0]
                for q in cutlass.range_constexpr(1, nb):
                    c = cutlass.Int32(cutlass.select_(idx >= q * P, q, c))
                    col = cutlass.Int32(cutlass.select_(idx >= q * P, chunk_cols[q], col))
                if cute.elem_less(col, cols):
                    mWs[ws_row, col // CHUNK, idx - c * P] = vals[j]


@cute.jit
def _chunk_sums(acc: cute.Tensor, tCcC: cute.Tensor, tCgX: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor,
                group_size, rows, cols, last_group, idx: cutlass.Constexpr, form: cutlass.Constexpr,
                m: cutlass.Constexpr, n: cutlass.Constexpr, shared_numerator: cutlass.Constexpr, tCgF=None,
                group=None, guard: cutlass.Constexpr = True):
    """acc[idx] <- G * F'(x) for the values of one chunk (and F(x) -> ``tCgF`` if given); returns (this lane's sums of
    G * dF/d(a_0..a_m, b_1..b_n), the chunk's first column)."""
    per_element_sign = form == "B"
    col0 = tCcC[idx[0]][1]
    chunk_col = col0 - col0 % CHUNK
    if cutlass.const_expr(group is None):
        group = cutlass.min(chunk_col // group_size, last_group)
    a, b = load_coefficients(mNum, mDen, group, m, n, shared_numerator)
    if cutlass.const_expr(guard == "vector"):
        sums, den_sign = _chunk_values_vector_guard(acc, tCcC, tCgX, a, b, rows, cols, idx, form, m, n, tCgF)
    else:
        sums, den_sign = _chunk_values(acc, tCcC, tCgX, a, b, rows, cols, idx, form, m, n, tCgF, guard)
    if cutlass.const_expr(not per_element_sign):
        for j in cutlass.range_constexpr(n):
            sums[m + 1 + j] = sums[m + 1 + j] * den_sign[j]
    return sums, chunk_col


@cute.jit
def _chunk_values(acc, tCcC, tCgX, a, b, rows, cols, idx: cutlass.Constexpr, form: cutlass.Constexpr,
                  m: cutlass.Constexpr, n: cutlass.Constexpr, tCgF, guard: cutlass.Constexpr):
    """The chunk's values one at a time: ``guard`` True = per element exact (``rm.grad_terms``),
    False = direct only (``rm.grad_terms_direct``).  Returns (sums, den_sign)."""
    P = m + 1 + n
    sums = [cutlass.Float32(0.0) for _ in range(P)]  # comprehension: plain Python range
    den_sign = None
    for e in cutlass.range_constexpr(len(idx)):
        i = idx[e]
        c = tCcC[i]
        x = cutlass.Float32(0.0)
        if cute.elem_less(c[0], rows) and cute.elem_less(c[1], cols):
            x = tCgX[i].to(cutlass.Float32)
        g = acc[i]
        if cutlass.const_expr(guard):
            t = rm.grad_terms(a, b, x, form, DslMath)
        else:
            t = rm.grad_terms_direct(a, b, x, form, DslMath)[0]
        if cutlass.const_expr(tCgF is not None):
            if cute.elem_less(c[0], rows) and cute.elem_less(c[1], cols):
                tCgF[i] = t.f.to(tCgF.element_type)
        acc[i] = g * t.dfdx
        # The same per-element factors as fusedkat.ops.torch_impl.group_rational_backward.
        for p in cutlass.range_constexpr(m + 1):
            sums[p] = sums[p] + g * t.num_grad[p]
        for j in cutlass.range_constexpr(n):
            sums[m + 1 + j] = sums[m + 1 + j] + g * t.den_grad[j]
        den_sign = t.den_sign
    return sums, den_sign


def _flat_results(terms: list, gs: list, m: int, n: int) -> list:
    """``[dx_0, F_0, dx_1, F_1, ..., sum_0, ..., sum_{P-1}]`` of a chunk from its per-value terms
    and incoming gradients (the values one branch of :func:`_chunk_values_vector_guard` yields)."""
    out = []
    sums = None
    for t, g in zip(terms, gs):
        out = out + [g * t.dfdx, t.f]
        per = [g * w for w in list(t.num_grad) + list(t.den_grad)]
        sums = per if sums is None else [s_ + w for s_, w in zip(sums, per)]
    return out + sums


@cute.jit
def _chunk_values_vector_guard(acc, tCcC, tCgX, a, b, rows, cols, idx: cutlass.Constexpr,
                               form: cutlass.Constexpr, m: cutlass.Constexpr, n: cutlass.Constexpr, tCgF):
    """The chunk's values by the direct path, with ONE large-|x| test for the whole chunk, voted
    across the warp (``rm.grad_terms_many_direct``'s ``isfinite(sum P*Q)``, one FMA per value): if
    any lane's chunk fails it, the warp redoes its chunk with the exact per-element path
    (``rm.grad_terms``) in a uniform, rarely taken branch (``DslMath.fallback_warp``), so the exact
    path is not if-converted into the epilogue (issue 20).  Returns (sums, den_sign)."""
    L = len(idx)
    P = m + 1 + n
    xs = []
    for e in cutlass.range_constexpr(L):
        i = idx[e]
        c = tCcC[i]
        x = cutlass.Float32(0.0)
        if cute.elem_less(c[0], rows) and cute.elem_less(c[1], cols):
            x = tCgX[i].to(cutlass.Float32)
        xs.append(x)
    gs = [acc[idx[e]] for e in range(L)]
    kept, ok = rm.grad_terms_many_direct(a, b, xs, form, DslMath)
    vals = DslMath.fallback_warp(ok, _flat_results(kept, gs, m, n),
                                 lambda: _flat_results([rm.grad_terms(a, b, x, form, DslMath) for x in xs], gs, m, n))
    for e in cutlass.range_constexpr(L):
        i = idx[e]
        c = tCcC[i]
        if cutlass.const_expr(tCgF is not None):
            if cute.elem_less(c[0], rows) and cute.elem_less(c[1], cols):
                tCgF[i] = vals[2 * e + 1].to(tCgF.element_type)
        acc[i] = vals[2 * e]
    return [vals[2 * L + p] for p in range(P)], kept[0].den_sign
