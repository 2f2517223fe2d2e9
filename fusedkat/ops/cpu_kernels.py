"""The fusedkat ops inside a compiled CPU graph: each call runs a small inductor-compiled kernel.

Inductor's CPU lowering (:mod:`fusedkat.ops.lowering`) replaces each fusedkat op of a compiled
graph with its ``fusedkat::*_cpu_kernel`` twin (same schema, opaque to inductor).  The twin's
implementation compiles the op's own torch code (:mod:`fusedkat.ops.torch_impl`, direct
evaluation) with inductor, once per :class:`KernelKey` (op, shapes, dtypes, form), and runs that.

Why not let inductor inline the decomposition into the model's graph?  It did (the ``"inline"``
lowering, still selectable with ``FUSEDKAT_CPU_LOWERING=inline``), and the step was fast, but
inductor then lowered, scheduled and compiled each of the model's rationals anew -- 24 forward
and 24 backward copies in a KAT-T, the same few kernels each time -- and the first compiled step
of KAT-T took 2.2-2.3x ViT-T's (issue 20).  Compiled here, KAT-T needs 4 small graphs (two
shapes, forward and backward) whatever its depth, and the outer graph is a ViT's with one extern
call per rational; what is lost is the rational's fusion into LayerNorm and the bias add, one extra
pass over an activation that is L2-sized at these shapes.

Large |x|: the compiled kernel evaluates the direct path and a 0-d flag (:func:`torch_impl.
direct_ok`); when the flag is false the call is redone with the eager exact path, so every result
equals the eager one where that matters (bit for bit: it *is* the eager call).

Row counts: the kernels see x (and the incoming gradient) as ``[M, K]``.  The first M an op shape
meets gets a kernel specialised to it (the fastest: a training loop's batch never changes); the
second M gets one kernel compiled for every M (a symbolic row count, as ``torch.compile``'s
automatic dynamic shapes do), which every later M reuses -- a model evaluated at another batch
size, a last partial batch, or token counts that vary per batch compile once more, not once per
M.  A symbolic kernel is used only for the M its compile-time guards admit (else another is
compiled); measured on this 2-core CPU at KAT-T's shapes it runs 1.06-1.35x the specialised one.

Cache: in memory, per process (inductor's on-disk FX graph cache makes a warm process's compile
cheap).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import Tensor

from . import torch_impl

#: The torch_impl functions a kernel can be compiled from (each takes a trailing ``mode``).
_OPS = ("group_rational_forward", "group_rational_backward", "rational_linear_forward",
        "rational_linear_backward")
#: How many leading tensor arguments have M rows (x; in a backward the incoming gradient and x).
_ROW_TENSORS = {op: 2 if op.endswith("backward") else 1 for op in _OPS}


@dataclass(frozen=True)
class KernelKey:
    """What a compiled kernel is specialised to (derived from the call by :meth:`of`)."""

    op: str
    shapes: tuple[tuple[int, ...], ...]  # of the tensor arguments, in order (None: absent)
    dtypes: tuple[str, ...]
    statics: tuple  # the non-tensor arguments (form, has_bias)

    @classmethod
    def of(cls, op: str, args: tuple) -> "KernelKey":
        tensors = [a for a in args if isinstance(a, Tensor) or a is None]
        return cls(op,
                   tuple(None if t is None else tuple(t.shape) for t in tensors),
                   tuple("none" if t is None else str(t.dtype).replace("torch.", "") for t in tensors),
                   tuple(a for a in args if not (isinstance(a, Tensor) or a is None)))

    def any_rows(self) -> "KernelKey":
        """This key with the leading dimension of the row tensors open (-1): the key of a kernel
        compiled for every row count."""
        n = _ROW_TENSORS.get(self.op, 0)
        return replace(self, shapes=tuple((-1, *s[1:]) if i < n and s else s for i, s in enumerate(self.shapes)))


@dataclass(frozen=True)
class _RowsKernel:
    """A kernel compiled for a symbolic row count, and which row counts its guards admit."""

    fn: Callable[..., list]
    accepts: Callable[[int], bool]


_cache: dict[KernelKey, Callable[..., list]] = {}  # kernels specialised to their key's M
_any_rows: dict[KernelKey, list[_RowsKernel]] = {}  # by KernelKey.any_rows()
_lock = threading.Lock()  # one compile per key, also when threads call at once


def compiled_kernels() -> tuple[KernelKey, ...]:
    """The keys compiled so far in this process: specialised kernels by their key, kernels for
    every row count by :meth:`KernelKey.any_rows` (once per kernel)."""
    with _lock:
        return tuple(_cache) + tuple(k for k, kernels in _any_rows.items() for _ in kernels)


def clear() -> None:
    """Forget every compiled kernel (the next call compiles again)."""
    with _lock:
        _cache.clear()
        _any_rows.clear()


def _split(args: tuple) -> tuple[list[Tensor], Callable[[list[Tensor]], tuple]]:
    """The present tensor arguments, and a function rebuilding the full argument tuple from them."""
    slots = [i for i, a in enumerate(args) if isinstance(a, Tensor)]

    def rebuild(tensors: list[Tensor]) -> tuple:
        full = list(args)
        for i, t in zip(slots, tensors):
            full[i] = t
        return tuple(full)

    return [args[i] for i in slots], rebuild


def _flagged(op: str, rebuild: Callable[[list[Tensor]], tuple]) -> Callable[..., tuple]:
    """``(*tensors) -> (*outputs, ok)``: the op by the direct path, and the 0-d flag saying it is valid."""
    fn = getattr(torch_impl, op)

    def run(*tensors: Tensor) -> tuple:
        full = rebuild(list(tensors))
        x = full[1] if op.endswith("backward") else full[0]
        numerator, denominator = (full[2], full[3]) if op.endswith("backward") else (full[1], full[2])
        form = full[-1]
        out = fn(*full[:-1], form, "direct")
        out = out if isinstance(out, tuple) else (out,)
        return (*out, torch_impl.direct_ok(x, numerator, denominator, form))

    return run


#: Inductor's user-pass slots, emptied while a kernel compiles: the kernel is our own graph, and a
#: user's (or compile_passes') pass meant for the model would run on it too.
_PASS_SLOTS = ("pre_grad_custom_pass", "joint_custom_pre_pass", "joint_custom_post_pass",
               "post_grad_custom_pre_pass", "post_grad_custom_post_pass")


def _inductor_compile(graph, inputs: list) -> Callable[..., list]:
    import torch._inductor
    import torch._inductor.config as inductor_config

    slots = {s: None for s in _PASS_SLOTS if hasattr(inductor_config, s)}
    with inductor_config.patch(slots):
        return torch._inductor.compile(graph, inputs)


def _compile(op: str, tensors: list[Tensor], rebuild) -> Callable[..., list]:
    """A kernel specialised to the shapes of ``tensors``."""
    from torch.fx.experimental.proxy_tensor import make_fx

    return _inductor_compile(make_fx(_flagged(op, rebuild))(*tensors), list(tensors))


def _compile_any_rows(op: str, tensors: list[Tensor], rebuild) -> _RowsKernel:
    """A kernel for every row count: traced on fake tensors whose leading dimension (that of the
    row tensors, which the trace unifies) is symbolic, every other dimension static."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env)
    n_rows = _ROW_TENSORS[op]

    def fake(i: int, t: Tensor) -> Tensor:
        dims = [DimDynamic.DYNAMIC if i < n_rows and d == 0 else DimDynamic.STATIC for d in range(t.dim())]
        return mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dims))

    fakes = [fake(i, t) for i, t in enumerate(tensors)]
    fn = _inductor_compile(make_fx(_flagged(op, rebuild), tracing_mode="fake")(*fakes), fakes)
    # What the trace and inductor assumed of M.  Their only symbols are the row tensors' leading
    # dimensions (every other one is static), which all equal M.
    guards = [g.expr for g in env.guards]

    def accepts(rows: int) -> bool:
        try:
            return all(bool(g.xreplace({s: rows for s in g.free_symbols})) for g in guards)
        except TypeError:  # not decidable from M alone: do not trust the kernel
            return False

    return _RowsKernel(fn, accepts)


