"""The group-rational function: the single source of truth for its definition.

Everything that evaluates or differentiates F — the torch path in :mod:`fusedkat.ops.torch_impl`,
the CuTe DSL kernel generators in :mod:`cutlass_kernels`, the fitting code in :mod:`fusedkat.init`
— takes the degrees, the forms and the formulas from here.  The evaluation functions are written
against a tiny "math backend" (:class:`MathOps`: ``abs``, ``sgn``, ``rcp``) and plain ``+ - *``
so the same Python code runs on torch tensors and on CuTe DSL ``Float32`` register values:
a kernel generator calls :func:`forward` on DSL scalars and gets the very same expression tree.

Definition (degrees m/n, default 5/4)::

    P(x) = a_0 + a_1 x + ... + a_m x^m                    (Horner)
    form "A"  (official KAT CUDA/Triton kernels, hence the released checkpoints):
        Q(x) = 1 + |b_1||x| + |b_2||x|^2 + ... + |b_n||x|^n
    form "B"  (paper Eq. 9, "safe PAU"):
        Q(x) = 1 + |b_1 x + b_2 x^2 + ... + b_n x^n|
    F(x) = P(x) / Q(x)           Q >= 1 in both forms: no poles.

Gradients (paper Appendix E), with ``base = |x|`` (A) or ``x`` (B)::

    dF/da_i = x^i / Q
    dF/db_j = -F / Q * s_j * base^j       s_j = sgn(b_j) (A)  or  sgn(A(x)) (B)
    dF/dx   = (P'(x) - F * Q'(x)) / Q
        A: Q'(x) = sgn(x) * sum_j j |b_j| |x|^(j-1)
        B: Q'(x) = sgn(A(x)) * A'(x),   A(x) = sum_j b_j x^j

``sgn`` is +1 at 0 (``t >= 0 -> +1``), the right derivative of ``|t|``.  With torch.sign's 0 at 0 a
denominator initialised to zero (the identity init of KAT's first rational) would receive a zero
gradient forever in both forms; the official kernels' behaviour there is not documented, so we
pick the choice under which identity-initialised layers can learn.

Parameter layout (official checkpoints): numerator ``(G_a, m+1)`` with ``G_a`` in {1, g}
(1 = shared by all groups, the default), denominator ``(g, n)``.  Channel ``k`` of ``K`` belongs to
group ``k // (K // g)``.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

FORMS: tuple[str, ...] = ("A", "B")
DEFAULT_ORDER: tuple[int, int] = (5, 4)
DEFAULT_FORM: str = "A"
DEFAULT_GROUPS: int = 8


def check_form(form: Any) -> str:
    """Return ``form`` if it names a denominator form, else raise ValueError."""
    if not isinstance(form, str) or form not in FORMS:
        raise ValueError(f"unknown rational form {form!r}; expected one of {FORMS}")
    return form


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a one-line ValueError naming it.

    ``bool`` is rejected although it is an ``int`` subclass (``GroupRational(True)`` is a mistake,
    not one group); so are floats, even integral ones.  Integer types such as numpy's are accepted
    (anything with ``__index__``) and returned as ``int``.
    """
    try:
        v = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        v = None
    if v is None or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return v


@dataclass(frozen=True)
class RationalSpec:
    """Degrees and denominator form of a rational function (hashable, usable as a cache key)."""

    m: int = DEFAULT_ORDER[0]
    n: int = DEFAULT_ORDER[1]
    form: str = DEFAULT_FORM

    def __post_init__(self) -> None:
        check_form(self.form)
        object.__setattr__(self, "m", check_int(self.m, "numerator degree m", 0))
        object.__setattr__(self, "n", check_int(self.n, "denominator degree n", 1))

    @property
    def num_numerator(self) -> int:
        """Number of numerator coefficients, m + 1."""
        return self.m + 1

    @property
    def num_denominator(self) -> int:
        """Number of denominator coefficients, n (the constant 1 is implicit)."""
        return self.n


class MathOps(Protocol):
    """What the evaluation needs beyond ``+ - * <=``; torch and the CuTe DSL each provide one."""

    def abs(self, t: Any) -> Any: ...

    def sgn(self, t: Any) -> Any:
        """+1 for t >= 0, -1 for t < 0."""
        ...

    def rcp(self, t: Any) -> Any:
        """1 / t (kernels may use a fast approximate reciprocal)."""
        ...

    def isfinite(self, t: Any) -> Any:
        """True where t is neither inf nor NaN."""
        ...

    def select(self, cond: Any, a: Any, b: Any) -> Any:
        """a where cond, else b (elementwise)."""
        ...


