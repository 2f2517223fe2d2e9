"""Inductor's default CPU lowering: each fusedkat op becomes its ``*_cpu_kernel`` twin, whose
implementation is the op's torch code compiled by inductor once per shape
(:mod:`fusedkat.ops.cpu_kernels`; issue 20's compile time).  Here: compiled results against the
float64 reference, the exact large-|x| path, one compiled kernel per key, empty tensors, the op
contracts, and the choice of lowering.
"""
from __future__ import annotations

import pytest
import torch

import fusedkat
from fusedkat.ops import cpu_kernels, lowering
from rational_reference import reference_grads, reference_rational, reference_rational_linear


@pytest.fixture(autouse=True)
def _kernels_lowering(monkeypatch):
    monkeypatch.delenv("FUSEDKAT_CPU_LOWERING", raising=False)  # the default
    torch._dynamo.reset()
    cpu_kernels.clear()
    yield
    torch._dynamo.reset()


def _inputs(seed: int, rows: int = 10, k: int = 32, n_out: int = 24, groups: int = 4, shared: bool = True,
            huge: bool = False, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, rows // 2, k, generator=gen)
    if huge:  # a few |x| where x^5 overflows fp32 (the true F is finite: ~x)
        idx = torch.randperm(x.numel(), generator=gen)[:5]
        x.view(-1)[idx] = torch.tensor([1e9, -3e10, 6e7, -2e12, 5e8])
    num = torch.randn(1 if shared else groups, 6, generator=gen)
    den = torch.randn(groups, 4, generator=gen)
    w = torch.randn(n_out, k, generator=gen) / k**0.5
    b = torch.randn(n_out, generator=gen)
    return x.to(dtype), num, den, w.to(dtype), b.to(dtype)


def _value_and_grads(fn, tensors, grad_seed: int):
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    y = fn(*leaves)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y.dtype)
    y.backward(g)
    return y.detach(), [t.grad for t in leaves], g


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("form", ["A", "B"])
def test_compiled_rational_linear_matches_float64_reference(form, shared, bias):
    x, num, den, w, b = _inputs(11 + shared + 2 * bias, shared=shared)
    tensors = (x, num, den, w) + ((b,) if bias else ())

    def fn(x, num, den, w, b=None):
        return fusedkat.rational_linear(x, num, den, w, b, form=form)

    y, grads, g = _value_and_grads(torch.compile(fn, fullgraph=True), tensors, 3)
    ref_fn = lambda x, num, den, w, b=None: reference_rational_linear(x, num, den, w, b, form)  # noqa: E731
    want = reference_rational_linear(*tensors[:4], tensors[4] if bias else None, form)
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    for got, ref in zip(grads, reference_grads(ref_fn, g, *tensors)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert {k.op for k in cpu_kernels.compiled_kernels()} == {"rational_linear_forward",
                                                             "rational_linear_backward"}


@pytest.mark.parametrize("form", ["A", "B"])
def test_compiled_group_rational_matches_float64_reference(form):
    x, num, den, _, _ = _inputs(21, shared=False)

    def fn(x, num, den):
        return fusedkat.group_rational(x, num, den, form=form)

    y, grads, g = _value_and_grads(torch.compile(fn, fullgraph=True), (x, num, den), 4)
    ref_fn = lambda x, num, den: reference_rational(x, num, den, form)  # noqa: E731
    want = ref_fn(x, num, den)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    for got, ref in zip(grads, reference_grads(ref_fn, g, x, num, den)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert {k.op for k in cpu_kernels.compiled_kernels()} == {"group_rational_forward",
                                                             "group_rational_backward"}


def test_bfloat16_inputs_keep_their_dtype():
    x, num, den, w, b = _inputs(31, dtype=torch.bfloat16)
    fn = torch.compile(lambda x, n, d, w, b: fusedkat.rational_linear(x, n, d, w, b), fullgraph=True)
    y, grads, _ = _value_and_grads(fn, (x, num, den, w, b), 5)
    assert y.dtype == torch.bfloat16 and grads[0].dtype == torch.bfloat16 and grads[1].dtype == torch.float32
    want = reference_rational_linear(x, num, den, w, b, "A")
    torch.testing.assert_close(y.double(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@pytest.mark.parametrize("form", ["A", "B"])
def test_huge_inputs_take_the_exact_path_and_equal_eager(form):
    """The compiled kernel evaluates the direct path only; where its flag says some |x| overflowed,
    the call is redone eagerly: results finite and bit-equal to the eager op's."""
    tensors = _inputs(41, huge=True)

    def fn(x, n, d, w, b):
        return fusedkat.rational_linear(x, n, d, w, b, form=form)

    got = _value_and_grads(torch.compile(fn, fullgraph=True), tensors, 6)
    want = _value_and_grads(fn, tensors, 6)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)


def test_one_kernel_per_key_shared_by_layers_of_one_shape():
    """Three GR-KAN layers of one shape and a fourth of another: 2 forward and 2 backward kernels,
    compiled once and reused on the next step."""
    torch.manual_seed(0)
    layers = torch.nn.Sequential(*[fusedkat.nn.GRKAN(32, 32) for _ in range(3)], fusedkat.nn.GRKAN(32, 16))
    model = torch.compile(layers, fullgraph=True)
    x = torch.randn(3, 7, 32)
    model(x).square().sum().backward()
    keys = cpu_kernels.compiled_kernels()
    assert sorted(k.op for k in keys) == ["rational_linear_backward"] * 2 + ["rational_linear_forward"] * 2
    model(x).square().sum().backward()
    assert cpu_kernels.compiled_kernels() == keys
    assert len(set(keys)) == 4


def _check_against_reference(fn, tensors, form, seed):
    y, grads, g = _value_and_grads(fn, tensors, seed)
    ref_fn = lambda x, num, den, w, b: reference_rational_linear(x, num, den, w, b, form)  # noqa: E731
    want = reference_rational_linear(*tensors, form)
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    for got, ref in zip(grads, reference_grads(ref_fn, g, *tensors)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_a_second_row_count_compiles_one_kernel_for_every_row_count():
    """Batch sizes 5 (x [5, 4, 32]), 3, 7 and 2 through one compiled GR-KAN: the first gets kernels
    specialised to its M, the second a forward and a backward for every M, which the later ones
    reuse (no compile per batch size); every result against the float64 reference."""
    form = "B"
    fn = torch.compile(lambda x, n, d, w, b: fusedkat.rational_linear(x, n, d, w, b, form=form), fullgraph=True)
    x, num, den, w, b = _inputs(71, rows=40)  # [2, 20, 32]
    xs = x.reshape(10, 4, 32)
    _check_against_reference(fn, (xs[:5], num, den, w, b), form, 1)
    first = cpu_kernels.compiled_kernels()
    assert sorted(k.shapes[0][0] for k in first) == [20, 20]  # M = 5 * 4, forward and backward
    _check_against_reference(fn, (xs[5:8], num, den, w, b), form, 2)
    second = cpu_kernels.compiled_kernels()
    assert second[:2] == first and len(second) == 4
    assert all(k.shapes[0][0] == -1 and k == k.any_rows() for k in second[2:])
    for i, rows in enumerate((slice(0, 7), slice(8, 10))):
        _check_against_reference(fn, (xs[rows], num, den, w, b), form, 3 + i)
    assert cpu_kernels.compiled_kernels() == second


def test_a_row_count_the_guards_refuse_gets_its_own_kernel(monkeypatch):
    """A kernel for every M is used only where its compile-time guards hold: with them refusing,
    the next M compiles another (and M = 1, which a trace would specialise, stays specialised)."""
    x, num, den, w, b = _inputs(81, rows=16)
    x2 = x.reshape(16, 32)
    for rows in (6, 9):
        y = cpu_kernels.run("rational_linear_forward", x2[:rows], num, den, w, b, "A")
        torch.testing.assert_close(y.double(), reference_rational_linear(x2[:rows], num, den, w, b, "A"),
                                   rtol=1e-4, atol=1e-4)
    (general,) = cpu_kernels._any_rows
    [kernel] = cpu_kernels._any_rows[general]
    assert kernel.accepts(9) and kernel.accepts(1000)
    monkeypatch.setitem(cpu_kernels._any_rows, general,
                        [cpu_kernels._RowsKernel(kernel.fn, lambda rows: False)])
    y = cpu_kernels.run("rational_linear_forward", x2[:11], num, den, w, b, "A")
    torch.testing.assert_close(y.double(), reference_rational_linear(x2[:11], num, den, w, b, "A"),
                               rtol=1e-4, atol=1e-4)
    assert len(cpu_kernels._any_rows[general]) == 2
    y = cpu_kernels.run("rational_linear_forward", x2[:1], num, den, w, b, "A")
    torch.testing.assert_close(y.double(), reference_rational_linear(x2[:1], num, den, w, b, "A"),
                               rtol=1e-4, atol=1e-4)
    assert sorted(k.shapes[0][0] for k in cpu_kernels._cache) == [1, 6]


def test_kernel_key_is_derived_from_the_call():
    x, num, den, w, b = _inputs(51)
    k1 = cpu_kernels.KernelKey.of("rational_linear_forward", (x, num, den, w, b, "A"))
    assert k1 == cpu_kernels.KernelKey.of("rational_linear_forward", (x + 1, num, den, w, b, "A"))
    assert k1 != cpu_kernels.KernelKey.of("rational_linear_forward", (x, num, den, w, None, "A"))
    assert k1 != cpu_kernels.KernelKey.of("rational_linear_forward", (x, num, den, w, b, "B"))
    assert k1 != cpu_kernels.KernelKey.of("rational_linear_forward", (x[:1], num, den, w, b, "A"))
    assert k1 != cpu_kernels.KernelKey.of("rational_linear_forward", (x.double(), num, den, w, b, "A"))
    assert hash(k1) == hash(cpu_kernels.KernelKey.of("rational_linear_forward", (x, num, den, w, b, "A")))


def test_empty_rows_run_eagerly():
    x, num, den, w, b = _inputs(61)
    fn = torch.compile(lambda x, n, d, w, b: fusedkat.rational_linear(x, n, d, w, b), fullgraph=True)
    y, grads, _ = _value_and_grads(fn, (x[:, :0], num, den, w, b), 7)
    assert y.shape == (2, 0, 24) and grads[0].shape == (2, 0, 32)
    assert torch.equal(grads[1], torch.zeros_like(num)) and torch.equal(grads[3], torch.zeros_like(w))
    assert cpu_kernels.compiled_kernels() == ()


def test_twin_ops_pass_opcheck():
    x, num, den, w, b = _inputs(71)
    grad = torch.randn(x.shape[:-1] + (w.shape[0],))
    ops = torch.ops.fusedkat
    torch.library.opcheck(ops.rational_linear_cpu_kernel.default, (x, num, den, w, b, "A"))
    torch.library.opcheck(ops.rational_linear_backward_cpu_kernel.default, (grad, x, num, den, w, True, "B"))
    torch.library.opcheck(ops.group_rational_cpu_kernel.default, (x, num, den, "B"))
    torch.library.opcheck(ops.group_rational_backward_cpu_kernel.default, (x.clone(), x, num, den, "A"))


def test_unknown_op_and_lowering_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="no compiled CPU kernel for 'gelu'"):
        cpu_kernels.run("gelu", torch.ones(1))
    monkeypatch.setenv("FUSEDKAT_CPU_LOWERING", "fast")
    with pytest.raises(ValueError, match="FUSEDKAT_CPU_LOWERING='fast' is not one of"):
        lowering.cpu_lowering()


def test_lowering_state_names_the_cpu_lowering(monkeypatch):
    """The compile caches' key (lowering.decomposition_key) changes with the CPU lowering."""
    monkeypatch.setenv("FUSEDKAT_CPU_LOWERING", "inline")
    inline = lowering.lowering_state()
    monkeypatch.setenv("FUSEDKAT_CPU_LOWERING", "kernels")
    assert "cpu=kernels" in lowering.lowering_state() and "cpu=inline" in inline
