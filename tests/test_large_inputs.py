"""Large |x|: F is asymptotically a_m/|b_n| x^(m-n) (linear for 5/4), so it stays finite long after
x^5 overflows.  Every finite input whose true F (and true gradient) is finite in the dtype must give
a finite, accurate result, on the eager torch path and compiled, both forms, all four dtypes, up
to each dtype's largest value (issue 20).

The reference is exact: Python ``Fraction`` arithmetic on the (exactly representable) inputs,
explicit powers, closed-form derivatives written out here -- independent of rational_math's
Horner / 1/x evaluation and free of overflow.
"""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import fusedkat

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# relative accuracy of one evaluation (compute dtype fp32 except fp64), output rounding included
RTOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float64: 1e-12}


def _sgn(v: Fraction) -> int:
    return -1 if v < 0 else 1


def exact(a: list, b: list, x: float, form: str) -> tuple[Fraction, Fraction, list, list]:
    """``(F, dF/dx, [dF/da_i], [dF/db_j])`` at x, exactly."""
    X = Fraction(x)
    A = [Fraction(v) for v in a]
    B = [Fraction(v) for v in b]
    P = sum(A[i] * X**i for i in range(len(A)))
    dP = sum(i * A[i] * X ** (i - 1) for i in range(1, len(A)))
    if form == "A":
        Q = 1 + sum(abs(B[j - 1]) * abs(X) ** j for j in range(1, len(B) + 1))
        dQ = _sgn(X) * sum(j * abs(B[j - 1]) * abs(X) ** (j - 1) for j in range(1, len(B) + 1))
        dQdb = [_sgn(B[j - 1]) * abs(X) ** j for j in range(1, len(B) + 1)]
    else:
        S = sum(B[j - 1] * X**j for j in range(1, len(B) + 1))
        Q = 1 + abs(S)
        dQ = _sgn(S) * sum(j * B[j - 1] * X ** (j - 1) for j in range(1, len(B) + 1))
        dQdb = [_sgn(S) * X**j for j in range(1, len(B) + 1)]
    F = P / Q
    dfdx = (dP - F * dQ) / Q
    dfda = [X**i / Q for i in range(len(A))]
    dfdb = [-F / Q * d for d in dQdb]
    return F, dfdx, dfda, dfdb


def _inputs(dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Magnitudes from 1e-3 up to the dtype's max (log-spaced, random mantissas), both signs."""
    fmax = torch.finfo(dtype).max
    top = math.log10(fmax)
    e = torch.linspace(-3.0, top, 40, dtype=torch.float64)
    mant = 1.0 + torch.rand(40, generator=gen, dtype=torch.float64)
    v = (10.0**e * mant).clamp(max=fmax)
    extra = torch.tensor([fmax, 1e8, 1e12, 0.0], dtype=torch.float64)
    v = torch.cat([v, extra[extra <= fmax]])
    sign = torch.where(torch.rand(v.shape, generator=gen) < 0.5, -1.0, 1.0).double()
    return (v * sign).to(dtype)


def _finite_in(dtype: torch.dtype, *vals: Fraction, headroom: float = 1.0) -> bool:
    fmax = torch.finfo(dtype).max / headroom
    return all(abs(v) <= fmax for v in vals)


def _case(form: str, dtype: torch.dtype, seed: int, coeffs: str = "random"):
    gen = torch.Generator().manual_seed(seed)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    if coeffs == "random":
        a = torch.randn(1, 6, generator=gen, dtype=cdt)
        b = torch.randn(1, 4, generator=gen, dtype=cdt)
    elif coeffs == "identity":  # KAT's act1 at init: leading coefficients zero, F(x) = x
        a = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=cdt)
        b = torch.zeros(1, 4, dtype=cdt)
    else:  # b_n = 0: F grows like x^2 (lower effective denominator degree)
        a = torch.randn(1, 6, generator=gen, dtype=cdt)
        b = torch.randn(1, 4, generator=gen, dtype=cdt)
        b[0, 3] = 0.0
    x = _inputs(dtype, gen)
    return a, b, x


