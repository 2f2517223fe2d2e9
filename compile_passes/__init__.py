"""torch.compile integration for fusedkat: graph passes, the ``"fusedkat"`` backend, lowering.

Two ways to get ``fusedkat::rational_linear`` into a model written as separate modules (a rational
activation, an optional dropout, an ``nn.Linear`` — like the official KAT code's
``act1 -> drop1 -> fc1``), with no edits to the model:

1. the backend::

       model = torch.compile(model, backend="fusedkat")          # mode=/options= go to inductor

2. or, for plain ``torch.compile(model)``, hook the pass into inductor once per process::

       import compile_passes
       compile_passes.install()        # compile_passes.uninstall() undoes it

Either way the pass :func:`fuse_rational_linear` rewrites ``group_rational -> [dropout p=0 / eval,
nn.Identity, views keeping the last dim] -> linear`` into one ``fusedkat::rational_linear``, and the
device-aware lowering (:mod:`fusedkat.ops.lowering`) keeps that op opaque where the fused GPU kernel
runs and turns it into torch ops inductor fuses elsewhere (CPU).  To see what was fused::

       with compile_passes.capture_graphs() as graphs:
           model(x)                           # first call compiles
       graphs[0].fused, graphs[0].graph      # pairs fused, the torch-level graph after the pass

The number of pairs fused is also counted in ``torch._dynamo.utils.counters["fusedkat"]
["rational_linear_fused"]``.  This package does not import timm, nor inductor until it is used.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch.fx as fx

from .fuse import COUNTER_GROUP, COUNTER_KEY, _observers, fuse_rational_linear

__all__ = [
    "fuse_rational_linear",
    "fusedkat_backend",
    "install",
    "uninstall",
    "is_installed",
    "capture_graphs",
    "CapturedGraph",
    "COUNTER_GROUP",
    "COUNTER_KEY",
]


def fusedkat_backend(gm, example_inputs, **kwargs):
    """The ``"fusedkat"`` torch.compile backend; see :mod:`compile_passes.backend`."""
    from .backend import fusedkat_backend as _backend

    return _backend(gm, example_inputs, **kwargs)


def install() -> None:
    """Run the fuse pass inside every inductor compile (``torch.compile(m)``) in this process.

    Appends the pass to ``torch._inductor.config.pre_grad_custom_pass`` (keeping any pass already
    there) and registers the device-aware lowering.  Idempotent.  The pass implements inductor's
    ``CustomGraphPass.uuid()``, so compiled graphs stay cacheable.
    """
    from torch._inductor import config

    from fusedkat.ops.lowering import register_inductor_decompositions

    from .backend import with_fuse_pass

    register_inductor_decompositions()
    config.pre_grad_custom_pass = with_fuse_pass(config.pre_grad_custom_pass)


def uninstall() -> None:
    """Remove the pass that :func:`install` added (other pre-grad passes stay)."""
    from torch._inductor import config

    from .backend import fuse_pass, pass_config_value, pass_list

    p = fuse_pass()
    config.pre_grad_custom_pass = pass_config_value([q for q in pass_list(config.pre_grad_custom_pass) if q is not p])


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    from torch._inductor import config

    from .backend import fuse_pass, pass_list

    return any(q is fuse_pass() for q in pass_list(config.pre_grad_custom_pass))


@dataclass
class CapturedGraph:
    """A torch-level graph right after the fuse pass ran on it, and how many pairs it fused."""

    graph: fx.Graph
    fused: int
    code: str

    def targets(self) -> list:
        """The call targets of the graph's nodes, in order (call_function/call_method/call_module)."""
        return [n.target for n in self.graph.nodes if n.op.startswith("call_")]


@contextlib.contextmanager
def capture_graphs() -> Iterator[list[CapturedGraph]]:
    """Collect a copy of every graph the pass runs on inside the ``with`` block (compiles happen
    lazily, on the first call of the compiled model). Graphs served from inductor's cache are not
    re-passed when the pass runs through :func:`install` (use the backend, or disable the cache)."""
    out: list[CapturedGraph] = []

    def observe(gm: fx.GraphModule, fused: int) -> None:
        g = fx.Graph()
        rv = g.graph_copy(gm.graph, {})
        if rv is not None:
            g.output(rv)
        out.append(CapturedGraph(graph=g, fused=fused, code=gm.code))

    _observers.append(observe)
    try:
        yield out
    finally:
        _observers.remove(observe)
