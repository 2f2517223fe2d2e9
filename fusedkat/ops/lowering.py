"""Device-aware lowering of the fusedkat custom ops for inductor.

Eager mode and Dynamo graphs always see the four ``fusedkat::*`` ops as opaque calls.  When inductor
lowers a graph (AOTAutograd traces it with inductor's decomposition table), each op is either

* kept opaque, where :mod:`fusedkat.ops.dispatch` would run the CuTe kernel (a GPU with the fused
  kernel): the kernel is the whole point there, or
* replaced, on a CPU, by its ``*_cpu_kernel`` twin: an opaque call whose implementation is the op's
  torch code compiled by inductor once per shape (:mod:`fusedkat.ops.cpu_kernels`; compiling the
  model then costs about what a ViT's does, however many rationals it has), or
* decomposed into the plain torch ops of :mod:`fusedkat.ops.torch_impl` (unsupported GPUs,
  ``FUSEDKAT_BACKEND=torch``, and CPUs with ``FUSEDKAT_CPU_LOWERING=inline``): inductor then fuses
  the Horner rational into the neighbouring elementwise kernels (LayerNorm, bias, residual) and the
  coefficient-gradient reductions into one pass, instead of calling the eager torch implementation
  with its many temporaries.

The decision is taken per call from the (fake) tensor's device when the graph is traced, with the
same ``dispatch.choose`` that eager mode uses, so compiled and eager code run the same math.  The
math is not re-derived here: the decompositions *are* the ``torch_impl`` functions.

Registration: inductor's decomposition table lives in ``torch._inductor.decomposition``, whose import
pulls in Dynamo (~1.5 s).  ``import fusedkat`` must stay fast, so :func:`install_import_hook` adds the
entries right after that module is first imported (or at once if it already is); compile_passes'
backend and ``install()`` call :func:`register_inductor_decompositions` directly.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import torch

from .._import_hooks import after_import
from . import dispatch, torch_impl

_INDUCTOR_DECOMP_MODULE = "torch._inductor.decomposition"
_lock = threading.RLock()  # re-entered when the import below fires the import hook
_registered = False


def decompose_on(device: torch.device, op: str) -> bool:
    """True if ``op`` runs the torch implementation on ``device`` (so it should be decomposed)."""
    return dispatch.choose(device, op) == "torch"


_fallbacks_registered = False


def _keep_opaque() -> Any:
    """Tell the tracer to keep the op (NotImplemented), and give inductor a fallback kernel for it.

    Inductor refuses to create an implicit fallback for an op that has a decomposition, so the
    explicit one is registered here, the first time an op is kept (inductor's lowering module is
    imported by then; importing it from the import hook would be circular).
    """
    global _fallbacks_registered
    if not _fallbacks_registered:
        from torch._inductor.lowering import make_fallback, tag_to_layout_constraint
        from torch._library.utils import get_layout_constraint_tag

        for op in decompositions():
            make_fallback(op, layout_constraint=tag_to_layout_constraint(get_layout_constraint_tag(op)),
                          warn=False, override_decomp=True)
        _fallbacks_registered = True
        from . import autotune

        autotune.register()  # max-autotune may then pick the decomposition instead (a no-op where absent)
    return NotImplemented


def traced_mode(device: torch.device) -> str:
    """How the decompositions reach the large-|x| exact path (:data:`torch_impl.MODES`).

    Used where the op is inlined (on a CPU only with ``FUSEDKAT_CPU_LOWERING=inline``).  On CPU
    the flag of ``"host"`` is read for free (the data is in host memory), and the graph then holds
    the direct evaluation alone: 0.61x the nodes per rational; KAT-T's compiled step 0.86x that of
    the ``"select"`` graph (bench.cpu_step_ab --select, fresh caches, 2-core CPU) and its cold first
    step 2.58x -> 2.16-2.30x ViT-T's (bench.compile_time; issue 20).
    Elsewhere reading it would synchronise the device on every call, so the traced graph selects
    per element instead.
    """
    return "host" if device.type == "cpu" else "select"


#: How inductor's CPU lowering runs the ops (``FUSEDKAT_CPU_LOWERING``): ``"kernels"`` (default) puts
#: an opaque twin in the graph whose implementation is a small inductor-compiled kernel per shape
#: (:mod:`fusedkat.ops.cpu_kernels`); ``"inline"`` decomposes the op into the graph (mode "host").
CPU_LOWERINGS: tuple[str, ...] = ("kernels", "inline")


def cpu_lowering() -> str:
    """The requested CPU lowering (:data:`CPU_LOWERINGS`), from ``FUSEDKAT_CPU_LOWERING``."""
    import os

    value = os.environ.get("FUSEDKAT_CPU_LOWERING", "kernels").strip().lower() or "kernels"
    if value not in CPU_LOWERINGS:
        raise ValueError(f"FUSEDKAT_CPU_LOWERING={value!r} is not one of {CPU_LOWERINGS}")
    return value


def _twin(x: torch.Tensor, name: str):
    """The compiled-kernel twin op of ``name`` where ``x`` lives on a CPU and that lowering is on."""
    if x.device.type != "cpu" or cpu_lowering() != "kernels":
        return None
    from . import cpu_kernels  # noqa: F401  (registers the twins)

    return getattr(torch.ops.fusedkat, name + "_cpu_kernel")


def _group_rational(x, numerator, denominator, form="A"):
    if not decompose_on(x.device, "group_rational_forward"):
        return _keep_opaque()
    twin = _twin(x, "group_rational")
    if twin is not None:
        return twin(x, numerator, denominator, form)
    return torch_impl.group_rational_forward(x, numerator, denominator, form, traced_mode(x.device))


def _group_rational_backward(grad, x, numerator, denominator, form):
    if not decompose_on(x.device, "group_rational_backward"):
        return _keep_opaque()
    twin = _twin(x, "group_rational_backward")
    if twin is not None:
        return twin(grad, x, numerator, denominator, form)
    return torch_impl.group_rational_backward(grad, x, numerator, denominator, form, traced_mode(x.device))


def _rational_linear(x, numerator, denominator, weight, bias=None, form="A"):
    if not decompose_on(x.device, "rational_linear_forward"):
        return _keep_opaque()
    twin = _twin(x, "rational_linear")
    if twin is not None:
        return twin(x, numerator, denominator, weight, bias, form)
    return torch_impl.rational_linear_forward(x, numerator, denominator, weight, bias, form,
                                              traced_mode(x.device))


def _rational_linear_backward(grad_out, x, numerator, denominator, weight, has_bias, form):
    if not decompose_on(x.device, "rational_linear_backward"):
        return _keep_opaque()
    twin = _twin(x, "rational_linear_backward")
    if twin is not None:
        return twin(grad_out, x, numerator, denominator, weight, has_bias, form)
    return torch_impl.rational_linear_backward(grad_out, x, numerator, denominator, weight, has_bias, form,
                                               traced_mode(x.device))


def decompositions() -> dict[Any, Callable[..., Any]]:
    """``{OpOverload: decomposition}`` for the four fusedkat ops (each returns NotImplemented to keep the op)."""
    ops = torch.ops.fusedkat
    return {
        ops.group_rational.default: _group_rational,
        ops.group_rational_backward.default: _group_rational_backward,
        ops.rational_linear.default: _rational_linear,
        ops.rational_linear_backward.default: _rational_linear_backward,
    }


def decomposition_sources() -> tuple[str, ...]:
    """The files the decompositions' code comes from (what compiled graphs depend on)."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    return tuple(os.path.join(here, f) for f in
                 ("custom_ops.py", "cpu_kernels.py", "torch_impl.py", "rational_math.py", "lowering.py", "dispatch.py",
                  "validation.py"))


