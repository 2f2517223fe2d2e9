"""The one place that decides which implementation runs an op: ``"torch"`` or ``"cute"``.

``"cute"`` means the CuTe DSL kernels of :mod:`cutlass_kernels` (CUDA only, and only where the DSL
imports and the GPU's arch is supported); ``"torch"`` is :mod:`fusedkat.ops.torch_impl`, which runs
everywhere.  The default, ``"auto"``, picks cute when it can and torch otherwise.

Force a choice for tests and benchmarks with the environment variable ``FUSEDKAT_BACKEND``
(``auto`` | ``torch`` | ``cute``, read at each call) or the context manager::

    with fusedkat.ops.use_backend("torch"):
        y = fusedkat.ops.group_rational(x, num, den)

Forcing ``"cute"`` where it cannot run raises ``RuntimeError`` saying why — never a silent fallback.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator, Optional

import torch

BACKENDS: tuple[str, ...] = ("auto", "torch", "cute")
_ENV = "FUSEDKAT_BACKEND"
# Process-wide, not thread-local: autograd runs a CUDA graph's backward on its own device threads,
# and ``with use_backend("torch"): loss.backward()`` must reach them (an H100 run showed the
# thread-local version silently using the CuTe backward there).  Each live ``use_backend`` block is
# one entry, a unique token object with its name, removed by identity on exit (never by position),
# so blocks entered and left in any interleaving across threads leave the stack consistent.
_stack: list["_Entry"] = []
_stack_lock = threading.Lock()

# Filled in by the kernel layer: given a device and an op name, return None if the cute kernels
# can run that op there, or a string saying why not.  Kept as a hook so that importing
# fusedkat.ops never imports the DSL (import time and GPU-less machines).
_cute_unavailable_reason: Optional[Callable[[torch.device, str], Optional[str]]] = None


class _Entry:
    """One live ``use_backend`` block (compared by identity)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def set_cute_probe(probe: Callable[[torch.device, str], Optional[str]]) -> None:
    """Install the function that says whether the cute kernels can run an op on a device."""
    global _cute_unavailable_reason
    _cute_unavailable_reason = probe


def requested_backend() -> str:
    """The backend asked for: the innermost :func:`use_backend`, else ``$FUSEDKAT_BACKEND``, else auto."""
    with _stack_lock:
        forced = _stack[-1].name if _stack else None
    if forced is not None:
        return forced
    env = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if env not in BACKENDS:
        raise ValueError(f"{_ENV}={env!r} is not one of {BACKENDS}")
    return env


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force the backend (``"auto"``, ``"torch"`` or ``"cute"``) inside a ``with`` block.

    Process-wide, so it also governs backward passes that autograd runs on its device threads.
    Across threads the rule is: the most recently entered block that is still open wins, in every
    thread.  Blocks may be entered and left in any interleaving (thread A enters, thread B enters,
    A leaves, B leaves, or any other order): each block removes exactly its own entry on exit, so
    once all blocks are closed the process is back to ``$FUSEDKAT_BACKEND``/auto.  Nested blocks
    in one thread restore the outer choice on exit, as usual.  For a per-thread choice, use
    separate processes or pass tensors whose device decides."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    entry = _Entry(name)
    with _stack_lock:
        _stack.append(entry)
    try:
        yield
    finally:
        with _stack_lock:
            for i in range(len(_stack) - 1, -1, -1):
                if _stack[i] is entry:
                    del _stack[i]
                    break


def cute_unavailable_reason(device: torch.device, op: str) -> Optional[str]:
    """None if the cute kernels can run ``op`` on ``device``, otherwise the reason they cannot."""
    if device.type != "cuda":
        return f"the CuTe kernels run on CUDA devices only (tensors are on {device})"
    if _cute_unavailable_reason is None:
        try:  # registers the probe as a side effect; the DSL itself is imported lazily
            import cutlass_kernels.dispatch_probe  # noqa: F401
        except ImportError as e:
            return f"cutlass_kernels could not be imported: {e}"
    if _cute_unavailable_reason is None:
        return "no CuTe kernel is registered for this op"
    return _cute_unavailable_reason(device, op)


def choose(device: torch.device, op: str) -> str:
    """Resolve the backend for ``op`` on ``device``: returns ``"torch"`` or ``"cute"``."""
    req = requested_backend()
    if req == "torch" or (req == "auto" and device.type != "cuda"):  # the common CPU case: no reason string
        return "torch"
    reason = cute_unavailable_reason(device, op)
    if reason is None:
        return "cute"
    if req == "cute":
        raise RuntimeError(f"backend 'cute' was forced for {op} but cannot run: {reason}")
    return "torch"