def _check(form, dtype, a, b, x, y, dx=None, da=None, db=None, g=None):
    al, bl = a[0].tolist(), b[0].tolist()
    rtol = RTOL[dtype]
    sum_a = [Fraction(0)] * len(al)
    sum_b = [Fraction(0)] * len(bl)
    abs_a = [Fraction(0)] * len(al)
    abs_b = [Fraction(0)] * len(bl)
    checked = 0
    for i, xv in enumerate(x.double().tolist()):
        F, dfdx, dfda, dfdb = exact(al, bl, xv, form)
        if not _finite_in(dtype, F, dfdx, *dfda, *dfdb, headroom=1e3):
            continue  # the true value overflows the dtype: inf is then right, not a bug
        checked += 1
        got = y[i].item()
        assert math.isfinite(got), f"form {form} {dtype}: F({xv!r}) = {got}, exact {float(F):.6g}"
        assert abs(Fraction(got) - F) <= rtol * abs(F) + 1e-30, (form, dtype, xv, got, float(F))
        if dx is not None:
            gi = Fraction(g[i].item())
            d = dx[i].item()
            assert math.isfinite(d), f"form {form} {dtype}: dF/dx at {xv!r} = {d}"
            # dF/dx = P'/Q - F Q'/Q cancels for large |x|: the error scales with its two terms
            scale = abs(gi) * (abs(dfdx) + abs(F) / max(abs(Fraction(xv)), Fraction(1)) * 8)
            assert abs(Fraction(d) - gi * dfdx) <= 4 * rtol * scale + Fraction(1, 10**30), (form, dtype, xv, d, float(gi * dfdx))
            for k, v in enumerate(dfda):
                sum_a[k] += gi * v
                abs_a[k] += abs(gi * v)
            for k, v in enumerate(dfdb):
                sum_b[k] += gi * v
                abs_b[k] += abs(gi * v)
    assert checked >= 10, checked
    if da is not None:
        for k in range(len(al)):
            assert math.isfinite(da[k]), (form, dtype, "d a", k, da[k])
            assert abs(Fraction(da[k]) - sum_a[k]) <= 4 * rtol * abs_a[k] + Fraction(1, 10**30), (form, dtype, k)
        for k in range(len(bl)):
            assert math.isfinite(db[k]), (form, dtype, "d b", k, db[k])
            assert abs(Fraction(db[k]) - sum_b[k]) <= 4 * rtol * abs_b[k] + Fraction(1, 10**30), (form, dtype, k)


def _keep_finite_truth(form, dtype, a, b, x):
    """Only inputs whose true F, dF/dx and coefficient gradients fit the dtype (with headroom)."""
    al, bl = a[0].tolist(), b[0].tolist()
    keep = [i for i, xv in enumerate(x.double().tolist())
            if _finite_in(dtype, *[v for t in exact(al, bl, xv, form) for v in (t if isinstance(t, list) else [t])],
                          headroom=1e3)]
    return x[keep]