def horner(coeffs: Sequence[Any], x: Any) -> Any:
    """c_0 + c_1 x + ... + c_d x^d by Horner's rule (d multiplies, d adds)."""
    acc = coeffs[-1]
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


def _horner_no_constant(coeffs: Sequence[Any], x: Any) -> Any:
    """c_1 x + c_2 x^2 + ... + c_d x^d, for coeffs = (c_1, ..., c_d)."""
    return horner(coeffs, x) * x


def numerator(a: Sequence[Any], x: Any) -> Any:
    """P(x) for a = (a_0, ..., a_m)."""
    return horner(a, x)


def numerator_deriv(a: Sequence[Any], x: Any) -> Any:
    """P'(x) = sum_i i a_i x^(i-1); 0 for a constant numerator."""
    if len(a) == 1:
        return a[0] * 0
    return horner([a[i] * i for i in range(1, len(a))], x)


def denominator(b: Sequence[Any], x: Any, form: str, ops: MathOps) -> Any:
    """Q(x) for b = (b_1, ..., b_n) in the given form."""
    if form == "A":
        return _horner_no_constant([ops.abs(c) for c in b], ops.abs(x)) + 1.0
    if form == "B":
        # |x t| written as |x| |t| (the same IEEE value): one FMA with |.| operand modifiers in
        # the kernels instead of a multiply and an add (issue 15's transform budget)
        return ops.abs(horner(list(b), x)) * ops.abs(x) + 1.0
    return check_form(form)


# ---------------------------------------------------------------------------------------------
# Large |x|.  Horner on x overflows long before F does: F is asymptotically a_m/|b_n| x^(m-n)
# (linear for 5/4), but x^5 overflows float32 above ~5e7.  Where the direct evaluation
# overflows (P or Q not finite), F is evaluated in s = 1/x instead, with the polynomials'
# coefficients reversed (PyTorch's softplus, which switches to its asymptote, is the precedent):
#
#     P(x) = x^m Pr(s),      Pr(s) = a_m + a_(m-1) s + ... + a_0 s^m
#     Q(x) = |x|^n Qr(s)     A: Qr = |b_n| + |b_(n-1)| r + ... + |b_1| r^(n-1) + r^n,  r = |s|
#                            B: Qr = |Br(s)| + r^n,  Br(s) = b_n + b_(n-1) s + ... + b_1 s^(n-1)
#     F(x) = sgn(x)^n x^(m-n) Pr(s) / Qr(s)           (x^m / |x|^n = sgn(x)^n x^(m-n))
#
# Pr and Qr are O(1) for large |x| (no overflow); the final factor x^(m-n) is applied last, so
# the result overflows only where F itself does.  Gradients, with inv = 1/Qr:
#
#     P'(x)/Q = sgn(x)^n x^(m-n-1) dPr(s) inv,   dPr(s) = m a_m + (m-1) a_(m-1) s + ... + a_1 s^(m-1)
#     Q'(x)/Q = A: s dQr(r) inv,                 dQr(r) = n|b_n| + (n-1)|b_(n-1)| r + ... + |b_1| r^(n-1)
#               B: sgn(Br) s dBr(s) inv,         dBr(s) = n b_n + (n-1) b_(n-1) s + ... + b_1 s^(n-1)
#     dF/dx = P'/Q - F Q'/Q
#     W_i = x^i / Q:  W_n = sgn(x)^n inv,  W_(i-1) = W_i s,  W_(i+1) = W_i x
#     dF/da_i = W_i;  dF/db_j = -F |W_j| sgn(b_j) (A)  or  -F W_j sgn(A(x)) (B),  sgn(A) = sgn(x)^n sgn(Br)
#
# The direct evaluation is kept wherever it is finite, so results for ordinary inputs are unchanged
# (and the identity rational, whose leading coefficients are zero, stays exact for every x); the
# 1/x one replaces it elsewhere (:func:`rescue`: a select on torch, a branch in the kernels).
# ---------------------------------------------------------------------------------------------


