"""Hypothesis shape fuzzing of the ops: any batch shape, group count, degrees and layout."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from fusedkat.ops import group_rational, rational_linear
from rational_reference import reference_grads, reference_rational, reference_rational_linear


@st.composite
def problems(draw):
    groups = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
    width = draw(st.integers(1, 6))
    lead = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    m = draw(st.integers(1, 6))
    n = draw(st.integers(1, 5))
    shared = draw(st.booleans())
    form = draw(st.sampled_from(["A", "B"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    k = groups * width
    x = 1.5 * torch.randn(*lead, k, generator=gen, dtype=torch.float64)
    num = torch.randn(1 if shared else groups, m + 1, generator=gen, dtype=torch.float64)
    den = torch.randn(groups, n, generator=gen, dtype=torch.float64)
    return x, num, den, form, gen


@settings(max_examples=60, deadline=None)
@given(problems())
def test_group_rational_fuzz(problem):
    x, num, den, form, gen = problem
    leaves = [t.clone().requires_grad_(True) for t in (x, num, den)]
    y = group_rational(*leaves, form=form)
    assert y.shape == x.shape
    torch.testing.assert_close(y, reference_rational(x, num, den, form), rtol=1e-11, atol=1e-11)
    go = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    y.backward(go)
    ref = reference_grads(lambda a, b, c: reference_rational(a, b, c, form), go, x, num, den)
    for leaf, r in zip(leaves, ref):
        torch.testing.assert_close(leaf.grad, r, rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(problems(), st.integers(1, 9), st.booleans())
def test_rational_linear_fuzz(problem, n_out, with_bias):
    x, num, den, form, gen = problem
    w = torch.randn(n_out, x.shape[-1], generator=gen, dtype=torch.float64)
    b = torch.randn(n_out, generator=gen, dtype=torch.float64) if with_bias else None
    inputs = [x, num, den, w] + ([b] if with_bias else [])
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    y = rational_linear(*leaves[:4], leaves[4] if with_bias else None, form=form)
    assert y.shape == (*x.shape[:-1], n_out)
    torch.testing.assert_close(y, reference_rational_linear(x, num, den, w, b, form), rtol=1e-11, atol=1e-11)
    go = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(go)
    ref = reference_grads(
        lambda *t: reference_rational_linear(t[0], t[1], t[2], t[3], t[4] if with_bias else None, form), go, *inputs
    )
    for leaf, r in zip(leaves, ref):
        torch.testing.assert_close(leaf.grad, r, rtol=1e-9, atol=1e-9)
