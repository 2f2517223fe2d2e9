"""Empty dimensions (M, K or N = 0) work both ways: outputs and gradients of the right shapes,
zeros where the gradient is a sum over nothing, the bias gradient the column sums of grad_out
(issue 20: the backward crashed on ``reshape(-1, 0)``).  Compared with an autograd float64
reference through the plain formula."""
from __future__ import annotations

import pytest
import torch

import fusedkat
from fusedkat.nn import GRKAN, GroupRational, KANMlp
from rational_reference import reference_rational


@pytest.mark.parametrize("shape", [(3, 0, 4), (3, 8, 0), (0, 8, 4), (0, 0, 0), (2, 0, 0), (2, 3, 0, 4)])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("form", ["A", "B"])
def test_rational_linear_empty_dims_forward_and_backward(shape, groups, form):
    *lead, k, n = shape
    gen = torch.Generator().manual_seed(sum(shape) + groups)
    x = torch.randn(*lead, k, generator=gen, dtype=torch.float64)
    a = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(groups, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(n, generator=gen, dtype=torch.float64)
    g = torch.randn(*lead, n, generator=gen, dtype=torch.float64)
    ins = [t.clone().requires_grad_(True) for t in (x, a, b, w, bias)]
    y = fusedkat.rational_linear(*ins, form=form)
    y.backward(g)
    refs = [t.clone().requires_grad_(True) for t in (x, a, b, w, bias)]
    y_ref = torch.nn.functional.linear(reference_rational(refs[0], refs[1], refs[2], form), refs[3], refs[4])
    y_ref.backward(g)
    assert y.shape == (*lead, n)
    torch.testing.assert_close(y, y_ref)
    for got, ref in zip(ins, refs):
        assert got.grad is not None and got.grad.shape == got.shape
        torch.testing.assert_close(got.grad, ref.grad if ref.grad is not None else torch.zeros_like(got))


@pytest.mark.parametrize("shape", [(0, 8), (3, 0), (0, 0)])
def test_group_rational_empty_backward(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    a = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    fusedkat.group_rational(x, a, b).sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(a.grad, torch.zeros_like(a)) and torch.equal(b.grad, torch.zeros_like(b))


def test_nn_modules_with_an_empty_batch():
    for mod, k in ((GroupRational(2), 8), (GRKAN(8, 4, num_groups=2), 8), (KANMlp(8, 16, num_groups=2), 8)):
        x = torch.randn(0, 5, k, requires_grad=True)
        y = mod(x)
        y.sum().backward()
        assert x.grad.shape == x.shape
        for p in mod.parameters():
            assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), type(mod).__name__
