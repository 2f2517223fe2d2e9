"""Tells :mod:`fusedkat.ops.dispatch` whether the CuTe kernels can run an op on a device.

Imported lazily by the dispatcher (never by ``import fusedkat``); registering the probe is this
module's only side effect.  The DSL import is attempted once per process, and only when a CUDA
device asks.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from fusedkat.ops import dispatch

from .arch import arch_from_capability

#: Ops that :mod:`cutlass_kernels.launch` implements.
OPS: tuple[str, ...] = (
    "group_rational_forward",
    "group_rational_backward",
    "rational_linear_forward",
    "rational_linear_backward",
)
#: The elementwise kernels use nothing newer than sm_80 (16-byte vector loads, rcp.approx).
MIN_CAPABILITY: tuple[int, int] = (8, 0)


@functools.lru_cache(maxsize=1)
def dsl_import_error() -> Optional[str]:
    """None if the CuTe DSL imports, else why not (cached: the import is tried once)."""
    try:
        import cutlass  # noqa: F401
        import cutlass.cute  # noqa: F401
        import cuda.bindings.driver  # noqa: F401
    except Exception as e:  # ImportError, or a broken native library (OSError)
        return f"the CuTe DSL (nvidia-cutlass-dsl) cannot be imported: {type(e).__name__}: {e}"
    return None


def unavailable_reason(device: torch.device, op: str, capability: Optional[tuple[int, int]] = None) -> Optional[str]:
    """None if :mod:`cutlass_kernels.launch` can run ``op`` on ``device``, else the reason.

    ``capability`` overrides the device query (tests on machines without a GPU).
    """
    if op not in OPS:
        return f"no CuTe kernel implements {op!r}"
    if device.type != "cuda":
        return f"the CuTe kernels run on CUDA devices only (got {device})"
    if capability is None:
        if not torch.cuda.is_available():
            return "CUDA is not available"
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        return f"GPU arch {arch_from_capability(capability)} is older than sm_80, which the kernels need"
    return dsl_import_error()


dispatch.set_cute_probe(unavailable_reason)
