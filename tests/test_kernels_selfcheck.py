"""The first-use self-check that guards every CuTe launcher (runs on CPU with stand-in launchers)."""
from __future__ import annotations

import warnings

import pytest
import torch

from cutlass_kernels import launch, selfcheck
from fusedkat.ops import torch_impl


@pytest.fixture(autouse=True)
def _fresh():
    selfcheck.reset()
    yield
    selfcheck.reset()


def _args(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(16, 32, generator=g)).to(dtype)
    num = torch.randn(1, 6, generator=g)
    den = torch.randn(4, 4, generator=g)
    return x, num, den, "A"


def test_every_launcher_is_checked_against_its_torch_namesake():
    for name in ("group_rational_forward", "group_rational_backward", "rational_linear_forward", "rational_linear_backward"):
        fn = getattr(launch, name)
        assert fn.reference is getattr(torch_impl, name)


def test_correct_kernel_passes_once_and_is_then_trusted():
    calls = {"n": 0}

    def group_rational_forward(*args):  # a correct stand-in "kernel"
        calls["n"] += 1
        return torch_impl.group_rational_forward(*args)

    wrapped = selfcheck.checked(group_rational_forward)
    args = _args()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y1 = wrapped(*args)
        y2 = wrapped(*args)
    assert torch.equal(y1, y2) and calls["n"] == 2
    assert list(selfcheck.verdicts().values()) == ["ok"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wrong_kernel_is_caught_and_replaced_by_the_reference(dtype):
    def group_rational_forward(x, num, den, form):  # a broken "kernel": neighbouring group's coefficients
        return torch_impl.group_rational_forward(x, num, den.roll(1, dims=0), form)

    wrapped = selfcheck.checked(group_rational_forward)
    args = _args(dtype)
    with pytest.warns(RuntimeWarning, match="disagreed with the torch implementation"):
        y = wrapped(*args)
    assert torch.equal(y, torch_impl.group_rational_forward(*args))
    assert list(selfcheck.verdicts().values()) == ["bad"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later calls: reference, no new warning
        assert torch.equal(wrapped(*args), torch_impl.group_rational_forward(*args))


def test_unwritten_outputs_and_wrong_tuple_members_are_caught():
    def group_rational_backward(grad, x, num, den, form):
        dx, dn, dd = torch_impl.group_rational_backward(grad, x, num, den, form)
        dx = dx.clone()
        dx[3] = float("nan")  # a row the kernel never wrote (poisoned allocator)
        return dx, dn, dd

    x, num, den, form = _args()
    grad = torch.randn_like(x)
    with pytest.warns(RuntimeWarning, match="finiteness"):
        selfcheck.checked(group_rational_backward)(grad, x, num, den, form)

    def group_rational_backward(grad, x, num, den, form):  # noqa: F811 - launchers are matched by name
        dx, dn, dd = torch_impl.group_rational_backward(grad, x, num, den, form)
        return dx, dn * 1.2, dd

    selfcheck.reset()
    with pytest.warns(RuntimeWarning, match="output 1"):
        selfcheck.checked(group_rational_backward)(grad, x, num, den, form)


def test_keys_separate_shapes_and_the_switch_disables(monkeypatch):
    wrapped = selfcheck.checked(torch_impl.group_rational_forward)
    x, num, den, form = _args()
    wrapped(x, num, den, form)
    wrapped(x[:8], num, den, form)
    assert len(selfcheck.verdicts()) == 2
    monkeypatch.setenv("FUSEDKAT_KERNEL_SELFCHECK", "0")
    selfcheck.reset()
    wrapped(x, num, den, form)
    assert selfcheck.verdicts() == {}
