"""Let inductor choose the composition of the fusedkat ops under max-autotune.

Where a fusedkat op stays opaque in an inductor graph (a GPU with the CuTe kernels, see
:mod:`fusedkat.ops.lowering`), this registers it with inductor's custom-op autotuning
(``torch._inductor.kernel.custom_op.register_custom_op_autotuning``).  Under
``torch.compile(mode="max-autotune")`` (inductor's ``max_autotune``) inductor then benchmarks, per
op and shape, these candidates and inlines the fastest:

* ``default``: the op itself, i.e. the CuTe path the decision table picks
  (:mod:`cutlass_kernels.decisions`: fused GEMM or elementwise kernel + cuBLAS);
* ``decomposed``: the plain torch ops of :mod:`fusedkat.ops.torch_impl`, which inductor turns into
  Triton kernels that fuse with their neighbours (what ``FUSEDKAT_BACKEND=torch`` gives);
* for ``rational_linear`` also ``cute_unfused``: the CuTe activation op followed by ``F.linear``
  (inductor's own matmul choice), whatever the table says.

The backward ops (``rational_linear_backward``, ``group_rational_backward``) return tuples, which
torch 2.14's custom-op autotuning rejects ("Multi-output custom ops not yet supported"): they keep
the table's path (or the decomposition, where the lowering decomposes them).

Outside max-autotune the generator returns no configs and inductor lowers the op as before (the
table's path).  Where torch lacks the API (it appeared after 2.11, see :func:`available`) nothing
is registered and one debug line is logged.  Called from
:func:`fusedkat.ops.lowering.register_inductor_decompositions`, i.e. once inductor is imported.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import torch_impl

log = logging.getLogger(__name__)
_registered: Optional[bool] = None  # None: not tried yet; False: API absent; True: registered


def available() -> bool:
    """Whether this torch has inductor's custom-op autotuning in the form used here:
    ``CustomOpConfig`` and ``register_custom_op_autotuning(custom_op, config_generator=...)`` in
    ``torch._inductor.kernel.custom_op`` (torch 2.14 has it; earlier development versions had a
    ``decompositions=`` list or a decorator instead, and older releases have no such module)."""
    import inspect

    try:
        from torch._inductor.kernel.custom_op import CustomOpConfig, register_custom_op_autotuning  # noqa: F401
        # where the registration lands (torch 2.11 has the function with this signature, but
        # no user lowerings table, and its max-autotune never benchmarked our candidates)
        from torch._inductor.lowering import user_lowerings  # noqa: F401
    except ImportError:
        return False
    return "config_generator" in inspect.signature(register_custom_op_autotuning).parameters


def _max_autotune() -> bool:
    from torch._inductor import config

    return bool(config.max_autotune)


# ---- the candidates (same signatures as the ops; traced by inductor) -------------------------
def _rl_decomposed(x, numerator, denominator, weight, bias=None, form="A"):
    return torch_impl.rational_linear_forward(x, numerator, denominator, weight, bias, form)


def _rl_cute_unfused(x, numerator, denominator, weight, bias=None, form="A"):
    return F.linear(torch.ops.fusedkat.group_rational(x, numerator, denominator, form), weight, bias)


def _gr_decomposed(x, numerator, denominator, form="A"):
    return torch_impl.group_rational_forward(x, numerator, denominator, form)


def candidates() -> dict[str, tuple[Callable[..., Any], ...]]:
    """``{op name: candidate decompositions}`` besides the op itself (``None`` = the op)."""
    return {
        "rational_linear": (None, _rl_decomposed, _rl_cute_unfused),
        "group_rational": (None, _gr_decomposed),
    }


def configs_for(op_name: str, fake_tensors: Optional[dict] = None) -> list:
    """The ``CustomOpConfig`` list inductor benchmarks for ``op_name`` now: empty unless inductor
    runs with ``max_autotune`` (then the op's own lowering runs unchanged)."""
    if not _max_autotune():
        return []
    from torch._inductor.kernel.custom_op import CustomOpConfig

    return [CustomOpConfig() if fn is None else CustomOpConfig(fn) for fn in candidates()[op_name]]


def register() -> bool:
    """Register the single-output fusedkat ops (``rational_linear``, ``group_rational``) for autotuning (idempotent).  True if registered, False
    (with one debug log line, no error) where this torch has no custom-op autotuning."""
    global _registered
    if _registered is not None:
        return _registered
    if not available():
        log.debug("fusedkat: torch %s has no inductor custom-op autotuning; "
                  "the decision table alone picks the composition", torch.__version__)
        _registered = False
        return False
    from torch._inductor.kernel.custom_op import register_custom_op_autotuning

    from . import custom_ops

    defs = {"rational_linear": custom_ops.rational_linear_op, "group_rational": custom_ops.group_rational_op}
    try:
        for name in candidates():
            register_custom_op_autotuning(defs[name], config_generator=lambda fakes, name=name: configs_for(name, fakes),
                                          name=f"fusedkat_{name}_autotuned")
    except (TypeError, ValueError) as e:  # an API variant we do not know: keep the table's choice
        log.debug("fusedkat: inductor custom-op autotuning refused the registration (%s)", e)
        _registered = False
        return False
    _registered = True
    return True


def is_registered() -> bool:
    """Whether :func:`register` registered the ops (False before it ran or where torch lacks the API)."""
    return bool(_registered)
