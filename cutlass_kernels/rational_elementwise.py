"""Group-rational elementwise kernels (forward and backward) in CuTe DSL.

The math is not written here: every kernel calls :mod:`fusedkat.ops.rational_math` on DSL
``Float32`` registers through :class:`cutlass_kernels.dsl.DslMath` — one definition of F for torch
and for the GPU.

Two passes (large |x|, issue 20).  The hot loop evaluates F (and its gradient terms) directly,
with one finiteness flag per vector (``rational_math.forward_many_direct`` /
``grad_terms_many_direct``: one FMA per element).  A thread that met a failing vector then runs a
second loop over its whole share with the exact evaluation (``rational_math.forward_many`` /
``grad_terms``), rewriting its outputs (the backward zeroes its partial sums first).  A branch
inside the hot loop was if-converted by ptxas, issuing the exact path for every element (+15-19
slots per element in the forward, +30-40 in the backward); a second loop cannot be.  The build
check holds the structure (``rational_variants.pass_failures``).

Work decomposition (both kernels).  x ``[M, K]`` (any leading dims, contiguous) is viewed as
``total = M*K/V`` vectors of ``V`` elements (16 bytes for V = 16/sizeof(dtype)); ``V`` divides
``K/g``, so a vector never straddles two groups.  The launch has ``S = L * (K/V)`` threads and
thread ``t`` handles vectors ``t, t+S, t+2S, ...``: because ``S`` is a multiple of ``K/V``, every
vector of a thread sits at the same column block, hence in ONE group.  So a thread loads its
group's coefficients once into registers, and in the backward it accumulates the coefficient
gradients of one group in ``m+1+n`` fp32 registers.  Consecutive threads read consecutive
16-byte vectors: fully coalesced for any K.  Each iteration loads ``U`` vectors before
computing, to keep enough bytes in flight for a memory-bound kernel.

Backward reduction (deterministic, no atomics): thread ``t`` writes its ``m+1+n`` partial sums to
column ``t`` of a ``[m+1+n, S]`` fp32 workspace; the launcher sums it in a fixed order on the
device (``view(C, L, g, K/(g*V)).sum``) — a second pass over ``C*S`` floats, tiny next to x.

F(x) from the backward (``emit_f``): the gradient needs F(x) anyway, so the backward can also write
it, into a row-strided buffer with room for TAIL extra columns per row that the threads of column
block 0 fill with ``(1, 0, ..., 0)`` after their main loop.  Vector ``t + j*S`` of x is vector
``fvec0 + j * (S/kvecs) * f_row_vecs`` of that buffer (S is a multiple of kvecs), an index carried
through the loop: no division per vector (one per vector cost registers, and ptxas then parked a
value on the stack).
"""
# (no "from __future__ import annotations": the DSL evaluates the kernels' annotations at trace time)

from dataclasses import dataclass
from typing import Any, ClassVar

from fusedkat.ops import rational_math as rm

from .config import DTYPE_BYTES, KernelConfig, check_dtype_name


@dataclass(frozen=True)
class GroupRationalConfig(KernelConfig):
    """Compile-time parameters of the forward kernel (sizes and groups are runtime arguments).

    dtype: "fp32" | "bf16" | "fp16" (x and y); form: "A" | "B"; m/n: degrees; vec: elements per
    vector load (V, 16 bytes at most); unroll: vectors loaded per thread per iteration (U);
    threads: threads per block.
    """

    family: ClassVar[str] = "group_rational_fwd"
    dtype: str = "bf16"
    form: str = "A"
    m: int = rm.DEFAULT_ORDER[0]
    n: int = rm.DEFAULT_ORDER[1]
    vec: int = 8
    unroll: int = 4
    threads: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dtype_name(self.dtype)
        rm.RationalSpec(self.m, self.n, self.form)  # validates degrees and form
        if self.vec not in (1, 2, 4, 8) or self.vec * DTYPE_BYTES[self.dtype] > 16:
            raise ValueError(f"vec={self.vec} is not a power of two with at most 16 bytes of {self.dtype}")
        if self.unroll < 1 or self.threads % 32 or not 32 <= self.threads <= 1024:
            raise ValueError(f"bad unroll={self.unroll} / threads={self.threads}")

    @property
    def coefficients(self) -> int:
        """m + 1 + n: the number of coefficient-gradient partial sums per thread (backward)."""
        return self.m + 1 + self.n