def _times_power(v: Any, x: Any, s: Any, e: int) -> Any:
    """v * x^e for an integer e (x^e as repeated products; s = 1/x for e < 0)."""
    for _ in range(abs(e)):
        v = v * (x if e > 0 else s)
    return v


def _sign_power(v: Any, sg: Any, e: int) -> Any:
    """v * sg^e for sg = +-1."""
    return v * sg if e % 2 else v


def rescue(ok: Any, values: list, far: Callable[[], list], ops: MathOps) -> list:
    """``values`` where ``ok``, else ``far()``, element by element.

    With a ``fallback`` method on ``ops`` (the CuTe DSL: a real branch, ``scf.if``) ``far()`` runs
    only where some element needs it, so the kernels' hot path pays just the finiteness test and
    a branch; otherwise (torch, numpy) both are evaluated and selected (branchless, fusable).
    """
    fallback = getattr(ops, "fallback", None)
    if fallback is not None:
        return fallback(ok, values, far)
    return [ops.select(ok, v, w) for v, w in zip(values, far())]


def in_range(p: Any, q: Any, ops: MathOps) -> Any:
    """True where the direct evaluation P(x), Q(x) is usable (both finite)."""
    return ops.isfinite(ops.abs(p) + q)


def forward_direct(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps) -> tuple[Any, Any]:
    """``(P(x)/Q(x), ok)``: F by Horner on x, and where that is valid (see :func:`in_range`)."""
    p, q = numerator(a, x), denominator(b, x, form, ops)
    return p * ops.rcp(q), in_range(p, q, ops)


def _reversed_parts(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps):
    m, n = len(a) - 1, len(b)
    s = ops.rcp(x)
    sg = ops.sgn(x)
    r = ops.abs(s)
    pr = horner(list(reversed(a)), s)
    if form == "A":
        qr = horner([ops.abs(c) for c in reversed(b)] + [1.0], r)
        br = None
    elif form == "B":
        br = horner(list(reversed(b)), s)
        qr = ops.abs(br) + _times_power(r * 0 + 1.0, r, r, n)
    else:
        check_form(form)
        raise AssertionError("unreachable")
    return m, n, s, sg, r, pr, qr, br


def forward_far(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps) -> Any:
    """F(x) evaluated in 1/x (accurate for large |x|; not for |x| << 1)."""
    m, n, s, sg, _r, pr, qr, _br = _reversed_parts(a, b, x, form, ops)
    return _times_power(_sign_power(pr * ops.rcp(qr), sg, n), x, s, m - n)


def forward(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps) -> Any:
    """F(x) = P(x) / Q(x), finite wherever the true value is (Horner on x, or on 1/x where that overflows)."""
    f, ok = forward_direct(a, b, x, form, ops)
    return rescue(ok, [f], lambda: [forward_far(a, b, x, form, ops)], ops)[0]


def forward_many_direct(a: Sequence[Any], b: Sequence[Any], xs: Sequence[Any], form: str,
                        ops: MathOps) -> tuple[list, Any]:
    """``(values, ok)``: F at each of ``xs`` (one group's values, a kernel thread's vector) by Horner
    on x, and ONE flag for the whole vector, true where every value is valid.

    The test is ``isfinite(sum(P * Q))`` (one FMA per element): an inf or NaN P or Q makes it inf
    or NaN (Q >= 1, so no 0 * inf hides one); it may also overflow where P and Q are both finite
    but huge (|x| of order 1e4 for O(1) coefficients), which only sends that vector down the exact
    path -- never a wrong value.  Where ``ok`` is false, the caller re-evaluates the vector with
    :func:`forward` (the elementwise kernel does it in a second loop after its main loop, so the
    exact path is never if-converted into the hot loop)."""
    ps = [numerator(a, x) for x in xs]
    qs = [denominator(b, x, form, ops) for x in xs]
    fs = [p * ops.rcp(q) for p, q in zip(ps, qs)]
    return fs, _vector_ok(ps, qs, ops)


def _vector_ok(ps: Sequence[Any], qs: Sequence[Any], ops: MathOps) -> Any:
    total = ps[0] * qs[0]
    for p, q in zip(ps[1:], qs[1:]):
        total = total + p * q
    return ops.isfinite(total)


