"""GPU tests of the CuTe group-rational elementwise kernels against a float64 reference.

Fresh random inputs (never zeros), fp32/bf16/fp16, both forms, K from 64 to 3072, ragged row
counts, 1-16 groups, shared and per-group numerators, poisoned allocator (unwritten outputs show
up as NaN).  Skipped without a CUDA GPU (see conftest.py).
"""
from __future__ import annotations

import pytest
import torch

import fusedkat.ops as ops
from fusedkat.ops import dispatch

pytest.importorskip("cutlass")
from cutlass_kernels import launch  # noqa: E402

DTYPES = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative tolerances
SHAPES = [  # (rows, K, groups)
    (1, 64, 1), (7, 64, 16), (197, 192, 16), (33, 768, 8), (1000, 768, 8),
    (5, 1536, 4), (129, 3072, 8), (3, 3072, 16), (250, 384, 2), (17, 96, 16), (2, 100, 4),
]


# ------------------------------------------------------------------------------------------------
# float64 reference, written here: explicit powers per group, gradients by autograd
# ------------------------------------------------------------------------------------------------
def ref_forward(x, num, den, form):
    x, num, den = x.double(), num.double(), den.double()
    g, n = den.shape
    rows = x.reshape(-1, g, x.shape[-1] // g)  # [M, g, K/g]
    a = num if num.shape[0] == g else num.expand(g, -1)
    pw = [rows ** i for i in range(max(a.shape[1], n + 1))]
    p = sum(a[:, i].view(1, g, 1) * pw[i] for i in range(a.shape[1]))
    if form == "A":
        q = 1 + sum(den[:, j - 1].abs().view(1, g, 1) * rows.abs() ** j for j in range(1, n + 1))
    else:
        q = 1 + sum(den[:, j - 1].view(1, g, 1) * pw[j] for j in range(1, n + 1)).abs()
    return (p / q).reshape(x.shape)


def ref_backward(grad, x, num, den, form):
    leaves = [t.detach().double().requires_grad_(True) for t in (x, num, den)]
    out = ref_forward(*leaves, form)
    return torch.autograd.grad(out, leaves, grad.double())


def make_inputs(rows, k, g, dtype, shared=True, seed=0, lead=()):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(*lead, rows, k, generator=gen, device="cuda") * 1.5).to(dtype)
    num = torch.randn(1 if shared else g, 6, generator=gen, device="cuda") * 0.5
    den = torch.randn(g, 4, generator=gen, device="cuda") * 0.5
    grad = torch.randn(x.shape, generator=gen, device="cuda").to(dtype)
    return x, num, den, grad