@dataclass(frozen=True)
class GroupRationalBwdConfig(GroupRationalConfig):
    """Compile-time parameters of the backward kernel (the forward's fields, plus ``emit_f``).

    emit_f: also write F(x) (x's dtype) into a row-strided ``[rows, K + tail]`` buffer, and
    optionally a block of :data:`TAIL` columns ``(1, 0, ..., 0)`` after each row's K values.  The
    unfused ``rational_linear`` backward feeds that buffer to its weight-gradient GEMM, so F(x) is
    not recomputed by a second kernel and the ones column turns the same GEMM into the bias
    gradient (``dY^T [F(x) | 1] = [dW | db]``).
    """

    family: ClassVar[str] = "group_rational_bwd"
    unroll: int = 2
    emit_f: bool = False


#: Columns appended to each row of the backward's F(x) output when it carries the ones column:
#: 8, so rows stay 16-byte aligned for every dtype and vector width (V divides 8).
TAIL = 8


def max_vec(dtype: str) -> int:
    """Elements in a 16-byte vector of ``dtype``."""
    return 16 // DTYPE_BYTES[check_dtype_name(dtype)]


# ------------------------------------------------------------------------------------------------
# DSL part: imported lazily (the functions below import cutlass when called).
# ------------------------------------------------------------------------------------------------
def _kernels() -> Any:
    """Define the DSL kernel classes on first use (keeps this module importable without the DSL)."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS

    import cutlass
    import cutlass.cute as cute
    from cutlass import Float32, Int32

    from .dsl import DslMath

    class _Common:
        def __init__(self, cfg: GroupRationalConfig):
            self.cfg = cfg

        def load_coefficients(self, mNum, mDen, t, kvecs, kvg, num_step):
            """This thread's group and its coefficients as fp32 registers."""
            grp = (t % kvecs) // kvg
            arow = grp * num_step
            a = [mNum[arow, i].to(Float32) for i in range(self.cfg.m + 1)]
            b = [mDen[grp, j].to(Float32) for j in range(self.cfg.n)]
            return a, b

        def vectors(self, ptr, total):
            """``[total, V]`` row-major view of a vector buffer (the pointer carries its alignment)."""
            return cute.make_tensor(ptr, cute.make_layout((total, self.cfg.vec), stride=(self.cfg.vec, 1)))

        def coefficients(self, pNum, pDen, num_rows, groups):
            """Row-major ``[num_rows, m+1]`` numerator and ``[groups, n]`` denominator views."""
            m1, n = self.cfg.m + 1, self.cfg.n
            return (cute.make_tensor(pNum, cute.make_layout((num_rows, m1), stride=(m1, 1))),
                    cute.make_tensor(pDen, cute.make_layout((groups, n), stride=(n, 1))))

    # Host entries take raw pointers and Int32 sizes (the ABI of cutlass_kernels.abi): the same
    # compiled function is called through TVM-FFI with plain ints or through the DSL's executor.
    class Forward(_Common):
        @cute.jit
        def __call__(self, pX: cute.Pointer, pY: cute.Pointer, pNum: cute.Pointer, pDen: cute.Pointer,
                     total: Int32, kvecs: Int32, kvg: Int32, num_step: Int32, nthreads: Int32,
                     num_rows: Int32, groups: Int32, stream: Any):
            mX, mY = self.vectors(pX, total), self.vectors(pY, total)
            mNum, mDen = self.coefficients(pNum, pDen, num_rows, groups)
            threads = self.cfg.threads
            grid = (nthreads + threads - 1) // threads
            self.kernel(mX, mY, mNum, mDen, total, kvecs, kvg, num_step, nthreads).launch(
                grid=(grid, 1, 1), block=(threads, 1, 1), stream=stream)

        @cute.kernel
        def kernel(self, mX: cute.Tensor, mY: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor,
                   total: Int32, kvecs: Int32, kvg: Int32, num_step: Int32, nthreads: Int32):
            tidx, _, _ = cute.arch.thread_idx()
            bidx, _, _ = cute.arch.block_idx()
            t = bidx * self.cfg.threads + tidx
            if t < nthreads:
                # hot pass: F by Horner on x, one large-|x| flag per vector
                # (rational_math.forward_many_direct); a vector that fails it is stored wrong here ...
                bad = self.sweep(mX, mY, mNum, mDen, t, total, kvecs, kvg, num_step, nthreads, False)
                # ... and stored again, exactly, by a second pass that only threads which met such a
                # vector run.  A separate loop: ptxas cannot if-convert the exact path into the hot
                # loop (a branch inside it was predicated, +15-19 slots per element)
                if bad != Int32(0):
                    self.sweep(mX, mY, mNum, mDen, t, total, kvecs, kvg, num_step, nthreads, True)

        @cute.jit
        def sweep(self, mX: cute.Tensor, mY: cute.Tensor, mNum: cute.Tensor, mDen: cute.Tensor, t: Int32,
                  total: Int32, kvecs: Int32, kvg: Int32, num_step: Int32, nthreads: Int32,
                  exact: cutlass.Constexpr):
            """F over thread ``t``'s vectors ``t, t + S, ...`` into mY.  ``exact=False``: direct
            values, returns 1 if some vector needs the exact path (else 0); ``exact=True``: every
            vector by ``rational_math.forward_many`` (exact wherever the true value is finite)."""
            V, U, form = self.cfg.vec, self.cfg.unroll, self.cfg.form
            a, b = self.load_coefficients(mNum, mDen, t, kvecs, kvg, num_step)
            bad = Int32(0)
            for base in cutlass.range(t, total, nthreads * U):
                # load U vectors first (bytes in flight), then compute and store
                xs = []
                for u in cutlass.range_constexpr(U):
                    frag = cute.make_rmem_tensor((1, V), mX.element_type)
                    frag.fill(0)
                    v = base + u * nthreads
                    if v < total:
                        cute.autovec_copy(cute.local_tile(mX, (1, V), (v, 0)), frag)
                    xs.append(frag)
                for u in cutlass.range_constexpr(U):
                    xv = xs[u].load().to(Float32)
                    vals = [xv[0, i] for i in range(V)]
                    out = cute.make_rmem_tensor((1, V), Float32)
                    if cutlass.const_expr(exact):
                        fs = rm.forward_many(a, b, vals, form, DslMath)
                    else:
                        fs, ok = rm.forward_many_direct(a, b, vals, form, DslMath)
                        bad = Int32(cutlass.select_(ok, bad, Int32(1)))
                    for i in cutlass.range_constexpr(V):
                        out[0, i] = fs[i]
                    v = base + u * nthreads
                    if v < total:
                        cute.local_tile(mY, (1, V), (v, 0)).store(out.load().to(mY.element_type))
            return bad

    class Backward(_Common):
        @cute.jit
        def __call__(self, pG: cute.Pointer, pX: cute.Pointer, pDX: cute.Pointer, pPart: cute.Pointer,
                     pNum: cute.Pointer, pDen: cute.Pointer, total: Int32, kvecs: Int32, kvg: Int32,
                     num_step: Int32, nthreads: Int32, num_rows: Int32, groups: Int32, stream: Any):
            mDX = self.vectors(pDX, total)
            # no F output: mDX stands in for mF (never written: emit_f is False at trace time)
            self._launch(pG, pX, mDX, mDX, pPart, pNum, pDen, total, kvecs, kvg, num_step, nthreads,
                         num_rows, groups, kvecs, Int32(0), stream)

        @cute.jit
        def _launch(self, pG: cute.Pointer, pX: cute.Pointer, mDX: cute.Tensor, mF: cute.Tensor,
                    pPart: cute.Pointer, pNum: cute.Pointer, pDen: cute.Pointer, total: Int32, kvecs: Int32,
                    kvg: Int32, num_step: Int32, nthreads: Int32, num_rows: Int32, groups: Int32,
                    f_row_vecs: Int32, tail: Int32, stream: Any):
            mG, mX = self.vectors(pG, total), self.vectors(pX, total)
            # partial sums: [m+1+n, nthreads] fp32, row-major (one column per thread)
            mPart = cute.make_tensor(pPart, cute.make_layout((self.cfg.coefficients, nthreads), stride=(nthreads, 1)))
            mNum, mDen = self.coefficients(pNum, pDen, num_rows, groups)
            threads = self.cfg.threads
            grid = (nthreads + threads - 1) // threads
            self.kernel(mG, mX, mDX, mF, mPart, mNum, mDen, total, kvecs, kvg, num_step, nthreads,
                        f_row_vecs, tail).launch(grid=(grid, 1, 1), block=(threads, 1, 1), stream=stream)

        @cute.kernel
        def kernel(self, mG: cute.Tensor, mX: cute.Tensor, mDX: cute.Tensor, mF: cute.Tensor, mPart: cute.Tensor,
                   mNum: cute.Tensor, mDen: cute.Tensor, total: Int32, kvecs: Int32, kvg: Int32,
                   num_step: Int32, nthreads: Int32, f_row_vecs: Int32, tail: Int32):
            m1, n = self.cfg.m + 1, self.cfg.n
            tidx, _, _ = cute.arch.thread_idx()
            bidx, _, _ = cute.arch.block_idx()
            t = bidx * self.cfg.threads + tidx
            if t < nthreads:
                acc = cute.make_rmem_tensor((m1 + n,), Float32)
                acc.fill(0.0)
                # hot pass: direct terms, one large-|x| flag per vector (rational_math.
                # grad_terms_many_direct).  A thread that met a failing vector has inf/NaN in acc and
                # wrong dx / F(x) there: it does its whole share again, exactly, in a second pass
                # (a separate loop, so ptxas cannot predicate the exact path into the hot one, as it
                # did a branch inside it: +30-40 slots per element)
                bad = self.sweep(mG, mX, mDX, mF, acc, mNum, mDen, t, total, kvecs, kvg, num_step, nthreads,
                                 f_row_vecs, False)
                if bad != Int32(0):
                    acc.fill(0.0)
                    self.sweep(mG, mX, mDX, mF, acc, mNum, mDen, t, total, kvecs, kvg, num_step, nthreads,
                               f_row_vecs, True)
                if cutlass.const_expr(self.cfg.emit_f):
                    # the ones-column tail of every row this thread's column block 0 visited (S is
                    # a multiple of kvecs, so block 0's threads are t % kvecs == 0 and cover rows
                    # t / kvecs, + S / kvecs, ...); after the main loop, to keep its registers free
                    if tail != 0:
                        if t % kvecs == 0:
                            for row in cutlass.range(t // kvecs, total // kvecs, nthreads // kvecs, unroll=1):
                                self._store_tail(mF, row * f_row_vecs + kvecs)
                b = self.load_coefficients(mNum, mDen, t, kvecs, kvg, num_step)[1]
                _apply_coefficient_signs(acc, m1, b, self.cfg.form, DslMath)
                for c in cutlass.range_constexpr(m1 + n):
                    mPart[c, t] = acc[c]

        @cute.jit
        def sweep(self, mG: cute.Tensor, mX: cute.Tensor, mDX: cute.Tensor, mF: cute.Tensor, acc: cute.Tensor,
                  mNum: cute.Tensor, mDen: cute.Tensor, t: Int32, total: Int32, kvecs: Int32, kvg: Int32,
                  num_step: Int32, nthreads: Int32, f_row_vecs: Int32, exact: cutlass.Constexpr):
            """dx (and F(x)) over thread ``t``'s vectors ``t, t + S, ...``, their coefficient-gradient
            terms added to ``acc``.  ``exact=False``: direct terms; returns 1 if a vector failed the
            large-|x| test (its values are then wrong), else 0; ``exact=True``: every value by
            ``rational_math.grad_terms`` (exact wherever the true values are finite)."""
            V, U, form = self.cfg.vec, self.cfg.unroll, self.cfg.form
            emit_f = self.cfg.emit_f
            m1, n = self.cfg.m + 1, self.cfg.n
            a, b = self.load_coefficients(mNum, mDen, t, kvecs, kvg, num_step)
            bad = Int32(0)
            # F's vector index for vector v = t + j*S is fvec + j*fstep: the row of v is
            # t/kvecs + j*S/kvecs (S is a multiple of kvecs), F's rows are f_row_vecs apart.
            # Carried through the loop: no division per vector.
            fvec = t + (t // kvecs) * (f_row_vecs - kvecs)
            fstep = (nthreads // kvecs) * f_row_vecs
            for base in cutlass.range(t, total, nthreads * U):
                xs, gs = [], []
                for u in cutlass.range_constexpr(U):
                    fx = cute.make_rmem_tensor((1, V), mX.element_type)
                    fg = cute.make_rmem_tensor((1, V), mG.element_type)
                    fx.fill(0)
                    fg.fill(0)  # masked vectors contribute grad 0 to the partial sums
                    v = base + u * nthreads
                    if v < total:
                        cute.autovec_copy(cute.local_tile(mX, (1, V), (v, 0)), fx)
                        cute.autovec_copy(cute.local_tile(mG, (1, V), (v, 0)), fg)
                    xs.append(fx)
                    gs.append(fg)
                for u in cutlass.range_constexpr(U):
                    xv = xs[u].load().to(Float32)
                    gv = gs[u].load().to(Float32)
                    vals = [xv[0, i] for i in range(V)]
                    grads = [gv[0, i] for i in range(V)]
                    dx = cute.make_rmem_tensor((1, V), Float32)
                    # F in the output dtype as it is computed: packed, half the registers
                    fv = cute.make_rmem_tensor((1, V), mF.element_type)
                    v = base + u * nthreads
                    if cutlass.const_expr(exact):
                        for i in cutlass.range_constexpr(V):
                            d, f = _accumulate_gradients(acc, a, b, vals[i], grads[i], form, DslMath)
                            dx[0, i] = d
                            fv[0, i] = f.to(mF.element_type)
                    else:
                        def consume(i, tr):  # one value's terms, used as soon as they exist
                            _add_terms(acc, tr, grads[i], m1)
                            dx[0, i] = grads[i] * tr.dfdx
                            fv[0, i] = tr.f.to(mF.element_type)

                        ok = rm.grad_terms_many_direct(a, b, vals, form, DslMath, each=consume)[1]
                        bad = Int32(cutlass.select_(ok, bad, Int32(1)))
                    self._store(mDX, mF, dx, fv, v, total, fvec + u * fstep)
                fvec = fvec + U * fstep
            return bad

        @cute.jit
        def _store(self, mDX: cute.Tensor, mF: cute.Tensor, dx: cute.Tensor, fv: cute.Tensor, v: Int32, total: Int32,
                   fvec: Int32):
            """Vector ``v`` of dx (and F(x) at F's vector ``fvec`` if ``cfg.emit_f``), if ``v < total``."""
            if v < total:
                cute.local_tile(mDX, (1, self.cfg.vec), (v, 0)).store(dx.load().to(mDX.element_type))
                if cutlass.const_expr(self.cfg.emit_f):
                    cute.local_tile(mF, (1, self.cfg.vec), (fvec, 0)).store(fv.load())

        @cute.jit
        def _store_tail(self, mF: cute.Tensor, first_vec):
            """The TAIL columns ``(1, 0, ..., 0)`` from vector ``first_vec`` of F's vector view."""
            V = self.cfg.vec
            for j in cutlass.range_constexpr(TAIL // V):
                ones = cute.make_rmem_tensor((1, V), Float32)
                ones.fill(0.0)
                if cutlass.const_expr(j == 0):
                    ones[0, 0] = Float32(1.0)
                cute.local_tile(mF, (1, V), (first_vec + j, 0)).store(ones.load().to(mF.element_type))

    class BackwardEmitF(Backward):
        """The backward entry that also writes F(x) (``cfg.emit_f``): two more pointer / size
        arguments, ``pF`` after ``pDX`` and ``(f_row_vecs, tail)`` after the sizes."""

        @cute.jit
        def __call__(self, pG: cute.Pointer, pX: cute.Pointer, pDX: cute.Pointer, pF: cute.Pointer,
                     pPart: cute.Pointer, pNum: cute.Pointer, pDen: cute.Pointer, total: Int32, kvecs: Int32,
                     kvg: Int32, num_step: Int32, nthreads: Int32, num_rows: Int32, groups: Int32,
                     f_row_vecs: Int32, tail: Int32, stream: Any):
            # F as [rows * f_row_vecs, V] vectors: row r's K values start at vector r * f_row_vecs
            mF = self.vectors(pF, (total // kvecs) * f_row_vecs)
            self._launch(pG, pX, self.vectors(pDX, total), mF, pPart, pNum, pDen, total, kvecs, kvg, num_step,
                         nthreads, num_rows, groups, f_row_vecs, tail, stream)

    class _Namespace:
        pass

    ns = _Namespace()
    ns.Forward, ns.Backward, ns.BackwardEmitF = Forward, Backward, BackwardEmitF
    _KERNELS = ns
    return ns


def _add_terms(acc: Any, tr: Any, g: Any, m1: int) -> None:
    """``acc[k] += g * dF/dcoef_k`` for one element's :class:`~fusedkat.ops.rational_math.GradTerms`
    (``acc``: ``m+1+n`` fp32 values, a register tensor or a list; form A's sgn(b_j) left out)."""
    for k, w in enumerate(tr.num_grad):  # dF/da_k = x^k / Q
        acc[k] = acc[k] + g * w
    for j, v in enumerate(tr.den_grad):  # dF/db_j (form A: without sgn(b_j), applied later)
        acc[m1 + j] = acc[m1 + j] + g * v


def _accumulate_gradients(acc: Any, a: list, b: list, x: Any, g: Any, form: str, ops: Any) -> Any:
    """Add one element's coefficient-gradient terms to ``acc`` (``m+1+n`` fp32 registers) and
    return ``(dx, F(x))`` with dx = g * dF/dx, exact wherever the true values are finite
    (``rational_math.grad_terms``; F(x) is dead code unless the kernel stores it).  Plain Python run
    at trace time (not DSL-preprocessed), so the branches on ``form`` are decided when the kernel
    is generated."""
    tr = rm.grad_terms(a, b, x, form, ops)
    _add_terms(acc, tr, g, len(a))
    return g * tr.dfdx, tr.f


def _apply_coefficient_signs(acc: Any, m1: int, b: list, form: str, ops: Any) -> None:
    """Form A: dF/db_j carries sgn(b_j), constant within the thread's group: apply it once to the sums."""
    if form == "A":
        for j in range(len(b)):
            acc[m1 + j] = acc[m1 + j] * ops.sgn(b[j])


_KERNELS: Any = None


def _fake_args(cfg: GroupRationalConfig, backward: bool) -> list:
    """Placeholder pointers (with the alignments the launcher guarantees), Int32 sizes and a
    stream: the ABI of the host entries (values are never read at compile time)."""
    import cutlass.cute as cute
    from cutlass import Float32, Int32
    from cutlass.cute.runtime import make_fake_stream, make_ptr

    from .dsl import dsl_type

    el = dsl_type(cfg.dtype)
    gmem = cute.AddressSpace.gmem
    align = cfg.vec * DTYPE_BYTES[cfg.dtype]
    emit_f = backward and cfg.emit_f
    vecs = [make_ptr(el, 1 << 20, gmem, assumed_align=align) for _ in range((3 + emit_f) if backward else 2)]
    coefs = [make_ptr(Float32, 1 << 20, gmem, assumed_align=4) for _ in range(2)]
    part = [make_ptr(Float32, 1 << 20, gmem, assumed_align=4)] if backward else []
    scalars = [Int32(1)] * (9 if emit_f else 7)
    return [*vecs, *part, *coefs, *scalars, make_fake_stream()]


def compile_forward(arch: str, options: str, **fields: Any) -> Any:
    """Compile the forward kernel for ``GroupRationalConfig(**fields)``; ``options`` from
    :func:`cutlass_kernels.dsl.compile_options` (it carries ``arch``).  Primitive args only."""
    import cutlass.cute as cute

    cfg = GroupRationalConfig(**fields)
    return cute.compile(_kernels().Forward(cfg), *_fake_args(cfg, False), options=options)


def compile_backward(arch: str, options: str, **fields: Any) -> Any:
    """Compile the backward kernel for ``GroupRationalBwdConfig(**fields)`` (see compile_forward)."""
    import cutlass.cute as cute

    cfg = GroupRationalBwdConfig(**fields)
    entry = _kernels().BackwardEmitF if cfg.emit_f else _kernels().Backward
    return cute.compile(entry(cfg), *_fake_args(cfg, True), options=options)
