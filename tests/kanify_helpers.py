"""Shared helpers of the kanify tests (timm and Hugging Face): weights spread, compile with the fuse pass."""
from __future__ import annotations

import torch
from torch import nn

import compile_passes
from fusedkat.models.mlp_finder import find_mlps

RL = torch.ops.fusedkat.rational_linear.default
GR = torch.ops.fusedkat.group_rational.default


@torch.no_grad()
def spread_mlps(model: nn.Module, seed: int = 0) -> int:
    """Random inits give fc1 pre-activations of ~0.02: the activation would be tested only near 0.
    Redraw each MLP's fc1/fc2 so pre-activations are ~N(0, 1) and the fit over [-3, 3] matters.
    Returns the number of MLPs (found by the same finder kanify uses, on the original model)."""
    g = torch.Generator().manual_seed(seed)
    sites, _ = find_mlps(model)
    for s in sites:
        for path, fan_in in ((s.fc1, s.in_features), (s.fc2, s.hidden_features)):
            w = model.get_submodule(path).weight
            w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float64) * fan_in ** -0.5)
    return len(sites)


def count(graph, target) -> int:
    return sum(1 for n in graph.nodes if n.target is target)


def compile_with_fuse_pass(model: nn.Module):
    """``torch.compile(model, fullgraph=True)`` with a backend that runs the project's fuse pass on
    Dynamo's graph and then runs that graph as is (no inductor: seconds, not a minute, on 2 cores).
    Returns (compiled model, list of the fused-pair counts of each graph compiled)."""
    fused: list[int] = []

    def backend(gm, example_inputs):
        fused.append(compile_passes.fuse_rational_linear(gm))
        backend.graphs.append(gm.graph)
        return gm.forward

    backend.graphs = []
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    return compiled, fused, backend.graphs


def assert_state_kept(original: nn.Module, converted: nn.Module) -> set:
    """Every original state_dict entry is in the converted model, equal; returns the added keys."""
    before, after = original.state_dict(), converted.state_dict()
    missing = set(before) - set(after)
    assert not missing, sorted(missing)[:5]
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    added = set(after) - set(before)
    assert all(k.endswith(("weight_numerator", "weight_denominator")) for k in added), sorted(added)[:5]
    return added