def _q64(x, den, form):
    """Q(x) in float64, per element of x ``[..., K]`` (groups along K)."""
    den = den.double()
    g, n = den.shape
    rows = x.double().reshape(-1, g, x.shape[-1] // g)
    if form == "A":
        q = 1 + sum(den[:, j - 1].abs().view(1, g, 1) * rows.abs() ** j for j in range(1, n + 1))
    else:
        q = 1 + sum(den[:, j - 1].view(1, g, 1) * rows ** j for j in range(1, n + 1)).abs()
    return q.reshape(x.shape)


def assert_close(got, ref, rtol, what):
    got = got.double()
    assert torch.isfinite(got).all(), f"{what}: non-finite values (unwritten output?)"
    scale = ref.abs().max().clamp_min(1e-6)
    err = (got - ref).abs()
    bound = rtol * (ref.abs() + 0.05 * scale)
    worst = (err - bound).max()
    assert worst <= 0, f"{what}: max err {err.max().item():.3e} over bound (rtol {rtol}, scale {scale.item():.3e})"


def coefficient_scales(grad, x, num, den, form):
    """Per-coefficient sums of |terms| (float64): the size the fp32 accumulation error scales with."""
    g = den.shape[0]
    gx = grad.double().reshape(-1, g, x.shape[-1] // g).abs()
    xa = x.double().reshape(-1, g, x.shape[-1] // g).abs()
    f = ref_forward(x, num, den, form).reshape(gx.shape).abs()
    s_num = torch.stack([(gx * xa ** i).sum(dim=(0, 2)) for i in range(num.shape[1])], dim=1)
    if num.shape[0] == 1:
        s_num = s_num.sum(dim=0, keepdim=True)
    s_den = torch.stack([(gx * f * xa ** j).sum(dim=(0, 2)) for j in range(1, den.shape[1] + 1)], dim=1)
    return s_num, s_den


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("form", ["A", "B"])
@pytest.mark.parametrize("rows,k,g", SHAPES)
def test_forward_matches_float64(rows, k, g, form, dtype, poison):
    x, num, den, _ = make_inputs(rows, k, g, dtype, seed=rows * k + g)
    poison(x)
    y = launch.group_rational_forward(x, num, den, form)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, ref_forward(x, num, den, form), DTYPES[dtype], "F(x)")


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("form", ["A", "B"])
@pytest.mark.parametrize("rows,k,g", SHAPES)
def test_backward_matches_float64(rows, k, g, form, dtype, poison):
    x, num, den, grad = make_inputs(rows, k, g, dtype, seed=7 + rows * k + g)
    poison(x, x)
    dx, dnum, dden = launch.group_rational_backward(grad, x, num, den, form)
    rdx, rnum, rden = ref_backward(grad, x, num, den, form)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert dnum.shape == num.shape and dden.shape == den.shape and dnum.dtype == num.dtype
    assert_close(dx, rdx, DTYPES[dtype], "dx")
    s_num, s_den = coefficient_scales(grad, x, num, den, form)
    assert ((dnum.double() - rnum).abs() <= 1e-4 * s_num + 1e-6).all(), (dnum, rnum)
    assert ((dden.double() - rden).abs() <= 1e-4 * s_den + 1e-6).all(), (dden, rden)


@pytest.mark.parametrize("ones_tail", [True, False], ids=["ones-tail", "no-tail"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("form", ["A", "B"])
@pytest.mark.parametrize("rows,k,g", [(197, 192, 16), (1000, 768, 8), (5, 1536, 4), (17, 96, 16), (2, 100, 4)])
def test_backward_writes_f_and_the_ones_tail(rows, k, g, form, dtype, ones_tail):
    """The F-emitting backward (the unfused rational_linear backward's kernel): F(x) lands in a
    row-strided [rows, K + TAIL] buffer and matches the float64 forward; the tail columns are
    exactly (1, 0, ..., 0) when asked for and untouched otherwise (the buffer is NaN-poisoned);
    dx and the coefficient gradients are bit-identical to the plain backward kernel's."""
    from cutlass_kernels.rational_elementwise import TAIL

    x, num, den, grad = make_inputs(rows, k, g, dtype, seed=11 + rows * k + g)
    f_aug = torch.full((rows, k + TAIL), float("nan"), dtype=dtype, device="cuda")
    dx, dnum, dden = launch._backward(grad, x, num, den, form, f_out=f_aug, ones_tail=ones_tail)
    assert_close(f_aug[:, :k], ref_forward(x, num, den, form), DTYPES[dtype], "F(x) from the backward")
    tail = f_aug[:, k:]
    if ones_tail:
        want = torch.zeros(rows, TAIL, dtype=dtype, device="cuda")
        want[:, 0] = 1
        assert torch.equal(tail, want)
    else:
        assert torch.isnan(tail).all()
    plain = launch.group_rational_backward(grad, x, num, den, form)
    for name, a, b in zip(("dx", "dnum", "dden"), (dx, dnum, dden), plain):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("form", ["A", "B"])
def test_huge_inputs_take_the_exact_pass(form, dtype, poison):
    """|x| from 1e5 to 1e30 in a few scattered elements (x^5 overflows fp32 from ~5e7): the threads
    that meet them redo their share in the kernels' exact pass (rational_elementwise), so F(x), dx,
    F(x) from the backward and the coefficient gradients are finite and match float64 everywhere,
    the huge elements and the ordinary ones of the same threads alike."""
    from cutlass_kernels.rational_elementwise import TAIL

    rows, k, g = 300, 768, 8
    x, num, den, grad = make_inputs(rows, k, g, dtype, seed=21)
    gen = torch.Generator(device="cuda").manual_seed(22)
    where = torch.randperm(rows * k, generator=gen, device="cuda")[:40]
    mag = 10.0 ** (5 + 25 * torch.rand(40, generator=gen, device="cuda"))
    sign = torch.where(torch.rand(40, generator=gen, device="cuda") < 0.5, -1.0, 1.0)
    x.view(-1)[where] = (mag * sign).to(dtype)
    grad = grad * 1e-3  # keeps grad * dF/da_5 ~ grad * x inside fp32 at |x| = 1e30
    poison(x, x)
    ref = ref_forward(x, num, den, form)
    assert_close(launch.group_rational_forward(x, num, den, form), ref, DTYPES[dtype], "F(x), huge |x|")
    f_aug = torch.full((rows, k + TAIL), float("nan"), dtype=dtype, device="cuda")
    dx, dnum, dden = launch._backward(grad, x, num, den, form, f_out=f_aug, ones_tail=True)
    assert_close(f_aug[:, :k], ref, DTYPES[dtype], "F(x) from the backward, huge |x|")
    rdx, rnum, rden = ref_backward(grad, x, num, den, form)
    assert_close(dx, rdx, DTYPES[dtype], "dx, huge |x|")
    # the sums' sizes: sum |g dF/dcoef| (with Q; coefficient_scales leaves Q out, fine for O(1) x only)
    xa = x.double().reshape(-1, g, k // g).abs()
    gq = grad.double().reshape(xa.shape).abs() / _q64(x, den, form).reshape(xa.shape)
    fa = ref.reshape(xa.shape).abs()
    s_num = torch.stack([(gq * xa ** i).sum(dim=(0, 2)) for i in range(num.shape[1])], dim=1).sum(0, keepdim=True)
    s_den = torch.stack([(gq * fa * xa ** j).sum(dim=(0, 2)) for j in range(1, den.shape[1] + 1)], dim=1)
    assert torch.isfinite(dnum).all() and torch.isfinite(dden).all()
    assert ((dnum.double() - rnum).abs() <= 1e-4 * s_num + 1e-6).all(), (dnum, rnum)
    assert ((dden.double() - rden).abs() <= 1e-4 * s_den + 1e-6).all(), (dden, rden)


@pytest.mark.parametrize("form", ["A", "B"])
def test_per_group_numerator_and_batch_dims(form):
    x, num, den, grad = make_inputs(197, 768, 8, torch.bfloat16, shared=False, seed=3, lead=(4,))
    y = launch.group_rational_forward(x, num, den, form)
    assert_close(y, ref_forward(x, num, den, form), DTYPES[torch.bfloat16], "F(x)")
    dx, dnum, dden = launch.group_rational_backward(grad, x, num, den, form)
    rdx, rnum, rden = ref_backward(grad, x, num, den, form)
    s_num, s_den = coefficient_scales(grad, x, num, den, form)
    assert dnum.shape == (8, 6)
    assert ((dnum.double() - rnum).abs() <= 1e-4 * s_num + 1e-6).all()
    assert ((dden.double() - rden).abs() <= 1e-4 * s_den + 1e-6).all()


def test_misaligned_and_non_contiguous_inputs():
    x, num, den, grad = make_inputs(65, 770, 2, torch.float16, seed=11)
    xs = x[:, 1:769]  # 2-byte offset rows, non-contiguous view: falls back to narrower vectors
    for form in ("A", "B"):
        y = launch.group_rational_forward(xs, num, den, form)
        assert_close(y, ref_forward(xs, num, den, form), DTYPES[torch.float16], "F(x) strided")
    flat = torch.randn(1 + 64 * 96, device="cuda", dtype=torch.bfloat16)[1:].view(64, 96)  # misaligned base
    y = launch.group_rational_forward(flat, num, den, "A")
    assert_close(y, ref_forward(flat, num, den, "A"), DTYPES[torch.bfloat16], "F(x) misaligned")


def test_backward_is_deterministic():
    x, num, den, grad = make_inputs(4096, 768, 8, torch.bfloat16, seed=5)
    first = launch.group_rational_backward(grad, x, num, den, "A")
    for _ in range(3):
        again = launch.group_rational_backward(grad, x, num, den, "A")
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_empty_input():
    x = torch.empty(0, 64, device="cuda", dtype=torch.bfloat16)
    num, den = torch.randn(1, 6, device="cuda"), torch.randn(8, 4, device="cuda")
    assert launch.group_rational_forward(x, num, den, "A").shape == (0, 64)
    dx, dnum, dden = launch.group_rational_backward(x, x, num, den, "A")
    assert dx.shape == (0, 64) and torch.equal(dnum, torch.zeros_like(num)) and torch.equal(dden, torch.zeros_like(den))


def test_ops_dispatch_to_cute_on_cuda_and_match_torch(monkeypatch):
    calls = []
    real_fwd, real_bwd = launch.group_rational_forward, launch.group_rational_backward
    monkeypatch.setattr(launch, "group_rational_forward", lambda *a: calls.append("fwd") or real_fwd(*a))
    monkeypatch.setattr(launch, "group_rational_backward", lambda *a: calls.append("bwd") or real_bwd(*a))
    assert dispatch.choose(torch.device("cuda"), "group_rational_forward") == "cute"
    x, num, den, grad = make_inputs(197, 384, 8, torch.float32, seed=9)
    leaves = [t.clone().requires_grad_(True) for t in (x, num, den)]
    y = ops.group_rational(*leaves, form="B")
    y.backward(grad)
    assert calls == ["fwd", "bwd"]
    with ops.use_backend("torch"):
        tl = [t.clone().requires_grad_(True) for t in (x, num, den)]
        yt = ops.group_rational(*tl, form="B")
        yt.backward(grad)
    assert calls == ["fwd", "bwd"]  # forcing torch really bypasses the kernels
    torch.testing.assert_close(y, yt, rtol=1e-4, atol=1e-4)
    for a, b in zip(leaves, tl):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("form", ["A", "B"])
def test_rational_linear_launchers(form):
    x, num, den, _ = make_inputs(197, 384, 8, torch.bfloat16, seed=13)
    gen = torch.Generator(device="cuda").manual_seed(1)
    w = (torch.randn(256, 384, generator=gen, device="cuda") / 20).to(torch.bfloat16)
    b = torch.randn(256, generator=gen, device="cuda").to(torch.bfloat16)
    y = launch.rational_linear_forward(x, num, den, w, b, form)
    ref = ref_forward(x, num, den, form) @ w.double().t() + b.double()
    assert_close(y, ref, 3e-2, "rational_linear")
    go = torch.randn(197, 256, generator=gen, device="cuda").to(torch.bfloat16)
    dx, dnum, dden, dw, db = launch.rational_linear_backward(go, x, num, den, w, True, form)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (256,)
    torch.testing.assert_close(db.float(), go.float().sum(0), rtol=2e-2, atol=2e-2)
    ref_dw = go.double().t() @ ref_forward(x, num, den, form)
    assert_close(dw, ref_dw, 3e-2, "d_weight")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_both_calling_conventions_give_the_same_bits(dtype, monkeypatch, poison):
    """TVM-FFI (ints through tvm_ffi's C ABI) and the DSL executor (cute.Pointer / Int32 / CUstream)
    launch the same compiled code: bitwise-equal outputs for the elementwise kernels (the
    F-writing backward included) and the fused forward and backward GEMMs, and both match the
    float64 reference."""
    from cutlass_kernels import abi
    from cutlass_kernels.gemm import bwd_launch, fwd_launch
    from cutlass_kernels.rational_elementwise import TAIL

    pytest.importorskip("tvm_ffi")
    rows, k, g, n_out = 333, 768, 8, 1536
    x, num, den, grad = make_inputs(rows, k, g, dtype, seed=11)
    w = (torch.randn(n_out, k, device="cuda") / k**0.5).to(torch.bfloat16)
    b = torch.randn(n_out, device="cuda")
    outs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv(abi.ENV_FFI, mode)
        poison(x, x, x)
        y = launch.group_rational_forward(x, num, den, "A")
        dx, dnum, dden = launch.group_rational_backward(grad, x, num, den, "A")
        xb = x.to(torch.bfloat16)
        fused = fwd_launch.rational_linear_forward(xb, num, den, w, b, "A")
        f_aug = torch.full((rows, k + TAIL), float("nan"), dtype=dtype, device="cuda")
        emitted = launch._backward(grad, x, num, den, "A", f_out=f_aug, ones_tail=True)
        go = torch.randn(rows, n_out, device="cuda", generator=torch.Generator(device="cuda").manual_seed(5))
        fused_bwd = bwd_launch.rational_linear_backward(go.to(torch.bfloat16), xb, num, den, w, True, "A")
        torch.cuda.synchronize()
        outs[mode] = (y, dx, dnum, dden, fused, f_aug, *emitted, *fused_bwd)
    for a, c in zip(outs["1"], outs["0"]):
        assert torch.equal(a, c)
    assert_close(outs["1"][0], ref_forward(x, num, den, "A"), DTYPES[dtype], "F(x)")
    ref_fused = torch.nn.functional.linear(ref_forward(xb, num, den, "A"), w.double(), b.double())
    err = (outs["1"][4].double() - ref_fused).norm() / ref_fused.norm()
    assert err < 1e-2, err