def forward_many(a: Sequence[Any], b: Sequence[Any], xs: Sequence[Any], form: str, ops: MathOps,
                 warp_uniform: bool = False) -> list:
    """:func:`forward` of several values of one group at once (a kernel thread's vector).

    Same results as ``[forward(a, b, x, form, ops) for x in xs]``, but the large-|x| test is made
    once for the whole vector (:func:`forward_many_direct`): the direct values are kept if it
    passes, and only otherwise does the vector take the exact per-element path.  In a kernel that
    is one FMA per element plus one test and one rarely taken branch per vector, instead of a
    per-element branch (which ptxas if-converts, issuing the 1/x evaluation for every element).
    ``warp_uniform`` (kernels whose 32 lanes all reach this point): the test is voted across the
    warp (``ops.fallback_warp``), so the branch is uniform and ptxas may keep it a branch instead of
    predicating the exact path into the hot loop.
    """
    fs, ok = forward_many_direct(a, b, xs, form, ops)
    far = lambda: [forward(a, b, x, form, ops) for x in xs]  # noqa: E731
    if warp_uniform and getattr(ops, "fallback_warp", None) is not None:
        return ops.fallback_warp(ok, fs, far)
    return rescue(ok, fs, far, ops)


@dataclass
class GradTerms:
    """Per-element pieces of F's derivatives at x (see the module docstring).

    ``f`` = F(x); ``dfdx`` = dF/dx; ``num_grad[i]`` = dF/da_i = x^i/Q (i = 0..m);
    ``den_grad[j-1]`` = dF/db_j, except that for form A the factor sgn(b_j), constant per group,
    is left out (``den_sign[j-1]``, applied once to the sums); for form B ``den_sign`` is None.
    """

    f: Any
    dfdx: Any
    num_grad: list
    den_grad: list
    den_sign: Any


def grad_terms_direct(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps,
                      lazy: bool = False) -> tuple[GradTerms, Any]:
    """``(terms, ok)``: the derivatives by Horner on x, and where they are valid (:func:`in_range`).

    ``lazy``: ``num_grad`` / ``den_grad`` are one-shot iterators computing one factor at a time
    (eager torch: one live temporary instead of m+1+n)."""
    t, p, q = _grad_terms_pq(a, b, x, form, ops, lazy)
    return t, in_range(p, q, ops)


def grad_terms_many_direct(a: Sequence[Any], b: Sequence[Any], xs: Sequence[Any], form: str, ops: MathOps,
                           each: Callable[[int, GradTerms], None] | None = None) -> tuple[list | None, Any]:
    """``(terms per value, ok)``: :func:`grad_terms_direct` of several values of one group, with the
    vector's single validity flag of :func:`forward_many_direct` (``isfinite(sum(P * Q))``).  Where
    ``ok`` is false the caller discards these terms and re-evaluates with :func:`grad_terms`.

    ``each(i, terms)`` (optional) is called as soon as value ``i``'s terms exist, and the list is not
    kept (``(None, ok)`` is returned): a kernel consumes one value's m+n+3 terms before the next
    value's are computed, instead of holding the whole vector's in registers."""
    kept, ps, qs = [], [], []
    for i, x in enumerate(xs):
        t, p, q = _grad_terms_pq(a, b, x, form, ops, False)
        ps.append(p)
        qs.append(q)
        if each is None:
            kept.append(t)
        else:
            each(i, t)
    return (kept if each is None else None), _vector_ok(ps, qs, ops)


def _grad_terms_pq(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps,
                   lazy: bool) -> tuple[GradTerms, Any, Any]:
    """:func:`grad_terms_direct`'s terms, with P(x) and Q(x) for the validity tests."""
    p = numerator(a, x)
    dp = numerator_deriv(a, x)
    n = len(b)
    if form == "A":
        ax = ops.abs(x)
        abs_b = [ops.abs(c) for c in b]
        q = _horner_no_constant(abs_b, ax) + 1.0
        # d/dx sum_j |b_j||x|^j = sgn(x) * sum_j j|b_j||x|^(j-1)
        dq = ops.sgn(x) * horner([abs_b[j - 1] * j for j in range(1, n + 1)], ax)
        base, den_sign, elem_sign = ax, [ops.sgn(c) for c in b], None
    elif form == "B":
        poly = _horner_no_constant(list(b), x)
        s = ops.sgn(poly)
        q = ops.abs(poly) + 1.0
        dq = s * horner([b[j - 1] * j for j in range(1, n + 1)], x)
        base, den_sign, elem_sign = x, None, s
    else:
        check_form(form)
        raise AssertionError("unreachable")
    inv_q = ops.rcp(q)
    f = p * inv_q
    dfdx = (dp - f * dq) * inv_q
    def num_grad():  # x^i / Q
        w = inv_q
        for i in range(len(a)):
            yield w
            if i + 1 < len(a):
                w = w * x

    def den_grad():  # -F/Q * base^j (* sgn(A(x)) in form B)
        term = -(f * inv_q)
        if elem_sign is not None:
            term = term * elem_sign
        for _ in range(n):
            term = term * base
            yield term

    nums, dens = (num_grad(), den_grad()) if lazy else (list(num_grad()), list(den_grad()))
    return GradTerms(f=f, dfdx=dfdx, num_grad=nums, den_grad=dens, den_sign=den_sign), p, q


