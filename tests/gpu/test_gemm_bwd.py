"""GPU tests of the fused GR-KAN backward (dgrad + wgrad GEMMs); skipped without CUDA sm_80+.

With ``FUSEDKAT_FUSED_BWD=1`` on sm_90 the fused backward is issue 16's sm90ws dgrad + one cuBLAS
GEMM (the default of ``FUSEDKAT_BWD_KERNEL``), so the reference, determinism, ``.grad``
accumulation, fake-impl and compiled == eager tests below run it there; the mma.sync pair is
checked there with ``FUSEDKAT_BWD_SM90=0``.

Gradients are compared with autograd through the independent float64 reference
(tests/rational_reference.py) on the *same* bf16/fp16-rounded inputs, by relative Frobenius error:
the kernels round F(x) to the MMA dtype inside wgrad and dx to x's dtype, so the bound is that of a
bf16/fp16 GEMM, not of fp32.
"""
from __future__ import annotations

import pytest
import torch

from rational_reference import reference_grads, reference_rational_linear

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
    pytest.skip("needs a CUDA GPU with sm_80 or newer", allow_module_level=True)
pytest.importorskip("cutlass")

from cutlass_kernels.gemm import bwd_launch  # noqa: E402

# (rows M, K, N, groups, shared numerator): M tails, K in the KAT widths, groups 1..16.
SHAPES = [
    (394, 192, 768, 8, True),
    (130, 768, 192, 8, False),
    (77, 384, 1536, 4, True),
    (256, 128, 64, 16, True),
    (1000, 1536, 384, 1, False),
]
TOL = {torch.bfloat16: 1.5e-2, torch.float16: 4e-3}


