"""The fuse pass on real Dynamo graphs, inspected node by node (no inductor: fast).

Each test captures the torch-level graph Dynamo hands a backend, runs
``compile_passes.fuse_rational_linear`` on it, checks the rewritten graph node by node, and runs the
rewritten graph (its ops execute eagerly) against the unmodified module and a float64 reference.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import compile_passes
from compile_toys import GroupRationalAct, KANMlpToy, count_targets
from rational_reference import reference_rational

GR = torch.ops.fusedkat.group_rational.default
RL = torch.ops.fusedkat.rational_linear.default
LINEARS = (F.linear, torch._C._nn.linear)


def _n_linear(g: fx.Graph) -> int:
    return sum(1 for n in g.nodes if n.op == "call_function" and n.target in LINEARS)


def capture_and_fuse(module: nn.Module, *inputs: torch.Tensor):
    """Dynamo-capture ``module``; fuse; run the fused graph. Returns (graph before, graph after, n, out)."""
    seen = {}

    def backend(gm: fx.GraphModule, example_inputs):
        seen["before"] = copy.deepcopy(gm.graph)
        seen["n"] = compile_passes.fuse_rational_linear(gm)
        seen["after"] = gm.graph
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(module, backend=backend, fullgraph=True)(*inputs)
    return seen["before"], seen["after"], seen["n"], out


def reference_mlp(m: KANMlpToy, x: torch.Tensor) -> torch.Tensor:
    """float64 KAN MLP (dropout treated as identity), from the independent rational reference."""
    def gr(act: GroupRationalAct, t):
        return reference_rational(t, act.weight_numerator.detach(), act.weight_denominator.detach(), act.form)

    def lin(fc: nn.Linear, t):
        y = t @ fc.weight.detach().double().t()
        return y + fc.bias.detach().double() if fc.bias is not None else y

    return lin(m.fc2, gr(m.act2, lin(m.fc1, gr(m.act1, x.double()))))


@pytest.mark.parametrize("form", ["A", "B"])
@pytest.mark.parametrize("bias", [True, False])
def test_official_style_mlp_is_fused_node_by_node(form, bias):
    torch.manual_seed(0)
    m = KANMlpToy(dim=16, hidden=32, form=form, bias=bias)
    x = torch.randn(3, 7, 16)
    before, after, n, out = capture_and_fuse(m, x)

    assert count_targets(before, GR) == 2 and _n_linear(before) == 2
    assert n == 2
    assert count_targets(after, GR) == 0 and _n_linear(after) == 0
    assert not any(n_.target is F.dropout for n_ in after.nodes)
    fused = [n_ for n_ in after.nodes if n_.target is RL]
    assert len(fused) == 2
    placeholders = {n_.name: n_ for n_ in after.nodes if n_.op == "placeholder"}
    # first fused op reads the graph input x directly; its coefficients/weights are act1's and fc1's
    x0, num0, den0, w0, b0, form0 = fused[0].args
    assert x0.op == "placeholder" and x0.meta["example_value"].shape == x.shape
    assert "act1" in num0.name and "weight_numerator" in num0.name and num0.name in placeholders
    assert "act1" in den0.name and "weight_denominator" in den0.name
    assert "fc1" in w0.name and "weight" in w0.name
    assert (b0 is None) == (not bias) and (b0 is None or "fc1" in b0.name)
    assert form0 == form
    # the second reads the first's output, with act2/fc2's parameters
    assert fused[1].args[0] is fused[0]
    assert "act2" in fused[1].args[1].name and "fc2" in fused[1].args[3].name
    assert fused[0].meta["example_value"].shape == (3, 7, 32)

    ref = reference_mlp(m, x)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, m(x), rtol=1e-5, atol=1e-5)


class _ViewBetween(nn.Module):
    """act -> <shape op> -> linear; the shape op decides whether fusing is legal."""

    def __init__(self, how: str, k: int = 8) -> None:
        super().__init__()
        self.act = GroupRationalAct(groups=2, seed=3)
        self.identity = nn.Identity()
        self.how = how
        self.fc = nn.Linear(k, 6)

    def forward(self, x):  # x [B, N, K] with N == K for the channel-moving cases
        y = self.identity(self.act(x))
        b, n, k = x.shape
        if self.how == "reshape_rows":
            y = y.reshape(b * n, k)
        elif self.how == "view_then_flatten":
            y = y.view(b, n, 1, k).flatten(1, 2).contiguous()
        elif self.how == "transpose_rows":
            y = y.transpose(0, 1)
        elif self.how == "permute_keep_last":
            y = y.permute(1, 0, 2)
        elif self.how == "transpose_last":  # moves channels: must not fuse
            y = y.transpose(-1, -2)
        elif self.how == "reshape_last":  # regroups the last dim: must not fuse
            y = y.reshape(b, n * 2, k // 2).reshape(b, n, k)
        return self.fc(y)


@pytest.mark.parametrize("how", ["identity", "reshape_rows", "view_then_flatten", "transpose_rows",
                                 "permute_keep_last"])
def test_fuses_through_views_that_keep_the_last_dim(how):
    torch.manual_seed(1)
    m = _ViewBetween(how)
    x = torch.randn(2, 8, 8)
    before, after, n, out = capture_and_fuse(m, x)
    assert n == 1
    (rl,) = [n_ for n_ in after.nodes if n_.target is RL]
    assert count_targets(after, GR) == 0 and _n_linear(after) == 0
    # the shape ops now act on x (replayed before the fused op), so the op's input is x or a view of it
    src = rl.args[0]
    n_views = 0
    while src.op != "placeholder":
        n_views += 1
        src = src.args[0]
    assert src.meta["example_value"].shape == x.shape
    assert n_views == {"identity": 0, "reshape_rows": 1, "view_then_flatten": 3}.get(how, 1)
    ref = reference_rational(x, m.act.weight_numerator.detach(), m.act.weight_denominator.detach(), "A")
    ref = {"reshape_rows": lambda t: t.reshape(16, 8), "view_then_flatten": lambda t: t,
           "transpose_rows": lambda t: t.transpose(0, 1), "permute_keep_last": lambda t: t.permute(1, 0, 2),
           "identity": lambda t: t}[how](ref)
    ref = ref @ m.fc.weight.detach().double().t() + m.fc.bias.detach().double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["transpose_last", "reshape_last"])
def test_does_not_fuse_views_that_move_channels(how):
    torch.manual_seed(2)
    m = _ViewBetween(how)
    x = torch.randn(2, 8, 8)
    before, after, n, out = capture_and_fuse(m, x)
    assert n == 0
    assert count_targets(after, GR) == 1 and count_targets(after, RL) == 0 and _n_linear(after) == 1
    torch.testing.assert_close(out, m(x))


class _SharedIntermediate(nn.Module):
    def __init__(self, where: str) -> None:
        super().__init__()
        self.act = GroupRationalAct(groups=2, seed=4)
        self.fc = nn.Linear(8, 8)
        self.fc_b = nn.Linear(8, 8)
        self.where = where

    def forward(self, x):
        y = self.act(x)
        if self.where == "residual":  # F(x) feeds the linear and a residual add
            return self.fc(y) + y
        if self.where == "two_linears":  # F(x) feeds two linears
            return self.fc(y) + self.fc_b(y)
        if self.where == "view_reused":  # a view of F(x) has two users
            v = y.reshape(-1, 8)
            return self.fc(v).sum() + v.sum()
        raise AssertionError(self.where)


@pytest.mark.parametrize("where", ["residual", "two_linears", "view_reused"])
def test_does_not_fuse_when_the_intermediate_has_another_user(where):
    torch.manual_seed(3)
    m = _SharedIntermediate(where)
    x = torch.randn(4, 8)
    before, after, n, out = capture_and_fuse(m, x)
    assert n == 0
    assert count_targets(after, RL) == 0 and count_targets(after, GR) == 1
    assert len(after.nodes) == len(before.nodes)
    torch.testing.assert_close(out, m(x))


def test_live_dropout_blocks_fusion_eval_allows_it():
    torch.manual_seed(4)
    m = KANMlpToy(drop=0.25)
    x = torch.randn(2, 5, 16)
    _, after, n, _ = capture_and_fuse(m.train(), x)
    assert n == 0 and count_targets(after, GR) == 2
    assert sum(1 for n_ in after.nodes if n_.target is F.dropout) == 2
    _, after, n, out = capture_and_fuse(m.eval(), x)
    assert n == 2 and count_targets(after, RL) == 2 and count_targets(after, GR) == 0
    torch.testing.assert_close(out.double(), reference_mlp(m, x), rtol=1e-5, atol=1e-5)


def test_zero_dropout_in_training_is_fused():
    m = KANMlpToy(drop=0.0).train()
    _, after, n, _ = capture_and_fuse(m, torch.randn(2, 3, 16))
    assert n == 2 and not any(n_.target is F.dropout for n_ in after.nodes)


def test_symbolic_trace_graph_with_call_module_nodes():
    """torch.fx.symbolic_trace keeps nn.Linear / nn.Dropout as call_module nodes: fused via get_attr."""
    torch.manual_seed(5)
    m = KANMlpToy(drop=0.0)
    gm = fx.symbolic_trace(m)
    assert any(n.op == "call_module" and n.target == "fc1" for n in gm.graph.nodes)
    n = compile_passes.fuse_rational_linear(gm)
    assert n == 2
    assert not any(n.op == "call_module" and n.target in ("fc1", "fc2", "drop1", "drop2") for n in gm.graph.nodes)
    get_attrs = sorted(n.target for n in gm.graph.nodes if n.op == "get_attr" and n.target.startswith("fc"))
    assert get_attrs == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    x = torch.randn(3, 16)
    torch.testing.assert_close(gm(x).double(), reference_mlp(m, x), rtol=1e-5, atol=1e-5)

    live = fx.symbolic_trace(KANMlpToy(drop=0.5).train())
    assert compile_passes.fuse_rational_linear(live) == 0


def test_gradients_through_the_fused_graph_match_the_reference():
    torch.manual_seed(6)
    m = KANMlpToy()
    x = torch.randn(2, 4, 16, requires_grad=True)
    _, _, n, out = capture_and_fuse(m, x)
    assert n == 2
    out.square().sum().backward()
    params = [m.act1.weight_numerator, m.act1.weight_denominator, m.fc1.weight, m.fc2.bias]
    got = [x.grad] + [p.grad for p in params]

    m64 = copy.deepcopy(m).double()
    x64 = x.detach().double().requires_grad_(True)
    reference_mlp(m64, x64)  # float64 forward from the independent reference...
    y = reference_mlp_autograd(m64, x64)
    y.square().sum().backward()
    want = [x64.grad] + [p.grad for p in (m64.act1.weight_numerator, m64.act1.weight_denominator,
                                          m64.fc1.weight, m64.fc2.bias)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


def reference_mlp_autograd(m: KANMlpToy, x: torch.Tensor) -> torch.Tensor:
    """Differentiable float64 reference (autograd through the direct formula)."""
    def gr(act, t):
        return reference_rational(t, act.weight_numerator, act.weight_denominator, act.form)

    h = F.linear(gr(m.act1, x), m.fc1.weight, m.fc1.bias)
    return F.linear(gr(m.act2, h), m.fc2.weight, m.fc2.bias)


def test_counter_and_bad_input():
    from torch._dynamo.utils import counters

    counters.clear()
    capture_and_fuse(KANMlpToy(), torch.randn(2, 16))
    assert counters[compile_passes.COUNTER_GROUP][compile_passes.COUNTER_KEY] == 2
    with pytest.raises(TypeError, match="GraphModule"):
        compile_passes.fuse_rational_linear(torch.fx.Graph())
    # a graph with nothing to fuse is left untouched
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)))
    code = gm.code
    assert compile_passes.fuse_rational_linear(gm) == 0 and gm.code == code