def _kernel_for(op: str, tensors: list[Tensor], rebuild, key: KernelKey, rows: int) -> Callable[..., list]:
    """The cached kernel for ``key``, else for any row count, else a new one: specialised the first
    time this op shape is met, for every row count from the second row count on."""
    with _lock:
        kernel = _cache.get(key)
        if kernel is not None:
            return kernel
        # A symbolic size is assumed >= 2 (the trace specialises 0 and 1), so M = 1 stays specialised.
        general = key.any_rows()
        for k in _any_rows.get(general, ()) if rows >= 2 else ():
            if k.accepts(rows):
                return k.fn
        met_before = general in _any_rows or any(k.any_rows() == general for k in _cache)
        if met_before and rows >= 2:
            k = _compile_any_rows(op, tensors, rebuild)
            _any_rows.setdefault(general, []).append(k)
            return k.fn
        kernel = _cache[key] = _compile(op, tensors, rebuild)
        return kernel


def run(op: str, *args) -> tuple[Tensor, ...] | Tensor:
    """``torch_impl.<op>(*args)`` through the compiled kernel for these arguments (compiled on first
    use); the eager torch implementation for empty tensors, which have nothing to compile."""
    if op not in _OPS:
        raise ValueError(f"no compiled CPU kernel for {op!r}; expected one of {_OPS}")
    # detached and dense: the kernel is traced without autograd, for row-major inputs
    args = tuple(a.detach().contiguous() if isinstance(a, Tensor) else a for a in args)
    tensors, rebuild = _split(args)
    if any(t.numel() == 0 for t in tensors):
        return getattr(torch_impl, op)(*args)
    # x (and the incoming gradient) as [M, K]: one kernel serves [B, T, K] and [B * T, K]
    n_rows = _ROW_TENSORS[op]
    lead = tensors[1 if n_rows == 2 else 0].shape[:-1]
    tensors = [t.reshape(-1, t.shape[-1]) if i < n_rows else t for i, t in enumerate(tensors)]
    flat_args = rebuild(tensors)
    kernel = _kernel_for(op, tensors, rebuild, KernelKey.of(op, flat_args), tensors[0].shape[0])
    *out, ok = kernel(*tensors)
    if not bool(ok):  # some |x| beyond the direct path's range (or a non-finite input): exactly, eagerly
        return getattr(torch_impl, op)(*args)
    out[0] = out[0].reshape(*lead, out[0].shape[-1])  # y or dx, in x's leading shape
    return tuple(out) if len(out) > 1 else out[0]


