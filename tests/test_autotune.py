"""Inductor's custom-op autotuning of the fusedkat ops (fusedkat.ops.autotune), on CPU.

A GPU with the CuTe kernels keeps the ops opaque in inductor graphs; here (no GPU) that situation is
made by keeping them opaque on CPU too (``lowering.decompose_on`` returns False), so the autotuning
lowering really runs: inductor benchmarks the op against its decomposition and inlines the winner.
Results are compared with an independent float64 reference on fresh random inputs."""
import logging

import pytest
import torch

from fusedkat.ops import autotune, lowering
from rational_reference import reference_rational, reference_rational_linear

pytestmark = pytest.mark.skipif(not autotune.available(), reason="this torch has no custom-op autotuning")


@pytest.fixture
def opaque_on_cpu(monkeypatch):
    """The GPU situation on CPU: the ops stay opaque; fresh compile caches so tracing happens."""
    import torch._functorch.config as fconfig
    import torch._inductor.config as iconfig

    monkeypatch.setattr(lowering, "decompose_on", lambda device, op: False)
    torch._dynamo.reset()
    with iconfig.patch(fx_graph_cache=False), fconfig.patch(enable_autograd_cache=False):
        yield
    torch._dynamo.reset()


def _inputs(seed, form):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 10, 32, generator=g)
    num = torch.randn(4, 6, generator=g) * 0.5
    den = torch.randn(4, 4, generator=g) * 0.5
    w = torch.randn(24, 32, generator=g) / 6
    b = torch.randn(24, generator=g)
    return x, num, den, w, b


def test_registration_exists_and_is_idempotent():
    from torch._inductor.lowering import user_lowerings

    assert autotune.register() is True and autotune.register() is True and autotune.is_registered()
    assert torch.ops.fusedkat.rational_linear.default in user_lowerings
    assert torch.ops.fusedkat.group_rational.default in user_lowerings
    # tuple-output ops are refused by torch's autotuning: not registered
    assert torch.ops.fusedkat.rational_linear_backward.default not in user_lowerings


def test_configs_only_under_max_autotune():
    import torch._inductor.config as iconfig

    with iconfig.patch(max_autotune=False):
        assert autotune.configs_for("rational_linear") == []
    with iconfig.patch(max_autotune=True):
        cfgs = autotune.configs_for("rational_linear")
        assert len(autotune.configs_for("group_rational")) == 2
    assert [c.decomposition for c in cfgs] == [None, autotune._rl_decomposed, autotune._rl_cute_unfused]


def test_absent_api_degrades_to_one_debug_line(monkeypatch, caplog):
    monkeypatch.setattr(autotune, "_registered", None)
    monkeypatch.setattr(autotune, "available", lambda: False)
    with caplog.at_level(logging.DEBUG, logger="fusedkat.ops.autotune"):
        assert autotune.register() is False
    assert len(caplog.records) == 1 and "no inductor custom-op autotuning" in caplog.records[0].getMessage()
    assert autotune.is_registered() is False


@pytest.mark.parametrize("form", ["A", "B"])
def test_candidates_match_the_float64_reference(form):
    x, num, den, w, b = _inputs(1, form)
    ref = reference_rational_linear(x.double(), num.double(), den.double(), w.double(), b.double(), form)
    for fn in (autotune._rl_decomposed, autotune._rl_cute_unfused):
        torch.testing.assert_close(fn(x, num, den, w, b, form).double(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(autotune._gr_decomposed(x, num, den, form).double(),
                               reference_rational(x.double(), num.double(), den.double(), form), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["A", "B"])
def test_max_autotune_benchmarks_the_candidates_and_matches_eager(opaque_on_cpu, monkeypatch, form):
    from torch._dynamo.testing import CompileCounterWithBackend

    autotune.register()
    asked = []
    real = autotune.configs_for
    monkeypatch.setattr(autotune, "configs_for", lambda name, fakes=None: asked.append(name) or real(name, fakes))
    x, num, den, w, b = _inputs(2, form)
    params = [t.clone().requires_grad_() for t in (x, num, den, w, b)]

    def f(x, num, den, w, b):
        y = torch.ops.fusedkat.rational_linear(x, num, den, w, b, form)
        return torch.ops.fusedkat.group_rational(y[..., :16].contiguous(), num, den, form)

    import torch._inductor.config as iconfig

    counter = CompileCounterWithBackend("inductor")
    with iconfig.patch(max_autotune=True):  # what mode="max-autotune" sets
        out = torch.compile(f, backend=counter, fullgraph=True)(*params)
    assert counter.frame_count == 1  # fullgraph and one frame: no graph breaks
    assert "rational_linear" in asked and "group_rational" in asked  # the autotuning lowering ran
    xd, nd, dd, wd, bd = (t.double() for t in (x, num, den, w, b))
    ref = reference_rational(reference_rational_linear(xd, nd, dd, wd, bd, form)[..., :16], nd, dd, form)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, f(x, num, den, w, b), rtol=1e-5, atol=1e-5)  # compiled == eager
    out.square().sum().backward()  # the backward ops stay opaque (fallbacks) and still run
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params[:4])


def test_opcheck_still_passes_with_the_registration():
    autotune.register()
    x, num, den, w, b = _inputs(3, "A")
    req = [t.requires_grad_() for t in (x, num, den, w, b)]
    torch.library.opcheck(torch.ops.fusedkat.rational_linear.default, (*req, "A"))
    torch.library.opcheck(torch.ops.fusedkat.group_rational.default, (*req[:3], "A"))