def decomposition_key() -> tuple[str, str]:
    """(hash of :func:`decomposition_sources`, :func:`lowering_state`): changes whenever the code a
    compiled graph was traced from, or the lowering decision, could."""
    from torch._inductor.custom_graph_pass import get_hash_for_files

    return get_hash_for_files(decomposition_sources()).hex(), lowering_state()


def _make_key_pass() -> Any:
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class DecompositionKeyPass(CustomGraphPass):
        """A post-grad pass that does nothing; its ``uuid`` puts :func:`decomposition_key` into
        inductor's (and AOTAutograd's) cache keys.  Those caches key on the Dynamo graph, where
        the fusedkat ops are opaque, so without it a graph compiled by an older fusedkat (another
        decomposition: e.g. one without the large-|x| rescue) was served unchanged after an
        upgrade, or after FUSEDKAT_BACKEND changed (issue 20: nothing silent)."""

        def __call__(self, graph: Any) -> None:
            return None

        def uuid(self) -> Any:
            return decomposition_key()

        def __repr__(self) -> str:
            return "fusedkat.ops.lowering.DecompositionKeyPass()"

    return DecompositionKeyPass()


def _install_key_pass() -> None:
    """Put the key pass in ``post_grad_custom_post_pass`` unless the user already set that slot (then
    their pass decides the key, as it would without fusedkat)."""
    import torch._inductor.config as inductor_config

    if inductor_config.post_grad_custom_post_pass is None:
        inductor_config.post_grad_custom_post_pass = _make_key_pass()


def register_inductor_decompositions() -> None:
    """Add the device-aware decompositions to inductor's table and their source to its cache keys
    (idempotent; imports inductor)."""
    global _registered
    with _lock:
        if _registered:
            return
        import torch._inductor.decomposition as inductor_decomp

        inductor_decomp.decompositions.update(decompositions())
        _install_key_pass()
        _registered = True


def is_registered() -> bool:
    """Whether inductor's decomposition table holds the fusedkat entries."""
    return _registered


def lowering_state() -> str:
    """A string that changes whenever the lowering decision could (for compile-cache keys).

    It names the requested backend and, where CUDA is present, whether the CuTe kernels can run
    on the current GPU; CPUs always decompose.
    """
    state = f"backend={dispatch.requested_backend()};cpu={cpu_lowering()}"
    if torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
        reasons = [dispatch.cute_unavailable_reason(dev, op) for op in
                   ("group_rational_forward", "group_rational_backward",
                    "rational_linear_forward", "rational_linear_backward")]
        state += f";cuda={torch.cuda.get_device_capability(dev)};cute=" + ",".join(
            "ok" if r is None else "no" for r in reasons)
    return state


def install_import_hook() -> None:
    """Make plain ``torch.compile`` use the lowering without importing inductor now.

    Registers at once if inductor's decomposition module is already imported, otherwise right
    after it is (:func:`fusedkat._import_hooks.after_import`).
    """
    after_import(_INDUCTOR_DECOMP_MODULE, register_inductor_decompositions)
