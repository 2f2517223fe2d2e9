"""Group-rational forward and forward+backward: fusedkat vs the paper's baselines (Figs. 6-7).

pytest-benchmark group ``rational``; ``extra_info``: impl, pass (``fwd`` | ``fwd+bwd``), groups,
dim, shape, batch.  Two sweeps, as in the paper:

* groups g in {1, 2, 4, 8, 16} at ``[B, N, 512]``  (Fig. 6; paper: [64, 1000, 512])
* dim D in {128, 256, 512, 1024, 2048} at g = 8   (Fig. 7)

Implementations (test ids): ``looped`` and ``vectorized`` (:mod:`bench.baselines`, autograd for the
backward), ``fusedkat_torch`` (the fusedkat op, torch backend, eager), ``fusedkat_compiled``
(``torch.compile`` of the fusedkat op; backend "fusedkat" when compile_passes provides it) and, where
the CuTe kernels run, ``fusedkat_cute``.  Every run checks its result against a float64 Horner
evaluation written here, so with ``--benchmark-disable`` this file is a test that the
implementations agree.
"""
from __future__ import annotations

import pytest
import torch

import fusedkat
from bench import baselines
from bench._harness import bench_size, compile_fn, cute_available, measure

SHAPES = {"small": (4, 128), "paper": (64, 1000)}  # (batch, tokens); the channel dim is swept
GROUPS = (1, 2, 4, 8, 16)
DIMS = (128, 256, 512, 1024, 2048)
BASE_DIM, BASE_GROUPS = 512, 8
IMPLS = ("looped", "vectorized", "fusedkat_torch", "fusedkat_compiled", "fusedkat_cute")
M, N = 5, 4


def _configs() -> list[tuple[int, int]]:
    cfgs = [(g, BASE_DIM) for g in GROUPS] + [(BASE_GROUPS, d) for d in DIMS if d != BASE_DIM]
    return cfgs


def reference(x: torch.Tensor, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Form-A group rational in float64 by Horner's rule, written independently of both
    fusedkat and the baselines (autograd on it gives the reference gradients)."""
    g, k = den.shape[0], x.shape[-1]
    xg = x.double().reshape(-1, g, k // g)
    a = num.double()[0]
    b = den.double().abs()[:, None, :]  # (g, 1, n)
    p = torch.zeros_like(xg) + a[M]
    for i in range(M - 1, -1, -1):
        p = p * xg + a[i]
    ax = xg.abs()
    q = torch.zeros_like(xg) + b[..., N - 1]
    for j in range(N - 2, -1, -1):
        q = q * ax + b[..., j]
    q = 1.0 + q * ax
    return (p / q).reshape(x.shape)


def _impl_fn(impl: str, device: torch.device):
    if impl == "looped":
        return baselines.torch_looped, {}
    if impl == "vectorized":
        return baselines.torch_vectorized, {}
    if impl == "fusedkat_torch":
        def run(x, num, den):
            with fusedkat.use_backend("torch"):
                return fusedkat.group_rational(x, num, den)
        return run, {}
    if impl == "fusedkat_cute":
        reason = cute_available(device)
        if reason is not None:
            pytest.skip(f"CuTe kernel unavailable: {reason}")

        def run(x, num, den):
            with fusedkat.use_backend("cute"):
                return fusedkat.group_rational(x, num, den)
        return run, {}
    if impl == "fusedkat_compiled":
        torch._dynamo.reset()  # one compile per config; no recompile-limit fallback to eager
        compiled, backend = compile_fn(fusedkat.group_rational, fullgraph=True, dynamic=False)
        return compiled, {"compile_backend": backend}
    raise AssertionError(impl)


def _inputs(device, batch, tokens, dim, groups, requires_grad):
    x = (torch.randn(batch, tokens, dim, device=device) * 1.5).requires_grad_(requires_grad)
    num = (torch.randn(1, M + 1, device=device) * 0.5).requires_grad_(requires_grad)
    den = (torch.randn(groups, N, device=device) * 0.5).requires_grad_(requires_grad)
    return x, num, den


def _close(got: torch.Tensor, ref: torch.Tensor, rtol: float) -> bool:
    err = (got.double() - ref).norm() / ref.norm().clamp_min(1e-30)
    return bool(err <= rtol)


_expected_cache: dict = {}


def _expected(key, x, num, den, grad_out):
    """float64 forward (or gradients) for these inputs; cached for the last config, because every
    implementation of a config gets the same seeded inputs."""
    if key not in _expected_cache:
        _expected_cache.clear()
        backward = grad_out is not None
        x64, num64, den64 = (t.detach().double().requires_grad_(backward) for t in (x, num, den))
        ref = reference(x64, num64, den64)
        if backward:
            _expected_cache[key] = (x.detach().clone(), torch.autograd.grad(ref, (x64, num64, den64),
                                                                           grad_out.double()))
        else:
            _expected_cache[key] = (x.detach().clone(), ref.detach())
    x_seen, value = _expected_cache[key]
    assert torch.equal(x_seen, x.detach()), "inputs differ between implementations of one config"
    return value


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("groups,dim", _configs(), ids=lambda v: str(v))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_rational(benchmark, device, impl, groups, dim, pass_):
    batch, tokens = SHAPES[bench_size()]
    backward = pass_ == "fwd+bwd"
    if benchmark.disabled and impl == "fusedkat_compiled" and (groups, dim) != (BASE_GROUPS, BASE_DIM):
        # as a plain test (CI) one compiled config per pass is enough; each compile costs ~10 s
        pytest.skip("fusedkat_compiled is only checked at g=8, D=512 under --benchmark-disable")
    x, num, den = _inputs(device, batch, tokens, dim, groups, backward)
    fn, info = _impl_fn(impl, device)

    if backward:
        grad_out = torch.randn(batch, tokens, dim, device=device)

        def step():
            y = fn(x, num, den)
            return torch.autograd.grad(y, (x, num, den), grad_out)
    else:
        def step():
            with torch.no_grad():
                return fn(x, num, den)

    out = measure(benchmark, step, group="rational", impl=impl, device=device, groups=groups,
                  dim=dim, batch=batch, shape=[batch, tokens, dim], **{"pass": pass_}, **info)

    # the result is checked whether or not it was timed
    want = _expected((str(device), pass_, groups, dim), x, num, den, grad_out if backward else None)
    if not backward:
        assert out.shape == x.shape and out.dtype == x.dtype
        assert _close(out, want, 1e-5), f"{impl} forward disagrees with the float64 reference"
    else:
        for name, got, want in zip(("dx", "d_numerator", "d_denominator"), out, want):
            assert got.shape == want.shape, name
            assert _close(got, want, 1e-4), f"{impl} {name} disagrees with the float64 reference"
