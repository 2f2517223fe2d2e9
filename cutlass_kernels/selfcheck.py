"""First-use self-check of the CuTe kernels against the torch implementation.

Why: a kernel that compiles can still compute the wrong thing on a GPU it was never run on (a
swizzle, a pipeline barrier, a layout assumption).  Before a kernel's result is trusted, the first
call of each *kernel key* — op, device, dtypes, form, degrees, groups and problem shape, which
together fix the compiled variant and its tile config — is also computed by
:mod:`fusedkat.ops.torch_impl` and compared.  On a mismatch the key is marked bad, a
``RuntimeWarning`` names it, and that call and every later one with the key return the torch
result: slower, never silently wrong.  Each key costs one extra torch evaluation per process.

``FUSEDKAT_KERNEL_SELFCHECK=0`` turns the check off (once the GPU suite has passed on a machine).
"""
from __future__ import annotations

import functools
import os
import threading
import warnings
from typing import Any, Callable, Optional

import torch

from fusedkat.ops import torch_impl

_ENV = "FUSEDKAT_KERNEL_SELFCHECK"
#: Max error allowed, relative to the largest reference magnitude, by the *compute* dtype (the least
#: precise floating input: an fp32 weight gradient of a bf16 GEMM carries bf16 error): loose enough
#: for a bf16 GEMM with K=3072 (~1e-2 at worst), tight enough that a wrong layout or stale register
#: fails.  (Seen on an H100: fp32 dW of a bf16 backward off by 2e-3 of its max, fine, failed 1e-3.)
REL_TOL = {torch.float16: 5e-2, torch.bfloat16: 5e-2, torch.float32: 1e-3, torch.float64: 1e-9}

_lock = threading.Lock()
_verdicts: dict[tuple, str] = {}  # key -> "ok" | "bad"


def enabled() -> bool:
    """True unless ``FUSEDKAT_KERNEL_SELFCHECK=0``."""
    return os.environ.get(_ENV, "1").strip() != "0"


def verdicts() -> dict[tuple, str]:
    """A copy of what was checked in this process: kernel key -> ``"ok"`` or ``"bad"``."""
    with _lock:
        return dict(_verdicts)


def reset() -> None:
    """Forget all verdicts (tests)."""
    with _lock:
        _verdicts.clear()


def _describe(t: Any) -> Any:
    # Raw (hashable) shape, dtype and device: this runs on every launch, so no string formatting.
    if isinstance(t, torch.Tensor):
        return (t.shape, t.dtype, t.device)
    return t


def kernel_key(op: str, args: tuple) -> tuple:
    """What selects the compiled kernel and its config: the op and every argument's shape/dtype/device."""
    return (op,) + tuple(_describe(a) for a in args)


def _readable(key: tuple) -> tuple:
    """``key`` for a message: ``((300, 1536), 'bfloat16', 'cuda:0')`` per tensor."""
    return tuple((tuple(a[0]), str(a[1]).replace("torch.", ""), str(a[2]))
                 if isinstance(a, tuple) and len(a) == 3 and isinstance(a[1], torch.dtype) else a for a in key)


def compute_dtype(args: tuple) -> Optional[torch.dtype]:
    """The least precise floating dtype among the tensor arguments (None if there is none)."""
    dts = [a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    return max(dts, key=lambda d: REL_TOL.get(d, 5e-2)) if dts else None


def compare(out: Any, ref: Any, compute: Optional[torch.dtype] = None) -> Optional[str]:
    """None if ``out`` matches ``ref`` (a tensor or a tuple of tensors), else what differs.
    ``compute``: the dtype the kernel computed in; its tolerance applies when looser than the output's."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    if len(outs) != len(refs):
        return f"returned {len(outs)} outputs, expected {len(refs)}"
    for i, (o, r) in enumerate(zip(outs, refs)):
        if r is None or o is None:
            if (r is None) != (o is None):
                return f"output {i}: one of kernel/reference is None"
            continue
        if o.shape != r.shape or o.dtype != r.dtype:
            return f"output {i}: shape/dtype {tuple(o.shape)}/{o.dtype}, expected {tuple(r.shape)}/{r.dtype}"
        if r.numel() == 0:
            continue
        fo, fr = torch.isfinite(o), torch.isfinite(r)
        if not torch.equal(fo, fr):
            return f"output {i}: {int((fo != fr).sum())} elements differ in finiteness (NaN/Inf)"
        if not fr.any():
            continue
        od, rd = o[fr].double(), r[fr].double()
        scale = rd.abs().max().item()
        err = (od - rd).abs().max().item()
        rel = max(REL_TOL.get(r.dtype, 5e-2), REL_TOL.get(compute, 0.0) if compute is not None else 0.0)
        tol = rel * max(scale, 1e-6)
        if err > tol:
            return f"output {i}: max abs error {err:.3g} > {tol:.3g} (reference max |value| {scale:.3g})"
    return None


def checked(fn: Optional[Callable] = None, *, route: Optional[Callable[[], Any]] = None) -> Callable:
    """Wrap a launcher of :mod:`cutlass_kernels.launch` so its first call per kernel key is verified
    against the same-named function of :mod:`fusedkat.ops.torch_impl` (see the module docstring).

    ``route()`` (optional, called per launch, cheap) returns what else selects the kernel -- e.g. the
    env knobs choosing between the fused kernels -- and becomes part of the key, so switching a knob
    in-process checks the newly selected kernel too.  ``@checked`` or ``@checked(route=...)``."""
    if fn is None:
        return functools.partial(checked, route=route)
    reference = getattr(torch_impl, fn.__name__)

    @functools.wraps(fn)
    def wrapper(*args):
        if not enabled():
            return fn(*args)
        key = kernel_key(fn.__name__, args)
        if route is not None:
            key += (route(),)
        with _lock:
            verdict = _verdicts.get(key)
        if verdict == "bad":
            return reference(*args)
        out = fn(*args)
        if verdict is None:
            ref = reference(*args)
            problem = compare(out, ref, compute_dtype(args))
            with _lock:
                _verdicts[key] = "bad" if problem else "ok"
            if problem:
                warnings.warn(
                    f"fusedkat: the CuTe kernel for {fn.__name__} disagreed with the torch implementation "
                    f"on its first use ({problem}); using the torch implementation for {_readable(key)}. "
                    f"Please report this with the output of `fusedkat info`.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return ref
        return out

    wrapper.reference = reference  # type: ignore[attr-defined]
    return wrapper
