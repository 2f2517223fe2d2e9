"""The op layer against an independent float64 reference: values, gradients, dtypes, contracts."""
from __future__ import annotations

import pytest
import torch

import fusedkat
from fusedkat.ops import group_rational, rational_linear, use_backend
from rational_reference import (
    reference_grads,
    reference_rational,
    reference_rational_linear,
)

FORMS = ["A", "B"]
# (K, groups, shared numerator)
LAYOUTS = [(8, 1, True), (16, 4, True), (64, 8, True), (48, 16, False), (24, 3, False), (32, 8, False)]


def make_coeffs(groups, shared, m=5, n=4, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num = torch.randn(1 if shared else groups, m + 1, generator=gen, dtype=dtype)
    den = torch.randn(groups, n, generator=gen, dtype=dtype)
    return num, den


def make_x(*shape, dtype=torch.float64, seed=1, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("k,groups,shared", LAYOUTS)
def test_forward_float64_matches_reference(form, k, groups, shared):
    num, den = make_coeffs(groups, shared, seed=k + groups)
    x = make_x(3, 5, k, seed=k)
    y = group_rational(x, num, den, form=form)
    ref = reference_rational(x, num, den, form)
    assert y.dtype == torch.float64 and y.shape == x.shape
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("k,groups,shared", LAYOUTS)
def test_backward_float64_matches_reference(form, k, groups, shared):
    num, den = make_coeffs(groups, shared, seed=2 * k + groups)
    x = make_x(7, k, seed=k + 100)
    go = make_x(7, k, seed=k + 200, scale=1.0)
    leaves = [t.clone().requires_grad_(True) for t in (x, num, den)]
    y = group_rational(*leaves, form=form)
    y.backward(go)
    ref = reference_grads(lambda a, b, c: reference_rational(a, b, c, form), go, x, num, den)
    for leaf, r, name in zip(leaves, ref, ["x", "numerator", "denominator"]):
        assert leaf.grad.shape == r.shape, name
        torch.testing.assert_close(leaf.grad, r, rtol=1e-10, atol=1e-10, msg=f"d{name}, form {form}")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("k,groups,shared", [(16, 4, True), (24, 3, False)])
def test_rational_linear_float64_forward_and_grads(form, with_bias, k, groups, shared):
    n_out = 12
    num, den = make_coeffs(groups, shared, seed=k)
    x = make_x(2, 5, k, seed=k + 1)
    w = make_x(n_out, k, seed=k + 2, scale=0.3)
    b = make_x(n_out, seed=k + 3) if with_bias else None
    go = make_x(2, 5, n_out, seed=k + 4, scale=1.0)
    inputs = [x, num, den, w] + ([b] if with_bias else [])
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    y = rational_linear(*leaves[:4], leaves[4] if with_bias else None, form=form)
    ref_y = reference_rational_linear(x, num, den, w, b, form)
    torch.testing.assert_close(y, ref_y, rtol=1e-12, atol=1e-12)
    y.backward(go)
    ref = reference_grads(
        lambda *t: reference_rational_linear(t[0], t[1], t[2], t[3], t[4] if with_bias else None, form),
        go, *inputs,
    )
    for leaf, r in zip(leaves, ref):
        torch.testing.assert_close(leaf.grad, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_float64(form):
    num, den = make_coeffs(4, False, m=3, n=2, seed=5)
    x = make_x(3, 8, seed=6)
    w = make_x(5, 8, seed=7, scale=0.5)
    b = make_x(5, seed=8)
    args = [t.clone().requires_grad_(True) for t in (x, num, den)]
    assert torch.autograd.gradcheck(lambda *t: group_rational(*t, form=form), args)
    args = [t.clone().requires_grad_(True) for t in (x, num, den, w, b)]
    assert torch.autograd.gradcheck(lambda *t: rational_linear(*t, form=form), args)


@pytest.mark.parametrize("form", FORMS)
def test_opcheck(form):
    num, den = make_coeffs(4, True, dtype=torch.float32, seed=9)
    x = make_x(2, 3, 16, dtype=torch.float32, seed=10)
    w = make_x(6, 16, dtype=torch.float32, seed=11)
    b = make_x(6, dtype=torch.float32, seed=12)
    req = lambda *ts: [t.clone().requires_grad_(True) for t in ts]  # noqa: E731
    torch.library.opcheck(torch.ops.fusedkat.group_rational.default, (*req(x, num, den), form))
    torch.library.opcheck(torch.ops.fusedkat.rational_linear.default, (*req(x, num, den, w, b), form))
    torch.library.opcheck(torch.ops.fusedkat.rational_linear.default, (*req(x, num, den, w), None, form))
    go = make_x(2, 3, 16, dtype=torch.float32, seed=13)
    torch.library.opcheck(torch.ops.fusedkat.group_rational_backward.default, (go, x, num, den, form))
    go6 = make_x(2, 3, 6, dtype=torch.float32, seed=14)
    torch.library.opcheck(
        torch.ops.fusedkat.rational_linear_backward.default, (go6, x, num, den, w, True, form)
    )


@pytest.mark.parametrize("form", FORMS)
def test_float32_precision(form):
    num, den = make_coeffs(8, True, seed=15)
    x = make_x(64, 128, seed=16)
    y = group_rational(x.float(), num.float(), den.float(), form=form)
    assert y.dtype == torch.float32
    ref = reference_rational(x.float().double(), num.float().double(), den.float().double(), form)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("form", FORMS)
def test_low_precision_keeps_dtype_and_evaluates_in_fp32(dtype, form):
    num, den = make_coeffs(4, True, seed=17)
    num, den = num.float(), den.float()
    # |x| up to ~20: x^5 overflows fp16 (max 65504) if evaluated in fp16; fp32 internally is fine.
    x = make_x(32, 64, dtype=dtype, seed=18, scale=6.0)
    assert x.abs().max() > 9
    y = group_rational(x, num, den, form=form)
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = reference_rational(x.double(), num.double(), den.double(), form)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.double(), ref, rtol=2 * eps, atol=2 * eps * ref.abs().mean().item())


@pytest.mark.parametrize("form", FORMS)
def test_bf16_coefficient_gradients_accumulate_in_fp32(form):
    """A bf16 accumulation over 2^17 elements would be off by ~1e-2; fp32 is ~1e-6."""
    num, den = make_coeffs(4, True, seed=19)
    num, den = num.float(), den.float()
    x = make_x(512, 256, dtype=torch.bfloat16, seed=20)
    go = make_x(512, 256, dtype=torch.bfloat16, seed=21, scale=1.0)
    dx, dnum, dden = torch.ops.fusedkat.group_rational_backward(go, x, num, den, form)
    assert dx.dtype == torch.bfloat16 and dnum.dtype == torch.float32 and dden.dtype == torch.float32
    ref = reference_grads(lambda a, b, c: reference_rational(a, b, c, form), go.double(), x, num, den)
    torch.testing.assert_close(dnum.double(), ref[1], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dden.double(), ref[2], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dx.double(), ref[0], rtol=1e-2, atol=1e-2)


def test_autocast_rational_linear_behaves_like_linear():
    num, den = make_coeffs(4, True, seed=22)
    num = num.float().requires_grad_(True)
    den = den.float().requires_grad_(True)
    x = make_x(4, 10, 32, dtype=torch.float32, seed=23).requires_grad_(True)
    lin = torch.nn.Linear(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rational_linear(x, num, den, lin.weight, lin.bias)
        ref_linear = lin(x)
        z = group_rational(x, num, den)
    assert y.dtype == ref_linear.dtype == torch.bfloat16
    assert z.dtype == torch.float32  # elementwise: keeps its input dtype
    ref = reference_rational_linear(x.detach(), num.detach(), den.detach(), lin.weight.detach(), lin.bias.detach(), "A")
    torch.testing.assert_close(y.double(), ref, rtol=3e-2, atol=3e-2 * ref.abs().mean().item())
    y.float().sum().backward()
    assert num.grad.dtype == torch.float32 and den.grad.dtype == torch.float32
    assert x.grad.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32
    assert torch.isfinite(num.grad).all() and num.grad.abs().sum() > 0


def test_backward_saves_x_not_f_of_x():
    num, den = make_coeffs(4, True, dtype=torch.float32, seed=24)
    x = make_x(8, 16, dtype=torch.float32, seed=25).requires_grad_(True)
    w = make_x(4, 16, dtype=torch.float32, seed=26).requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = rational_linear(x, num, den, w)
    ptrs = {t.data_ptr() for t in saved}
    inputs = {x.data_ptr(), num.data_ptr(), den.data_ptr(), w.data_ptr()}
    assert ptrs <= inputs, "rational_linear saved a tensor that is not one of its inputs (F(x)?)"
    assert x.data_ptr() in ptrs
    y.sum().backward()
    assert x.grad is not None


def test_empty_batch_forward_and_backward():
    num, den = make_coeffs(4, True, seed=27)
    x = torch.empty(0, 16, dtype=torch.float64, requires_grad=True)
    nl, dl = num.clone().requires_grad_(True), den.clone().requires_grad_(True)
    w = make_x(3, 16, seed=28).requires_grad_(True)
    y = rational_linear(x, nl, dl, w)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert torch.equal(nl.grad, torch.zeros_like(nl)) and torch.equal(w.grad, torch.zeros_like(w))
    assert group_rational(torch.empty(2, 0, 16, dtype=torch.float64), num, den).shape == (2, 0, 16)


@pytest.mark.parametrize("form", FORMS)
def test_nan_and_inf_propagate_elementwise(form):
    num, den = make_coeffs(2, True, seed=29)
    x = make_x(3, 8, seed=30)
    x[0, 1] = float("nan")
    x[1, 2] = float("inf")
    y = group_rational(x, num, den, form=form)
    ref = reference_rational(x, num, den, form)
    assert torch.isnan(y[0, 1])
    assert torch.equal(torch.isfinite(y), torch.isfinite(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(y[finite], ref[finite], rtol=1e-12, atol=1e-12)


def test_non_contiguous_input():
    num, den = make_coeffs(4, True, seed=31)
    base = make_x(16, 12, seed=32)
    x = base.t()  # [12, 16], non-contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(group_rational(x, num, den), reference_rational(x, num, den, "A"), rtol=1e-12, atol=1e-12)


def test_degrees_are_read_from_coefficient_shapes():
    num, den = make_coeffs(2, True, m=3, n=6, seed=33)
    x = make_x(5, 8, seed=34)
    for form in FORMS:
        torch.testing.assert_close(group_rational(x, num, den, form=form), reference_rational(x, num, den, form), rtol=1e-12, atol=1e-12)


def test_identity_coefficients_are_exact():
    from fusedkat.ops.rational_math import identity_coefficients

    a, b = identity_coefficients()
    x = make_x(4, 16, seed=35)
    num = torch.tensor([a], dtype=torch.float64)
    den = torch.tensor([b] * 4, dtype=torch.float64)
    for form in FORMS:
        assert torch.equal(group_rational(x, num, den, form=form), x)


# --- bad input -------------------------------------------------------------------------------
def _good():
    num, den = make_coeffs(4, True, dtype=torch.float32, seed=36)
    x = make_x(2, 16, dtype=torch.float32, seed=37)
    w = make_x(8, 16, dtype=torch.float32, seed=38)
    b = make_x(8, dtype=torch.float32, seed=39)
    return x, num, den, w, b


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(x=a["x"][:, :15]), ValueError, r"K=15.*not divisible.*g=4"),
        (lambda a: a.update(num=torch.randn(3, 6)), ValueError, r"numerator has 3 rows.*1 \(shared\) or num_groups=4"),
        (lambda a: a.update(num=torch.randn(6)), ValueError, r"numerator must be 2-D"),
        (lambda a: a.update(den=torch.randn(4, 4, 1)), ValueError, r"denominator must be 2-D"),
        (lambda a: a.update(form="C"), ValueError, r"unknown rational form 'C'"),
        (lambda a: a.update(x=torch.ones(2, 16, dtype=torch.int64)), TypeError, r"x must be a floating tensor"),
        (lambda a: a.update(den=torch.ones(4, 4, dtype=torch.int32)), TypeError, r"denominator must be a floating"),
        (lambda a: a.update(x=torch.tensor(1.0)), ValueError, r"at least one dimension"),
        (lambda a: a.update(den=torch.randn(4, 4, device="meta")), ValueError, r"same device"),
    ],
)
def test_group_rational_rejects_bad_input(mutate, exc, match):
    x, num, den, _, _ = _good()
    args = dict(x=x, num=num, den=den, form="A")
    mutate(args)
    with pytest.raises(exc, match=match):
        group_rational(args["x"], args["num"], args["den"], form=args["form"])


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(w=torch.randn(8, 12)), ValueError, r"weight shape \(8, 12\) does not match x shape \(2, 16\)"),
        (lambda a: a.update(w=torch.randn(8, 16, 1)), ValueError, r"weight must be 2-D"),
        (lambda a: a.update(b=torch.randn(7)), ValueError, r"bias shape \(7,\) does not match weight shape \(8, 16\)"),
        (lambda a: a.update(w=torch.randn(8, 16, dtype=torch.float64)), TypeError, r"weight dtype torch.float64 does not match"),
        (lambda a: a.update(b=torch.randn(8, device="meta")), ValueError, r"bias is on meta"),
        (lambda a: a.update(num=torch.randn(2, 6)), ValueError, r"numerator has 2 rows"),
    ],
)
def test_rational_linear_rejects_bad_input(mutate, exc, match):
    x, num, den, w, b = _good()
    args = dict(x=x, num=num, den=den, w=w, b=b)
    mutate(args)
    with pytest.raises(exc, match=match):
        rational_linear(args["x"], args["num"], args["den"], args["w"], args["b"])


