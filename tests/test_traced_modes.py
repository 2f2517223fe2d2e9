"""How the large-|x| exact path is reached (``torch_impl.MODES``), and inductor's CPU lowering.

Eagerly the direct values are used unless some element needs the 1/x evaluation ("eager"); a traced
graph either selects per element ("select", both evaluations in the graph) or, on CPU, holds the
direct evaluation alone and ends in an opaque ``fusedkat::rescue_*`` op that reads one flag on the
host and redoes the call exactly when it is false ("host": about 0.6x the graph to compile and to
run; issue 20's compile time and issue 21's CPU step).  The accuracy of every mode against an exact
reference up to each dtype's max is tests/test_large_inputs.py's; here: the modes agree, the
rescue runs exactly when needed, and the compiled CPU graph is the direct one.
"""
from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import fusedkat
from fusedkat.ops import lowering, torch_impl


def _inputs(seed: int, huge: bool, rows: int = 12, k: int = 32, groups: int = 4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen)
    if huge:  # a few |x| where x^5 overflows fp32 (the true F is finite: ~x)
        idx = torch.randperm(x.numel(), generator=gen)[:7]
        x.view(-1)[idx] = torch.tensor([1e9, -3e10, 6e7, -2e12, 1e20, 5e8, -7e15])
    num = torch.randn(1, 6, generator=gen)
    den = torch.randn(groups, 4, generator=gen)
    grad = torch.randn(rows, k, generator=gen)
    return x, num, den, grad


@pytest.mark.parametrize("huge", [False, True], ids=["ordinary", "huge"])
@pytest.mark.parametrize("form", ["A", "B"])
def test_the_three_modes_agree(form, huge):
    """"host" equals "eager" bit for bit (its rescue *is* the eager call); "select" is the same math
    selected per element, equal up to fp32 rounding; all finite."""
    x, num, den, grad = _inputs(1 + huge, huge)
    out = {m: (torch_impl.group_rational_forward(x, num, den, form, m),
               *torch_impl.group_rational_backward(grad, x, num, den, form, m)) for m in torch_impl.MODES}
    for e, h, s, d in zip(out["eager"], out["host"], out["select"], out["direct"]):
        assert torch.isfinite(e).all()
        assert torch.equal(h, e)
        torch.testing.assert_close(s, e, rtol=1e-6, atol=1e-6 * e.abs().max().item())
        if not huge:  # "direct" (flat layout, its own summation order) is valid only where direct_ok says
            torch.testing.assert_close(d, e, rtol=1e-6, atol=1e-6 * e.abs().max().item())
    assert bool(torch_impl.direct_ok(x, num, den, form)) is not huge


def test_unknown_mode_is_refused():
    x, num, den, grad = _inputs(0, False)
    with pytest.raises(ValueError, match="unknown evaluation mode 'fast'"):
        torch_impl.group_rational_forward(x, num, den, "A", "fast")
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        torch_impl.group_rational_backward(grad, x, num, den, "A", "fast")


@pytest.mark.parametrize("ok", [True, False])
def test_rescue_ops_pass_opcheck(ok):
    """The mutation and fake-tensor contracts of both rescue ops, with the flag either way."""
    x, num, den, grad = _inputs(3, True)
    flag = torch.tensor(ok)
    f = torch_impl.group_rational_forward(x, num, den, "A")
    torch.library.opcheck(torch.ops.fusedkat.rescue_rational_.default, (f.clone(), flag, x, num, den, "A"))
    dx, dn, dd = torch_impl.group_rational_backward(grad, x, num, den, "A")
    torch.library.opcheck(torch.ops.fusedkat.rescue_rational_backward_.default,
                          (dx.clone(), dn.clone(), dd.clone(), flag, grad, x, num, den, "A"))


def test_rescue_overwrites_only_when_the_flag_is_false():
    x, num, den, grad = _inputs(4, True)
    junk = torch.full(x.shape, 7.0)
    torch.ops.fusedkat.rescue_rational_(junk, torch.tensor(True), x, num, den, "B")
    assert (junk == 7.0).all()
    torch.ops.fusedkat.rescue_rational_(junk, torch.tensor(False), x, num, den, "B")
    assert torch.equal(junk, torch_impl.group_rational_forward(x, num, den, "B"))


def test_the_lowering_picks_host_on_cpu_and_select_elsewhere():
    assert lowering.traced_mode(torch.device("cpu")) == "host"
    assert lowering.traced_mode(torch.device("cuda", 0)) == "select"
    assert lowering.traced_mode(torch.device("meta")) == "select"


def _nodes(fn, *args) -> int:
    return sum(n.op == "call_function" for n in make_fx(fn)(*args).graph.nodes)


@pytest.mark.parametrize("form", ["A", "B"])
def test_host_graph_is_the_direct_path_alone(form):
    """What inductor compiles per rational: "host" holds no 1/x evaluation, so its forward and
    backward graphs are at most 0.7x the nodes of "select" (measured 0.61x for form A)."""
    x, num, den, grad = _inputs(5, False)
    counts = {}
    for m in ("host", "select"):
        counts[m] = (_nodes(lambda x, a, b: torch_impl.group_rational_forward(x, a, b, form, m), x, num, den)
                     + _nodes(lambda g, x, a, b: torch_impl.group_rational_backward(g, x, a, b, form, m),
                              grad, x, num, den))
    assert counts["host"] <= 0.7 * counts["select"], counts


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("form", ["A", "B"])
def test_compiled_cpu_graph_rescues_exactly_when_needed(form, monkeypatch):
    """torch.compile on CPU, rationals inlined: ordinary inputs never reach the exact recomputation;
    a call with huge |x| does, and its value and gradients are then the eager ones bit for bit.
    (The default "kernels" lowering's rescue is tests/test_cpu_kernels.py's.)"""
    monkeypatch.setenv("FUSEDKAT_CPU_LOWERING", "inline")
    fwd = _Counter(torch_impl.group_rational_forward)
    bwd = _Counter(torch_impl.group_rational_backward)
    monkeypatch.setattr(torch_impl, "group_rational_forward", fwd)
    monkeypatch.setattr(torch_impl, "group_rational_backward", bwd)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, a, b: fusedkat.group_rational(x, a, b, form=form), fullgraph=True)

    def run(fn, x, num, den, grad):
        leaves = [t.clone().requires_grad_(True) for t in (x, num, den)]
        y = fn(*leaves)
        y.backward(grad)
        return [y.detach()] + [t.grad for t in leaves]

    with fusedkat.use_backend("torch"):
        run(compiled, *_inputs(6, False))  # compiles (the decompositions call torch_impl while traced)
        for huge in (False, True):
            x, num, den, grad = _inputs(6, huge)
            fwd.calls = bwd.calls = 0
            got = run(compiled, x, num, den, grad)
            assert (fwd.calls, bwd.calls) == ((1, 1) if huge else (0, 0))
            want = run(lambda x, a, b: fusedkat.group_rational(x, a, b, form=form), x, num, den, grad)
            for g, w in zip(got, want):
                assert torch.isfinite(g).all()
                if huge:
                    assert torch.equal(g, w)
                else:
                    torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item())