@pytest.mark.parametrize("coeffs", ["random", "identity", "top_zero"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", ["A", "B"])
def test_eager_forward_and_gradients_finite_and_accurate_up_to_dtype_max(form, dtype, coeffs):
    a, b, x = _case(form, dtype, seed=hash((form, str(dtype), coeffs)) % 2**31, coeffs=coeffs)
    x = _keep_finite_truth(form, dtype, a, b, x)
    with fusedkat.use_backend("torch"):
        xr = x.reshape(1, -1).clone().requires_grad_(True)
        # one group over all columns: the coefficient gradients sum over every input
        ar, br = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        y = fusedkat.group_rational(xr, ar, br, form=form)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        y.backward(g)
    _check(form, dtype, a, b, x, y.detach()[0], xr.grad[0], ar.grad[0].tolist(), br.grad[0].tolist(), g[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", ["A", "B"])
def test_identity_rational_is_exact_for_every_finite_input(form, dtype):
    """KAT's act1 at init (a = (0, 1, 0, ...), b = 0): F(x) = x up to the dtype's max; its leading
    coefficients are zero, so the 1/x evaluation alone would underflow -- the direct one is kept."""
    a, b, x = _case(form, dtype, seed=11, coeffs="identity")
    x = torch.cat([x, torch.tensor([torch.finfo(dtype).max, -torch.finfo(dtype).max], dtype=dtype)])
    y = fusedkat.group_rational(x.reshape(1, -1), a, b, form=form)[0]
    assert torch.equal(y, x)


def test_the_issue_reproducer():
    """``group_rational(torch.full((1, 16), 1e8), ...)`` was inf in fp32/bf16 (float64 value ~ -3e8
    for these coefficients), and NaN at 1e12; the x gradient too."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 6, generator=gen), torch.randn(8, 4, generator=gen)
    for dt in (torch.float32, torch.bfloat16):
        for v in (1e8, 1e12, -1e20):
            x = torch.full((1, 16), v, dtype=dt, requires_grad=True)
            y = fusedkat.group_rational(x, a, b)
            y.sum().backward()
            assert torch.isfinite(y).all() and torch.isfinite(x.grad).all(), (dt, v, y, x.grad)


@pytest.mark.slow
def test_compiled_forward_and_gradients_finite_and_accurate():
    """torch.compile (inductor's lowering of the ops, the branchless select): all dtypes and both
    forms in one graph, so one compile covers them."""
    cases = []
    for form in ("A", "B"):
        for dtype in DTYPES:
            a, b, x = _case(form, dtype, seed=7 + len(cases))
            cases.append((form, dtype, a, b, _keep_finite_truth(form, dtype, a, b, x)))
    torch._dynamo.reset()

    def fn(*xs_and_coeffs):
        outs = []
        for i, (form, *_rest) in enumerate(cases):
            x, a, b = xs_and_coeffs[3 * i: 3 * i + 3]
            outs.append(fusedkat.group_rational(x, a, b, form=form))
        return outs

    compiled = torch.compile(fn, backend="inductor", fullgraph=True)
    args = []
    for _form, _dtype, a, b, x in cases:
        args += [x.reshape(1, -1).clone().requires_grad_(True), a.clone().requires_grad_(True),
                 b.clone().requires_grad_(True)]
    with fusedkat.use_backend("torch"):
        ys = compiled(*args)
        gs = [torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(y.dtype)
              for y in ys]
        torch.autograd.backward(ys, gs)
    for i, (form, dtype, a, b, x) in enumerate(cases):
        xr, ar, br = args[3 * i: 3 * i + 3]
        _check(form, dtype, a, b, x, ys[i].detach()[0], xr.grad[0], ar.grad[0].tolist(), br.grad[0].tolist(), gs[i][0])


def test_rational_linear_large_inputs_finite():
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 16, generator=gen) * 1e10).requires_grad_(True)
    a, b = torch.randn(1, 6, generator=gen), torch.randn(8, 4, generator=gen)
    w = torch.randn(8, 16, generator=gen) * 1e-3
    y = fusedkat.rational_linear(x, a, b, w)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    ref = torch.nn.functional.linear(fusedkat.group_rational(x.detach().double(), a.double(), b.double()), w.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-3 * ref.abs().max().item())


class _BranchingMath:
    """TorchMath with a ``fallback`` like the CuTe DSL's: the far path runs only when the test
    fails (here a Python branch on a 0-d bool), so forward_many's per-vector guard is exercised
    exactly as the kernels take it."""

    def __getattr__(self, name):
        from fusedkat.ops.torch_impl import TorchMath

        return getattr(TorchMath, name)

    calls = 0

    def fallback(self, ok, values, far):
        if bool(ok):
            return list(values)
        type(self).calls += 1
        return list(far())


@pytest.mark.parametrize("form", ["A", "B"])
def test_forward_many_vector_guard_matches_exact(form):
    """rational_math.forward_many (one large-|x| test per vector, as the fused kernels use it):
    vectors of 8 fp32 values mixing ordinary and huge |x| are exact; all-ordinary vectors keep the
    direct values (bit-equal to forward) without taking the exact path."""
    from fusedkat.ops import rational_math as rm

    a, b, x = _case(form, torch.float32, seed=7)
    x = _keep_finite_truth(form, torch.float32, a, b, x)
    al = [a[0, i] for i in range(a.shape[1])]
    bl = [b[0, j] for j in range(b.shape[1])]
    ops = _BranchingMath()
    gen = torch.Generator().manual_seed(3)
    perm = x[torch.randperm(len(x), generator=gen)]
    n = len(perm) // 8 * 8
    ys = []
    for v in perm[:n].view(-1, 8):
        ys.extend(rm.forward_many(al, bl, list(v), form, ops))
    y = torch.stack(ys)
    _check(form, torch.float32, a, b, perm[:n], y)
    assert ops.calls > 0  # the huge-|x| vectors took the exact path
    before = ops.calls
    small = torch.randn(8, generator=gen)
    got = rm.forward_many(al, bl, list(small), form, ops)
    assert ops.calls == before
    want = [rm.forward(al, bl, s, form, type(ops).__mro__[0]()) for s in small]
    assert torch.equal(torch.stack(got), torch.stack(want))


@pytest.mark.parametrize("form", ["A", "B"])
def test_two_pass_vector_scheme_of_the_elementwise_kernels(form):
    """The elementwise kernels' scheme, run on torch fp32 scalars: a hot pass takes the direct
    values and one flag per vector of 8 (rational_math.forward_many_direct /
    grad_terms_many_direct), an exact pass redoes the vectors whose flag failed (forward_many /
    grad_terms).  Combined, F, dF/dx and the coefficient-gradient sums match the exact reference
    for inputs up to fp32's max; the flag fails for every vector holding an overflowing value and
    passes for ordinary ones, whose direct values are bit-equal to the per-element functions; the
    ``each`` callback sees the very terms the list holds."""
    from fusedkat.ops import rational_math as rm
    from fusedkat.ops.torch_impl import TorchMath as ops

    a, b, x = _case(form, torch.float32, seed=17)
    x = _keep_finite_truth(form, torch.float32, a, b, x)
    al = [a[0, i] for i in range(a.shape[1])]
    bl = [b[0, j] for j in range(b.shape[1])]
    gen = torch.Generator().manual_seed(5)
    small = torch.randn(400, generator=gen)  # most vectors of 8 hold only ordinary values
    x = torch.cat([x, small])[torch.randperm(len(x) + 400, generator=gen)]
    n = len(x) // 8 * 8
    x = x[:n]
    g = torch.randn(n, generator=gen)
    ys, dxs, failed, passed = [], [], 0, 0
    sum_a = [torch.zeros(()) for _ in al]
    sum_b = [torch.zeros(()) for _ in bl]
    for vec, gv in zip(x.view(-1, 8), g.view(-1, 8)):
        vals = list(vec)
        fs, ok = rm.forward_many_direct(al, bl, vals, form, ops)
        terms, ok_b = rm.grad_terms_many_direct(al, bl, vals, form, ops)
        seen = []
        _, ok_c = rm.grad_terms_many_direct(al, bl, vals, form, ops, each=lambda i, t: seen.append((i, t)))
        assert bool(ok) == bool(ok_b) == bool(ok_c)
        assert [i for i, _ in seen] == list(range(8))
        for (_, t1), t2 in zip(seen, terms):
            assert torch.equal(t1.f, t2.f) or (t1.f.isnan() and t2.f.isnan())
            assert torch.equal(t1.dfdx, t2.dfdx) or (t1.dfdx.isnan() and t2.dfdx.isnan())
        overflow = any(not math.isfinite(float(rm.numerator(al, v))) for v in vals)
        if overflow:
            assert not bool(ok)
        if bool(ok):
            passed += 1
            for v, f, t in zip(vals, fs, terms):
                assert torch.equal(f, rm.forward(al, bl, v, form, ops))
                assert torch.equal(t.dfdx, rm.grad_terms_direct(al, bl, v, form, ops)[0].dfdx)
        else:  # the exact pass
            failed += 1
            fs = rm.forward_many(al, bl, vals, form, ops)
            terms = [rm.grad_terms(al, bl, v, form, ops) for v in vals]
        ys.extend(fs)
        for gi, t in zip(gv, terms):
            dxs.append(gi * t.dfdx)
            for k, w in enumerate(t.num_grad):
                sum_a[k] = sum_a[k] + gi * w
            for k, w in enumerate(t.den_grad):
                sign = t.den_sign[k] if t.den_sign is not None else 1.0
                sum_b[k] = sum_b[k] + gi * w * sign
    assert failed > 0 and passed > 0, (failed, passed)
    _check(form, torch.float32, a, b, x, torch.stack(ys), dx=torch.stack(dxs),
           da=[float(v) for v in sum_a], db=[float(v) for v in sum_b], g=g)