# ---------------------------------------------------------------------------------------------
# the twins of the four ops: what inductor's CPU lowering puts in the graph instead
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("fusedkat::group_rational_cpu_kernel", mutates_args=())
def group_rational_cpu_kernel(x: Tensor, numerator: Tensor, denominator: Tensor, form: str = "A") -> Tensor:
    return run("group_rational_forward", x, numerator, denominator, form)


@group_rational_cpu_kernel.register_fake
def _(x, numerator, denominator, form="A"):
    return torch.ops.fusedkat.group_rational(x, numerator, denominator, form)


@torch.library.custom_op("fusedkat::group_rational_backward_cpu_kernel", mutates_args=())
def group_rational_backward_cpu_kernel(grad: Tensor, x: Tensor, numerator: Tensor, denominator: Tensor,
                                       form: str) -> tuple[Tensor, Tensor, Tensor]:
    return run("group_rational_backward", grad, x, numerator, denominator, form)


@group_rational_backward_cpu_kernel.register_fake
def _(grad, x, numerator, denominator, form):
    return torch.ops.fusedkat.group_rational_backward(grad, x, numerator, denominator, form)


@torch.library.custom_op("fusedkat::rational_linear_cpu_kernel", mutates_args=())
def rational_linear_cpu_kernel(x: Tensor, numerator: Tensor, denominator: Tensor, weight: Tensor,
                               bias: Optional[Tensor] = None, form: str = "A") -> Tensor:
    return run("rational_linear_forward", x, numerator, denominator, weight, bias, form)


@rational_linear_cpu_kernel.register_fake
def _(x, numerator, denominator, weight, bias=None, form="A"):
    return torch.ops.fusedkat.rational_linear(x, numerator, denominator, weight, bias, form)


@torch.library.custom_op("fusedkat::rational_linear_backward_cpu_kernel", mutates_args=())
def rational_linear_backward_cpu_kernel(grad_out: Tensor, x: Tensor, numerator: Tensor, denominator: Tensor,
                                        weight: Tensor, has_bias: bool,
                                        form: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return run("rational_linear_backward", grad_out, x, numerator, denominator, weight, has_bias, form)


@rational_linear_backward_cpu_kernel.register_fake
def _(grad_out, x, numerator, denominator, weight, has_bias, form):
    return torch.ops.fusedkat.rational_linear_backward(grad_out, x, numerator, denominator, weight, has_bias,
                                                       form)