def _inputs(rows, k, n_out, g, shared, dtype, form, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(rows, k, device="cuda", generator=gen).to(dtype)
    go = torch.randn(rows, n_out, device="cuda", generator=gen).to(dtype)
    w = (torch.randn(n_out, k, device="cuda", generator=gen) / k**0.5)
    num = torch.randn(1 if shared else g, 6, device="cuda", generator=gen) * 0.5
    den = torch.randn(g, 4, device="cuda", generator=gen) * 0.5
    return go, x, num, den, w


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("form", ["A", "B"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_backward_matches_float64_reference(shape, dtype, form):
    go, x, num, den, w = _inputs(*shape, dtype, form)
    w_mma = w.to(dtype)  # the kernel multiplies by the weight rounded to the MMA dtype
    dx, dnum, dden, dw, db = bwd_launch.rational_linear_backward(go, x, num, den, w, True, form)
    fn = lambda x_, n_, d_, w_, b_: reference_rational_linear(x_, n_, d_, w_, b_, form)  # noqa: E731
    bias = torch.zeros(w.shape[0], device="cuda")
    ref = reference_grads(fn, go, x, num, den, w_mma, bias)
    for name, got, want in zip(("dx", "dnum", "dden", "dw", "db"), (dx, dnum, dden, dw, db), ref):
        assert got.shape == want.shape, name
        assert torch.isfinite(got).all(), name
        assert _rel(got, want) < TOL[dtype], (name, _rel(got, want))
    assert dx.dtype == x.dtype and dw.dtype == w.dtype and dnum.dtype == num.dtype


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("form", ["A", "B"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_unfused_backward_matches_float64_reference(shape, dtype, form, has_bias, monkeypatch):
    """The unfused backward (sm_90's default): cuBLAS dgrad, the F-emitting elementwise kernel, and
    one cuBLAS GEMM against [F(x) | 1] for dW and db.  d_bias is the column sums of dY whatever
    has_bias says (the op's contract); with an fp32 weight (autocast) dW and db come back fp32."""
    from cutlass_kernels import launch

    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "0")
    go, x, num, den, w = _inputs(*shape, dtype, form, seed=17)
    dx, dnum, dden, dw, db = launch.rational_linear_backward(go, x, num, den, w, has_bias, form)
    fn = lambda x_, n_, d_, w_, b_: reference_rational_linear(x_, n_, d_, w_, b_, form)  # noqa: E731
    ref = reference_grads(fn, go, x, num, den, w.to(dtype), torch.zeros(w.shape[0], device="cuda"))
    for name, got, want in zip(("dx", "dnum", "dden", "dw", "db"), (dx, dnum, dden, dw, db), ref):
        assert got.shape == want.shape and got.is_contiguous(), name
        assert torch.isfinite(got).all(), name
        assert _rel(got, want) < TOL[dtype], (name, _rel(got, want))
    assert dx.dtype == x.dtype and dw.dtype == w.dtype == db.dtype and dnum.dtype == num.dtype


def test_unfused_backward_is_bitwise_deterministic(monkeypatch):
    from cutlass_kernels import launch

    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "0")
    args = _inputs(1000, 768, 768, 8, True, torch.bfloat16, "A", seed=19)
    first = launch.rational_linear_backward(*args, True, "A")
    for _ in range(3):
        for a, b in zip(first, launch.rational_linear_backward(*args, True, "A")):
            assert torch.equal(a, b)


@pytest.mark.parametrize("form", ["A", "B"])
def test_fused_backward_is_bitwise_deterministic(form):
    args = _inputs(1000, 768, 768, 8, True, torch.bfloat16, form, seed=3)
    first = bwd_launch.rational_linear_backward(*args, True, form)
    for _ in range(3):
        again = bwd_launch.rational_linear_backward(*args, True, form)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_fused_agrees_with_unfused_path(monkeypatch):
    from cutlass_kernels import launch

    args = _inputs(300, 384, 1536, 8, True, torch.bfloat16, "A", seed=5)
    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "1")
    fused = launch.rational_linear_backward(*args, True, "A")
    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "0")
    unfused = launch.rational_linear_backward(*args, True, "A")
    for name, a, b in zip(("dx", "dnum", "dden", "dw", "db"), fused, unfused):
        assert _rel(a, b) < 2e-2, (name, _rel(a, b))


@pytest.mark.parametrize("fused", ["1", "0"], ids=["fused-bwd", "unfused-bwd"])
def test_autograd_accumulates_into_existing_grad(fused, monkeypatch):
    import fusedkat.ops as ops

    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", fused)
    go, x, num, den, w = _inputs(260, 192, 768, 8, True, torch.bfloat16, "A", seed=7)
    w = w.to(torch.bfloat16)  # the op wants weight and bias in x's dtype
    params = [t.clone().requires_grad_(True) for t in (num, den, w)]
    bias = torch.randn(w.shape[0], device="cuda").to(torch.bfloat16).requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    prior = [torch.randn_like(p) for p in (*params, bias)]
    for p, g0 in zip((*params, bias), prior):
        p.grad = g0.clone()
    with ops.use_backend("cute"):
        y = ops.rational_linear(xr, params[0], params[1], params[2], bias, form="A")
        y.backward(go.to(y.dtype))
    fn = lambda x_, n_, d_, w_, b_: reference_rational_linear(x_, n_, d_, w_, b_, "A")  # noqa: E731
    ref = reference_grads(fn, go, x, num, den, w, bias.detach())
    assert _rel(xr.grad, ref[0]) < TOL[torch.bfloat16]
    for p, g0, r in zip((*params, bias), prior, ref[1:]):
        # bf16 .grad: the accumulation itself rounds, so compare the increment loosely.
        assert _rel(p.grad.double() - g0.double(), r) < 3e-2


@pytest.mark.skipif(torch.cuda.get_device_capability()[0] != 9, reason="the WGMMA dgrad runs on sm_90 only")
@pytest.mark.parametrize("form", ["A", "B"])
def test_sm90_kernels_match_reference_and_sm80(form, monkeypatch):
    """On Hopper the warp-specialized dgrads (own partial-slot layout, F(x) written for cuBLAS):
    check them against the float64 reference and against the mma.sync kernels (FUSEDKAT_BWD_SM90=0)."""
    args = _inputs(300, 384, 1000 // 8 * 8, 8, False, torch.bfloat16, form, seed=11)
    monkeypatch.setenv("FUSEDKAT_BWD_SM90", "0")
    ampere = bwd_launch.rational_linear_backward(*args, True, form)
    monkeypatch.setenv("FUSEDKAT_BWD_SM90", "1")
    go, x, num, den, w = args
    fn = lambda x_, n_, d_, w_, b_: reference_rational_linear(x_, n_, d_, w_, b_, form)  # noqa: E731
    ref = reference_grads(fn, go, x, num, den, w.to(torch.bfloat16), torch.zeros(w.shape[0], device="cuda"))
    for kernel in ("sm90ws", "sm90wspp") if form == "A" else ("sm90wspp",):  # issue 16's dgrad + cuBLAS
        monkeypatch.setenv("FUSEDKAT_BWD_KERNEL", kernel)
        hopper = bwd_launch.rational_linear_backward(*args, True, form)
        for name, h, a, r in zip(("dx", "dnum", "dden", "dw", "db"), hopper, ampere, ref):
            assert _rel(h, r) < TOL[torch.bfloat16], (kernel, name, _rel(h, r))
            assert _rel(h, a) < TOL[torch.bfloat16], (kernel, name, _rel(h, a))


@pytest.mark.skipif(torch.cuda.get_device_capability()[0] != 9, reason="the sm90ws dgrad runs on sm_90 only")
@pytest.mark.parametrize("kernel", ["sm90ws", "sm90wspp"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(25216, 192, 768, 8, True), (25216, 768, 192, 8, True), (77, 200, 64, 5, False),
                                   (3000, 1536, 384, 1, False)])
def test_sm90ws_backward_matches_float64_reference_and_is_deterministic(shape, dtype, kernel, monkeypatch):
    """Issue 16's backward (persistent dgrad writing dx, partials and [F(x) | 1]; cuBLAS dW/db) at a
    KAT-T shape pair and ragged ones (M, K not multiples of 128; fewer tiles than SMs; K/g = 40):
    every gradient against the float64 reference, and bitwise the same on a second call; both the
    cooperative kernel and its ping-pong twin."""
    monkeypatch.setenv("FUSEDKAT_BWD_KERNEL", kernel)
    for form in ("A", "B"):
        go, x, num, den, w = _inputs(*shape, dtype, form, seed=23)
        got = bwd_launch.rational_linear_backward(go, x, num, den, w, True, form)
        fn = lambda x_, n_, d_, w_, b_: reference_rational_linear(x_, n_, d_, w_, b_, form)  # noqa: E731
        ref = reference_grads(fn, go, x, num, den, w.to(dtype), torch.zeros(w.shape[0], device="cuda"))
        for name, a, r in zip(("dx", "dnum", "dden", "dw", "db"), got, ref):
            assert a.shape == r.shape and a.is_contiguous() and torch.isfinite(a).all(), name
            assert _rel(a, r) < TOL[dtype], (form, name, _rel(a, r))
        again = bwd_launch.rational_linear_backward(go, x, num, den, w, True, form)
        assert all(torch.equal(a, b) for a, b in zip(got, again))


@pytest.mark.parametrize("fused", ["1", "0"], ids=["fused-bwd", "unfused-bwd"])
def test_backward_op_outputs_match_its_fake_impl(fused, monkeypatch):
    """opcheck: real outputs have the fake impl's shapes, dtypes and (dense) strides.  The fused
    backward once returned column slices for the coefficient gradients: inductor's stride asserts
    then failed compiled KAT training on an H100."""
    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", fused)
    go, x, num, den, w = _inputs(130, 768, 192, 8, False, torch.bfloat16, "A", seed=13)
    torch.library.opcheck(torch.ops.fusedkat.rational_linear_backward.default,
                          (go, x, num, den, w.to(torch.bfloat16), True, "A"),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("fused", ["1", "0"], ids=["fused-bwd", "unfused-bwd"])
def test_compiled_training_step_matches_eager(fused, monkeypatch):
    """A GR-KAN layer under bf16 autocast: torch.compile (fusedkat backend, the op kept opaque) gives
    the eager gradients (both run the same kernels)."""
    import copy

    from fusedkat.nn import GRKAN

    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", fused)
    torch.manual_seed(0)
    layer = GRKAN(384, 1536, num_groups=8).cuda()
    twin = copy.deepcopy(layer)
    x = torch.randn(4, 197, 384, device="cuda")

    def step(mod, fn):
        mod.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(x)
        y.float().square().mean().backward()
        return {n: p.grad.detach().clone() for n, p in mod.named_parameters()}

    from compile_passes import fusedkat_backend  # the function: the name needs the package's entry point

    torch._dynamo.reset()
    compiled = step(layer, torch.compile(layer, backend=fusedkat_backend, fullgraph=True))
    eager = step(twin, twin)
    for name, g in eager.items():
        assert _rel(compiled[name], g) < 1e-2, (name, _rel(compiled[name], g))


@pytest.mark.skipif(torch.cuda.get_device_capability()[0] != 9, reason="the sm90ws dgrad runs on sm_90 only")
@pytest.mark.parametrize("kernel", ["sm90ws", "sm90wspp"])
@pytest.mark.parametrize("form", ["A", "B"])
def test_sm90ws_backward_is_exact_for_huge_inputs(form, kernel, monkeypatch):
    """Issue 20 in issue 16's dgrad: where x^5 overflows fp32 (|x| > ~5e7) the epilogue's one
    warp-voted test per chunk sends that chunk down the exact per-element path; every gradient stays
    finite and matches the float64 reference, and the ordinary values of the same tiles too."""
    if kernel == "sm90ws" and form == "B":
        pytest.skip("the cooperative sm90ws dgrad is built for form A only")
    monkeypatch.setenv("FUSEDKAT_BWD_KERNEL", kernel)
    go, x, num, den, w = _inputs(394, 192, 768, 8, True, torch.bfloat16, form, seed=29)
    gen = torch.Generator(device="cuda").manual_seed(31)
    idx = torch.randperm(x.numel(), device="cuda", generator=gen)[:40]
    x.view(-1)[idx] = (torch.randn(40, device="cuda", generator=gen).sign() * 10 ** torch.linspace(
        8, 30, 40, device="cuda")).to(x.dtype)
    got = bwd_launch.rational_linear_backward(go, x, num, den, w, True, form)
    fn = lambda x_, n_, d_, w_, b_: reference_rational_linear(x_, n_, d_, w_, b_, form)  # noqa: E731
    ref = reference_grads(fn, go, x, num, den, w.to(x.dtype), torch.zeros(w.shape[0], device="cuda"))
    for name, a, r in zip(("dx", "dnum", "dden", "dw", "db"), got, ref):
        assert torch.isfinite(a).all(), name
        assert _rel(a, r) < TOL[torch.bfloat16], (form, name, _rel(a, r))