def test_backend_forcing(monkeypatch):
    x, num, den, _, _ = _good()
    with use_backend("torch"):
        torch.testing.assert_close(group_rational(x, num, den), reference_rational(x, num, den, "A").float())
    with use_backend("cute"), pytest.raises(RuntimeError, match="backend 'cute' was forced.*CUDA"):
        group_rational(x, num, den)
    with pytest.raises(ValueError, match="unknown backend"):
        with use_backend("triton"):
            pass
    monkeypatch.setenv("FUSEDKAT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FUSEDKAT_BACKEND='bogus'"):
        group_rational(x, num, den)


def test_forced_backend_reaches_other_threads_and_nests():
    """Autograd runs CUDA backward passes on its own device threads: a forced backend must be seen
    there too (on an H100 the thread-local version let the CuTe backward run under use_backend("torch"))."""
    import threading

    from fusedkat.ops import dispatch

    seen = []
    with use_backend("torch"):
        t = threading.Thread(target=lambda: seen.append(dispatch.requested_backend()))
        t.start()
        t.join()
        with use_backend("cute"):
            seen.append(dispatch.requested_backend())
        seen.append(dispatch.requested_backend())
    seen.append(dispatch.requested_backend())
    assert seen == ["torch", "cute", "torch", "auto"]


def test_public_api_surface():
    assert fusedkat.group_rational is group_rational
    assert hasattr(torch.ops.fusedkat, "rational_linear")
