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
    with pytest.warns(RuntimeWarning, match="disagreed with the torch implementation") as rec:
        y = wrapped(*args)
    name = str(dtype).replace("torch.", "")
    assert f"(({', '.join(map(str, args[0].shape))}), '{name}', 'cpu')" in str(rec[0].message)  # readable key
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


def test_tolerance_follows_the_compute_dtype_not_the_output_dtype():
    """An fp32 weight gradient from a bf16 GEMM carries bf16 rounding: 0.2% of its max is fine when
    the inputs were bf16 (an H100 run produced exactly that) and a failure for fp32 inputs; an
    error of a wrong group's size (tens of percent) fails either way."""
    gen = torch.Generator().manual_seed(11)
    ref = torch.randn(300, 384, generator=gen) * 20
    scale = ref.abs().max()
    bf16_noise = ref + 2e-3 * scale * torch.rand(ref.shape, generator=gen).sign()
    x_bf16, x_fp32 = torch.randn(8, 4).to(torch.bfloat16), torch.randn(8, 4)
    assert selfcheck.compute_dtype((x_bf16, ref, 3, "A")) == torch.bfloat16
    assert selfcheck.compute_dtype((x_fp32, ref)) == torch.float32
    assert selfcheck.compute_dtype(("A", 2)) is None
    assert selfcheck.compare(bf16_noise, ref, selfcheck.compute_dtype((x_bf16, ref))) is None
    assert "max abs error" in selfcheck.compare(bf16_noise, ref, selfcheck.compute_dtype((x_fp32, ref)))
    wrong = ref.clone()
    wrong[:, :48] *= 1.6
    assert "max abs error" in selfcheck.compare(wrong, ref, torch.bfloat16)
