"""The ``"fusedkat"`` torch.compile backend and the inductor pre-grad pass object.

``torch.compile(model, backend="fusedkat", mode=..., options=...)`` (the name is registered through
the ``torch_dynamo_backends`` entry point in pyproject.toml) does three things and then hands the
graph to inductor exactly as ``backend="inductor"`` would, with the user's mode and options:

1. registers the device-aware lowering (:mod:`fusedkat.ops.lowering`): on a device with the fused
   CuTe kernel ``rational_linear`` stays one opaque op, elsewhere it becomes torch ops inductor fuses;
2. runs :func:`compile_passes.fuse.fuse_rational_linear` on the Dynamo graph;
3. adds :data:`FUSE_PASS` to inductor's ``pre_grad_custom_pass`` (a list on newer torch, a chain on
   older torch that takes one callable): a no-op after step 2, it is
   there for its ``uuid()``, which puts this package's source hash and the lowering decision
   (forced backend, GPU kernel availability) into inductor's and AOTAutograd's cache keys, so a
   graph cached with one lowering is never reused for another.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from .fuse import _fuse_graph, _fuse_nested, fuse_rational_linear, notify_observers

_state = threading.local()
_HERE = os.path.dirname(os.path.abspath(__file__))


def _source_files() -> tuple[str, ...]:
    from fusedkat.ops.lowering import decomposition_sources

    mine = tuple(sorted(os.path.join(_HERE, f) for f in os.listdir(_HERE) if f.endswith(".py")))
    return mine + decomposition_sources()


def _make_pass_class():
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class FuseRationalLinearPass(CustomGraphPass):
        """Inductor pre-grad pass: :func:`fuse_rational_linear` on the graph inductor receives."""

        def __call__(self, graph: fx.Graph) -> None:
            owner = graph.owning_module
            n = _fuse_nested(owner, graph) if owner is not None else _fuse_graph(graph, None)
            # Under the fusedkat backend the graph was already passed (and reported) once.
            if isinstance(owner, fx.GraphModule) and not getattr(_state, "in_backend", False):
                notify_observers(owner, n)

        def uuid(self) -> Any:
            from fusedkat.ops.lowering import lowering_state

            return (get_hash_for_files(_source_files()).hex(), lowering_state())

        def __repr__(self) -> str:
            return "compile_passes.FuseRationalLinearPass()"

    return FuseRationalLinearPass


_PASS: Optional[Any] = None


def fuse_pass() -> Any:
    """The process-wide :class:`FuseRationalLinearPass` instance (a ``CustomGraphPass``)."""
    global _PASS
    if _PASS is None:
        _PASS = _make_pass_class()()
    return _PASS


def _config_takes_lists() -> bool:
    """Whether this torch's ``pre_grad_custom_pass`` takes a list of passes (newer torch; it has
    ``get_custom_graph_passes``).  Older torch (2.11 on the GPU machines) takes one callable."""
    import torch._inductor.custom_graph_pass as cgp

    return hasattr(cgp, "get_custom_graph_passes")


def _make_chain_class():
    import uuid as _uuid

    from torch._inductor.custom_graph_pass import CustomGraphPass

    class PassChain(CustomGraphPass):
        """Several pre-grad passes as the one callable older torch accepts, run in order."""

        def __init__(self, passes: Sequence[Any]):
            self.passes = tuple(passes)
            # A plain callable has no uuid: a per-object random one keeps cache hits within this
            # process (same callables) and misses across processes, never a stale hit.
            self._salt = None if all(isinstance(p, CustomGraphPass) for p in self.passes) else _uuid.uuid4().hex

        def __call__(self, graph: fx.Graph) -> None:
            for p in self.passes:
                p(graph)

        def uuid(self) -> Any:
            return (self._salt,) + tuple(p.uuid() if isinstance(p, CustomGraphPass) else None for p in self.passes)

        def __repr__(self) -> str:
            return f"compile_passes.PassChain({list(self.passes)!r})"

    return PassChain


_CHAIN: Optional[type] = None


def pass_list(value: Any) -> tuple[Any, ...]:
    """The passes in a ``pre_grad_custom_pass`` value: None, one pass, a list, or a chain of ours."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if _CHAIN is not None and isinstance(value, _CHAIN):
        return value.passes
    return (value,)


def pass_config_value(passes: Sequence[Any]) -> Any:
    """What to store in ``pre_grad_custom_pass`` for ``passes`` on this torch: a list where lists
    are taken, else None / the single pass / a :class:`PassChain`."""
    global _CHAIN
    passes = list(passes)
    if _config_takes_lists():
        return passes or None
    if len(passes) <= 1:
        return passes[0] if passes else None
    if _CHAIN is None:
        _CHAIN = _make_chain_class()
    return _CHAIN(passes)


def with_fuse_pass(existing: Any) -> Any:
    """``existing`` (None, one pass or several) with the fuse pass appended once, as a
    ``pre_grad_custom_pass`` value for this torch (see :func:`pass_config_value`)."""
    passes = list(pass_list(existing))
    p = fuse_pass()
    if not any(q is p for q in passes):
        passes.append(p)
    return pass_config_value(passes)


def fusedkat_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: Optional[str] = None,
    options: Optional[dict[str, Any]] = None,
) -> Callable[..., Any]:
    """A Dynamo backend: fuse rational->linear pairs, then compile with inductor.

    Args:
        gm: the Dynamo graph (torch-level, pre-grad).
        example_inputs: its example inputs (fake tensors).
        mode, options: what the user passed to ``torch.compile``; forwarded to inductor and validated
            by it (an unknown option raises, as with ``backend="inductor"``).

    Returns:
        inductor's compiled callable.
    """
    from fusedkat.ops.lowering import register_inductor_decompositions

    register_inductor_decompositions()
    n = fuse_rational_linear(gm)
    notify_observers(gm, n)

    from torch._inductor import config as inductor_config

    wrapper = torch._TorchCompileInductorWrapper(mode, options, dynamic=None)
    user_passes = wrapper.config.get("pre_grad_custom_pass", inductor_config.pre_grad_custom_pass)
    _state.in_backend = True
    try:
        # Through the wrapper's own patch dict: older torch's wrapper (2.11) has no config_patches argument.
        wrapper.config = {**wrapper.config, "pre_grad_custom_pass": with_fuse_pass(user_passes)}
        return wrapper(gm, example_inputs)
    finally:
        _state.in_backend = False
