"""One channel-mixing layer: GR-KAN vs Linear+GELU (MLP) vs a B-spline KAN (paper Table 2).

pytest-benchmark group ``grkan_layer``; ``impl``: ``grkan`` (fusedkat.nn.GRKAN, eager),
``grkan_compiled`` (torch.compile of it), ``mlp`` (Linear then GELU), ``kan_bspline``
(:mod:`bench.kan_bspline`, G=5, K=3).  Passes ``fwd`` and ``fwd+bwd`` (input and parameter grads).
``extra_info`` holds the measured parameter count and the per-token FLOPs of the paper's Table 2
formulas (``flops_formula``; the MLP's and KAN's activation FLOPs ("FuncFLOPs") are left out, the
paper gives no number for them).  Checks: GR-KAN and MLP outputs against float64 references
written here, the parameter counts against Table 2, the B-spline basis's partition of unity.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench import baselines
from bench._harness import bench_size, compile_fn, measure
from bench.kan_bspline import BSplineKANLinear
from fusedkat.nn import GRKAN

# (batch, tokens, d_in, d_out): ViT-T's fc1 at the small size, ViT-B's fc1 at the paper's
SHAPES = {"small": (4, 64, 192, 768), "paper": (64, 197, 768, 3072)}
IMPLS = ("grkan", "grkan_compiled", "mlp", "kan_bspline")
M, N, G_RAT = 5, 4, 8  # rational degrees and groups
G_SPL, K_SPL = 5, 3  # spline grid and order


class _MLPLayer(torch.nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(d_in, d_out)

    def forward(self, x):
        return F.gelu(self.fc(x))


def _build(impl: str, d_in: int, d_out: int, device):
    info = {}
    if impl in ("grkan", "grkan_compiled"):
        layer = GRKAN(d_in, d_out, num_groups=G_RAT).to(device)
        info["flops_formula"] = (2 * M + 2 * N + 3) * d_in + 2 * d_in * d_out
        info["params_formula"] = d_in * d_out + d_out + (M + 1) + N * G_RAT
    elif impl == "mlp":
        layer = _MLPLayer(d_in, d_out).to(device)
        info["flops_formula"] = 2 * d_in * d_out
        info["params_formula"] = d_in * d_out + d_out
    else:
        layer = BSplineKANLinear(d_in, d_out, G_SPL, K_SPL).to(device)
        k, g = K_SPL, G_SPL
        info["flops_formula"] = d_in * d_out * (9 * k * (g + 1.5 * k) + 2 * g - 2.5 * k + 3)
        info["params_formula"] = d_in * d_out * (g + k + 3) + d_out  # pykan's count; efficient-kan: (G+K+2)*in*out
    fn = layer
    if impl == "grkan_compiled":
        torch._dynamo.reset()
        fn, info["compile_backend"] = compile_fn(layer, fullgraph=True, dynamic=False)
    return layer, fn, info


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_grkan_layer(benchmark, device, impl, pass_):
    batch, tokens, d_in, d_out = SHAPES[bench_size()]
    if benchmark.disabled and impl == "grkan_compiled" and pass_ == "fwd":
        pytest.skip("as a plain test (CI) the compiled layer is checked in the fwd+bwd pass only")
    layer, fn, info = _build(impl, d_in, d_out, device)
    backward = pass_ == "fwd+bwd"
    x = torch.randn(batch, tokens, d_in, device=device).requires_grad_(backward)
    grad_out = torch.randn(batch, tokens, d_out, device=device)
    params = list(layer.parameters())

    if backward:
        def step():
            y = fn(x)
            return y, torch.autograd.grad(y, [x] + params, grad_out)
    else:
        def step():
            with torch.no_grad():
                return fn(x), None

    n_params = sum(p.numel() for p in params)
    y, grads = measure(benchmark, step, group="grkan_layer", impl=impl, device=device, batch=batch,
                       shape=[batch, tokens, d_in, d_out], params=n_params, **{"pass": pass_}, **info)

    assert y.shape == (batch, tokens, d_out) and torch.isfinite(y).all()
    if backward:
        assert all(torch.isfinite(g).all() for g in grads)
    x64 = x.detach().double()
    if impl.startswith("grkan"):
        assert n_params == info["params_formula"]
        f = baselines.torch_vectorized(x64, layer.act.weight_numerator.detach().double(),
                                       layer.act.weight_denominator.detach().double(), layer.act.form)
        ref = F.linear(f, layer.fc.weight.detach().double(), layer.fc.bias.detach().double())
    elif impl == "mlp":
        assert n_params == info["params_formula"]
        h = F.linear(x64, layer.fc.weight.detach().double(), layer.fc.bias.detach().double())
        ref = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    else:
        assert n_params == (G_SPL + K_SPL + 2) * d_in * d_out
        inside = torch.rand(1000, d_in, device=device, dtype=torch.float64) * 5.9 - 2.95
        basis_sum = layer.b_splines(inside).sum(-1)
        assert torch.allclose(basis_sum, torch.ones_like(basis_sum), atol=1e-12), "partition of unity"
        return
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err <= 1e-5, f"{impl}: relative error {err} against the float64 reference"
