"""``torch.library`` registrations of the fusedkat ops: real, fake, autograd and autocast kernels.

Ops (schemas)::

    fusedkat::group_rational(Tensor x, Tensor numerator, Tensor denominator, str form="A") -> Tensor
    fusedkat::group_rational_backward(Tensor grad, Tensor x, Tensor numerator, Tensor denominator,
                                      str form) -> (Tensor, Tensor, Tensor)
    fusedkat::rational_linear(Tensor x, Tensor numerator, Tensor denominator, Tensor weight,
                              Tensor? bias=None, str form="A") -> Tensor
    fusedkat::rational_linear_backward(Tensor grad_out, Tensor x, Tensor numerator,
                              Tensor denominator, Tensor weight, bool has_bias, str form)
                              -> (Tensor, Tensor, Tensor, Tensor, Tensor)
        (the last is d_bias; it is computed, cheaply, even when has_bias is False, because
        custom ops cannot return an optional tensor)

The backward ops are ops of their own so that ``torch.compile`` sees one opaque call forward and
one backward, and so the GPU kernels can replace them.  ``rational_linear`` saves x (not F(x))
for the backward: the memory contract the fused kernels keep.

Each real kernel asks :mod:`fusedkat.ops.dispatch` which implementation runs; ``"cute"`` calls the
same-named function of ``cutlass_kernels.launch``, ``"torch"`` the one of
:mod:`fusedkat.ops.torch_impl`.  Both take the same arguments.

Autocast: ``rational_linear`` behaves like ``nn.Linear`` (x, weight and bias are cast to the
autocast dtype, the coefficients stay in their own precision and F is evaluated in fp32
internally); ``group_rational`` is elementwise and keeps its input dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import profiling
from . import dispatch, torch_impl
from .validation import check_linear_args, check_rational_args


def _dense(out):
    """The op contract (what the fake impls below promise, and inductor asserts on compiled graphs):
    every output is a dense row-major tensor.  Costs an ``is_contiguous`` check per output."""
    if isinstance(out, tuple):
        return tuple(t if t.is_contiguous() else t.contiguous() for t in out)
    return out if out.is_contiguous() else out.contiguous()


def _run(op: str, device: torch.device, *args):
    with profiling.op_range(op, device, args):  # NVTX range per launch (issue 8); no-op unless enabled
        if dispatch.choose(device, op) == "cute":
            from cutlass_kernels import launch  # imported lazily: the DSL is heavy and GPU-only

            return _dense(getattr(launch, op)(*args))
        return _dense(getattr(torch_impl, op)(*args))


def _check_linear(x: Tensor, numerator: Tensor, denominator: Tensor, weight: Tensor,
                  bias: Optional[Tensor], form: str) -> None:
    check_rational_args(x, numerator, denominator, form)
    check_linear_args(x, weight, bias)


# ---------------------------------------------------------------------------------------------
# group_rational
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("fusedkat::group_rational", mutates_args=())
def group_rational_op(x: Tensor, numerator: Tensor, denominator: Tensor, form: str = "A") -> Tensor:
    check_rational_args(x, numerator, denominator, form)
    return _run("group_rational_forward", x.device, x, numerator, denominator, form)


@group_rational_op.register_fake
def _(x, numerator, denominator, form="A"):
    check_rational_args(x, numerator, denominator, form)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("fusedkat::group_rational_backward", mutates_args=())
def group_rational_backward_op(
    grad: Tensor, x: Tensor, numerator: Tensor, denominator: Tensor, form: str
) -> tuple[Tensor, Tensor, Tensor]:
    check_rational_args(x, numerator, denominator, form)
    return _run("group_rational_backward", x.device, grad, x, numerator, denominator, form)


@group_rational_backward_op.register_fake
def _(grad, x, numerator, denominator, form):
    check_rational_args(x, numerator, denominator, form)
    return (
        torch.empty(x.shape, dtype=x.dtype, device=x.device),
        torch.empty(numerator.shape, dtype=numerator.dtype, device=x.device),
        torch.empty(denominator.shape, dtype=denominator.dtype, device=x.device),
    )


def _gr_setup(ctx, inputs, output) -> None:
    x, numerator, denominator, form = inputs
    ctx.save_for_backward(x, numerator, denominator)
    ctx.form = form


def _gr_backward(ctx, grad):
    x, numerator, denominator = ctx.saved_tensors
    dx, dnum, dden = group_rational_backward_op(grad, x, numerator, denominator, ctx.form)
    return dx, dnum, dden, None


group_rational_op.register_autograd(_gr_backward, setup_context=_gr_setup)


# ---------------------------------------------------------------------------------------------
# rational_linear
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("fusedkat::rational_linear", mutates_args=())
def rational_linear_op(
    x: Tensor, numerator: Tensor, denominator: Tensor, weight: Tensor,
    bias: Optional[Tensor] = None, form: str = "A",
) -> Tensor:
    _check_linear(x, numerator, denominator, weight, bias, form)
    return _run("rational_linear_forward", x.device, x, numerator, denominator, weight, bias, form)


@rational_linear_op.register_fake
def _(x, numerator, denominator, weight, bias=None, form="A"):
    _check_linear(x, numerator, denominator, weight, bias, form)
    return torch.empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype, device=x.device)


@torch.library.custom_op("fusedkat::rational_linear_backward", mutates_args=())
def rational_linear_backward_op(
    grad_out: Tensor, x: Tensor, numerator: Tensor, denominator: Tensor, weight: Tensor,
    has_bias: bool, form: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_rational_args(x, numerator, denominator, form)
    return _run("rational_linear_backward", x.device, grad_out, x, numerator, denominator, weight,
                has_bias, form)


@rational_linear_backward_op.register_fake
def _(grad_out, x, numerator, denominator, weight, has_bias, form):
    check_rational_args(x, numerator, denominator, form)
    return (
        torch.empty(x.shape, dtype=x.dtype, device=x.device),
        torch.empty(numerator.shape, dtype=numerator.dtype, device=x.device),
        torch.empty(denominator.shape, dtype=denominator.dtype, device=x.device),
        torch.empty(weight.shape, dtype=weight.dtype, device=x.device),
        torch.empty((weight.shape[0],), dtype=weight.dtype, device=x.device),
    )


def _rl_setup(ctx, inputs, output) -> None:
    x, numerator, denominator, weight, bias, form = inputs
    ctx.save_for_backward(x, numerator, denominator, weight)  # x, never F(x)
    ctx.has_bias = bias is not None
    ctx.form = form


def _rl_backward(ctx, grad_out):
    x, numerator, denominator, weight = ctx.saved_tensors
    dx, dnum, dden, dw, db = rational_linear_backward_op(
        grad_out, x, numerator, denominator, weight, ctx.has_bias, ctx.form
    )
    return dx, dnum, dden, dw, (db if ctx.has_bias else None), None


rational_linear_op.register_autograd(_rl_backward, setup_context=_rl_setup)


# ---------------------------------------------------------------------------------------------
# rescue: the exact large-|x| recomputation behind one host-read flag (torch_impl's "host" mode)
# ---------------------------------------------------------------------------------------------
# Inductor's CPU lowering traces the direct evaluation only, plus ``ok`` (0-d bool: every element's
# direct values were valid).  These opaque ops read ``ok`` on the host after the fused kernels ran
# and, only when it is false (|x| beyond ~1e4-5e7, or a non-finite input), redo the whole call with
# the eager exact path and overwrite the outputs in place: the compiled results are then the eager
# ones.  Their fake impls do nothing (no outputs); inductor re-inplaces the mutation (no copy).
@torch.library.custom_op("fusedkat::rescue_rational_", mutates_args=("f",))
def rescue_rational_(f: Tensor, ok: Tensor, x: Tensor, numerator: Tensor, denominator: Tensor,
                     form: str) -> None:
    if not bool(ok):
        f.copy_(torch_impl.group_rational_forward(x, numerator, denominator, form))


@rescue_rational_.register_fake
def _(f, ok, x, numerator, denominator, form) -> None:
    return None


@torch.library.custom_op("fusedkat::rescue_rational_backward_",
                         mutates_args=("dx", "d_numerator", "d_denominator"))
def rescue_rational_backward_(dx: Tensor, d_numerator: Tensor, d_denominator: Tensor, ok: Tensor,
                              grad: Tensor, x: Tensor, numerator: Tensor, denominator: Tensor,
                              form: str) -> None:
    if not bool(ok):
        exact = torch_impl.group_rational_backward(grad, x, numerator, denominator, form)
        for out, value in zip((dx, d_numerator, d_denominator), exact):
            out.copy_(value)


@rescue_rational_backward_.register_fake
def _(dx, d_numerator, d_denominator, ok, grad, x, numerator, denominator, form) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# autocast: rational_linear runs its matmul in the autocast dtype, like nn.Linear
# ---------------------------------------------------------------------------------------------
_lib = torch.library.Library("fusedkat", "FRAGMENT")


def _register_linear_autocast(device_type: str) -> None:
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def kernel(_keyset, x, numerator, denominator, weight, bias=None, form="A"):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(t):
            if t is None or not t.is_floating_point() or t.device.type != device_type:
                return t
            return t.to(dtype)

        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return rational_linear_op(cast(x), numerator, denominator, cast(weight), cast(bias), form)

    _lib.impl("rational_linear", kernel, key_name, with_keyset=True)


for _device_type in ("cpu", "cuda"):
    _register_linear_autocast(_device_type)

# the ``*_cpu_kernel`` twins that inductor's CPU lowering puts into compiled graphs: registered with
# the ops themselves, so that a compiled graph loaded from inductor's cache finds them
from . import cpu_kernels  # noqa: E402,F401
