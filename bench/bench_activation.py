"""Activation functions of a ViT MLP, as in the paper's Table 7 (input [64, 1000, 512] on a GPU).

pytest-benchmark group ``activation``; ids/``impl``: ``relu``, ``gelu``, ``silu``, ``prelu``,
``pau`` (one ungrouped rational, "safe PAU" = form B, fusedkat op) and ``grkan`` (GR-KAN's group
rational: 8 groups, form A, fusedkat op).  Both passes (``fwd``, ``fwd+bwd``); throughput and peak
memory come from :func:`bench._harness.measure`.  Each run checks its output (and gradients)
against a float64 evaluation written here or in :mod:`bench.baselines`.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench import baselines
from bench._harness import bench_size, measure
from fusedkat.nn import GroupRational

SHAPES = {"small": (4, 256, 512), "paper": (64, 1000, 512)}
ACTIVATIONS = ("relu", "gelu", "silu", "prelu", "pau", "grkan")


def _module(name: str, device: torch.device) -> torch.nn.Module:
    if name == "relu":
        return torch.nn.ReLU()
    if name == "gelu":
        return torch.nn.GELU()
    if name == "silu":
        return torch.nn.SiLU()
    if name == "prelu":
        return torch.nn.PReLU().to(device)  # one learnable slope, as nn.PReLU() in a timm ViT
    if name == "pau":
        return GroupRational(1, init="swish", form="B").to(device)
    if name == "grkan":
        return GroupRational(8, init="swish", form="A").to(device)
    raise AssertionError(name)


def _reference(name: str, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float64 value of the activation, written independently of the module under test."""
    if name == "relu":
        return x.clamp_min(0)
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "silu":
        return x / (1.0 + torch.exp(-x))
    if name == "prelu":
        w = module.weight.detach().double()
        return torch.where(x >= 0, x, w * x)
    num = module.weight_numerator.detach().double()
    den = module.weight_denominator.detach().double()
    return baselines.torch_vectorized(x, num, den, module.form)


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_activation(benchmark, device, name, pass_):
    shape = SHAPES[bench_size()]
    module = _module(name, device)
    backward = pass_ == "fwd+bwd"
    x = torch.randn(*shape, device=device).requires_grad_(backward)
    grad_out = torch.randn(*shape, device=device)

    if backward:
        def step():
            y = module(x)
            return y, torch.autograd.grad(y, x, grad_out)[0]
    else:
        def step():
            with torch.no_grad():
                return module(x), None

    params = sum(p.numel() for p in module.parameters())
    y, dx = measure(benchmark, step, group="activation", impl=name, device=device, batch=shape[0],
                    shape=list(shape), params=params, **{"pass": pass_})

    x64 = x.detach().double().requires_grad_(True)
    ref = _reference(name, module, x64)
    err = (y.double() - ref).abs().max().item()
    assert err <= 1e-5 * max(1.0, ref.abs().max().item()), f"{name}: forward error {err}"
    if backward:
        (ref_dx,) = torch.autograd.grad(ref, x64, grad_out.double())
        rel = ((dx.double() - ref_dx).norm() / ref_dx.norm()).item()
        assert rel <= 1e-4, f"{name}: input gradient relative error {rel}"
