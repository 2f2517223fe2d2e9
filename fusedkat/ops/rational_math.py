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
from typing import Any, Protocol, Sequence

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
    """What the evaluation needs beyond ``+ - *``; torch and the CuTe DSL each provide one."""

    def abs(self, t: Any) -> Any: ...

    def sgn(self, t: Any) -> Any:
        """+1 for t >= 0, -1 for t < 0."""
        ...

    def rcp(self, t: Any) -> Any:
        """1 / t (kernels may use a fast approximate reciprocal)."""
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
        return ops.abs(_horner_no_constant(list(b), x)) + 1.0
    return check_form(form)


def forward(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps) -> Any:
    """F(x) = P(x) / Q(x)."""
    return numerator(a, x) * ops.rcp(denominator(b, x, form, ops))


@dataclass
class GradTerms:
    """Per-element pieces of F's derivatives at x (see the module docstring).

    ``dF/da_i = x^i * inv_q``; ``dF/db_j = neg_f_over_q * sign_j * base^j``; ``dF/dx = dfdx``.
    ``sign_j`` is ``den_sign[j]`` when ``den_sign`` is a list (form A: per coefficient),
    otherwise the per-element ``den_sign`` (form B: sgn(A(x))).
    """

    f: Any
    inv_q: Any
    dfdx: Any
    neg_f_over_q: Any
    base: Any
    den_sign: Any


def grad_terms(a: Sequence[Any], b: Sequence[Any], x: Any, form: str, ops: MathOps) -> GradTerms:
    """F, 1/Q, dF/dx and the factors of the coefficient gradients at x."""
    p = numerator(a, x)
    dp = numerator_deriv(a, x)
    n = len(b)
    if form == "A":
        ax = ops.abs(x)
        abs_b = [ops.abs(c) for c in b]
        q = _horner_no_constant(abs_b, ax) + 1.0
        # d/dx sum_j |b_j||x|^j = sgn(x) * sum_j j|b_j||x|^(j-1)
        dq = ops.sgn(x) * horner([abs_b[j - 1] * j for j in range(1, n + 1)], ax)
        base, den_sign = ax, [ops.sgn(c) for c in b]
    elif form == "B":
        poly = _horner_no_constant(list(b), x)
        s = ops.sgn(poly)
        q = ops.abs(poly) + 1.0
        dq = s * horner([b[j - 1] * j for j in range(1, n + 1)], x)
        base, den_sign = x, s
    else:
        check_form(form)
        raise AssertionError("unreachable")
    inv_q = ops.rcp(q)
    f = p * inv_q
    dfdx = (dp - f * dq) * inv_q
    return GradTerms(f=f, inv_q=inv_q, dfdx=dfdx, neg_f_over_q=-(f * inv_q), base=base, den_sign=den_sign)


def identity_coefficients(m: int = DEFAULT_ORDER[0], n: int = DEFAULT_ORDER[1]) -> tuple[list[float], list[float]]:
    """Exact identity: a = (0, 1, 0, ...), b = 0 (any form)."""
    if m < 1:
        raise ValueError("the identity needs a numerator of degree >= 1")
    return [0.0, 1.0] + [0.0] * (m - 1), [0.0] * n