def grad_terms_far(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps) -> GradTerms:
    """The derivatives evaluated in 1/x (accurate for large |x|); formulas above :func:`forward_far`."""
    m, n, s, sg, r, pr, qr, br = _reversed_parts(a, b, x, form, ops)
    inv = ops.rcp(qr)
    f = _times_power(_sign_power(pr * inv, sg, n), x, s, m - n)
    if m >= 1:
        dpr = horner([a[m - k] * (m - k) for k in range(m)], s)
        dp_over_q = _times_power(_sign_power(dpr * inv, sg, n), x, s, m - n - 1)
    else:
        dp_over_q = pr * 0
    if form == "A":
        dqr = horner([ops.abs(b[n - 1 - k]) * (n - k) for k in range(n)], r)
        dq_over_q = s * dqr * inv
        den_sign, elem_sign = [ops.sgn(c) for c in b], None
    else:
        sbr = ops.sgn(br)
        dbr = horner([b[n - 1 - k] * (n - k) for k in range(n)], s)
        dq_over_q = sbr * s * dbr * inv
        den_sign, elem_sign = None, _sign_power(sbr, sg, n)
    dfdx = dp_over_q - f * dq_over_q
    top = max(m, n)
    w = [None] * (top + 1)
    w[n] = _sign_power(inv, sg, n)
    for i in range(n, 0, -1):
        w[i - 1] = w[i] * s
    for i in range(n, top):
        w[i + 1] = w[i] * x
    neg_f = -f
    if elem_sign is not None:
        neg_f = neg_f * elem_sign
    den_grad = [neg_f * (ops.abs(w[j]) if form == "A" else w[j]) for j in range(1, n + 1)]
    return GradTerms(f=f, dfdx=dfdx, num_grad=w[: m + 1], den_grad=den_grad, den_sign=den_sign)


def select_terms(ok: Any, t: GradTerms, far: GradTerms, ops: MathOps) -> GradTerms:
    """``t`` where ``ok``, else ``far``, term by term (``den_sign`` is the same in both)."""
    sel = lambda u, v: ops.select(ok, u, v)  # noqa: E731
    return GradTerms(f=sel(t.f, far.f), dfdx=sel(t.dfdx, far.dfdx),
                     num_grad=[sel(u, v) for u, v in zip(t.num_grad, far.num_grad)],
                     den_grad=[sel(u, v) for u, v in zip(t.den_grad, far.den_grad)], den_sign=t.den_sign)


def _flat(t: GradTerms) -> list:
    return [t.f, t.dfdx, *t.num_grad, *t.den_grad]


def grad_terms(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps) -> GradTerms:
    """F, dF/dx and the coefficient derivatives at x, finite wherever the true values are."""
    t, ok = grad_terms_direct(a, b, x, form, ops)
    vals = rescue(ok, _flat(t), lambda: _flat(grad_terms_far(a, b, x, form, ops)), ops)
    m1 = len(t.num_grad)
    return GradTerms(f=vals[0], dfdx=vals[1], num_grad=vals[2:2 + m1], den_grad=vals[2 + m1:], den_sign=t.den_sign)


def identity_coefficients(m: int = DEFAULT_ORDER[0], n: int = DEFAULT_ORDER[1]) -> tuple[list[float], list[float]]:
    """Exact identity: a = (0, 1, 0, ...), b = 0 (any form)."""
    if m < 1:
        raise ValueError("the identity needs a numerator of degree >= 1")
    return [0.0, 1.0] + [0.0] * (m - 1), [0.0] * n
