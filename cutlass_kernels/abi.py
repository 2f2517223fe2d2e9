"""How launchers call a compiled kernel: the pointer ABI and its two calling conventions.

Every launched host entry (the fused forward and backward GEMMs, the elementwise rational kernels)
takes only raw global pointers, Int32 sizes and a stream; tensors are built inside the trace.  The same entry is
callable two ways:

* **TVM-FFI** (default when ``apache-tvm-ffi`` is installed): compiled with ``--enable-tvm-ffi``;
  every argument is a Python int (``data_ptr()``, sizes, the CUDA stream handle) and the call goes
  through TVM-FFI's C calling convention, which checks the argument count and types.  The DSL's
  own executor marshals each argument in Python instead: 190-300 us per launch on the H100
  machine's host (``bench/results/``), ~10x a cuBLAS GEMM's launch.
* **DSL executor** (``FUSEDKAT_TVM_FFI=0``, or ``tvm_ffi`` missing): ``cute.Pointer`` objects,
  ``Int32`` and a ``CUstream``, marshalled by the DSL.

``FUSEDKAT_TVM_FFI``: ``auto`` (unset) = TVM-FFI when importable; ``1`` = required (an error if
not installed); ``0`` = the DSL executor.  Read per launch, so tests can switch it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, Optional, Sequence

import torch

ENV_FFI = "FUSEDKAT_TVM_FFI"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_FFI_IMPORTABLE: list[bool] = []  # memo of find_spec (host time per launch)


def ffi_available() -> bool:
    """Whether the ``tvm_ffi`` package (``apache-tvm-ffi``) is importable."""
    if not _FFI_IMPORTABLE:
        _FFI_IMPORTABLE.append(importlib.util.find_spec("tvm_ffi") is not None)
    return _FFI_IMPORTABLE[0]


def forced(env: str) -> Optional[bool]:
    """An ``auto`` / on / off switch read from ``env`` now: True for ``1`` (or true/yes/on), False for
    ``0`` (false/no/off), None when unset or ``auto``; anything else is a ValueError."""
    value = os.environ.get(env, "auto").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    if value not in ("", "auto"):
        raise ValueError(f"{env}={value!r}: expected 1, 0 or auto")
    return None


def ffi_enabled() -> bool:
    """The calling convention launches use now (see the module docstring)."""
    choice = forced(ENV_FFI)
    if choice is None:
        return ffi_available()
    if choice and not ffi_available():
        raise RuntimeError(f"{ENV_FFI}=1: TVM-FFI launches need `pip install apache-tvm-ffi`")
    return choice


_DSL: dict[str, Any] = {}  # DSL objects for the executor convention, looked up once


def _dsl() -> dict[str, Any]:
    if not _DSL:
        import cuda.bindings.driver as cuda
        import cutlass
        import cutlass.cute as cute
        from cutlass.cute.runtime import make_ptr

        _DSL.update(make_ptr=make_ptr, gmem=cute.AddressSpace.gmem, Int32=cutlass.Int32, CUstream=cuda.CUstream,
                    types={torch.float32: cutlass.Float32, torch.bfloat16: cutlass.BFloat16,
                           torch.float16: cutlass.Float16})
    return _DSL


def pointer(t: torch.Tensor, align: int, ffi: bool) -> Any:
    """``t``'s data pointer: an int (TVM-FFI) or a ``cute.Pointer`` of its element type that
    assumes ``align`` bytes of alignment (the compiled entry assumes the same)."""
    if ffi:
        return t.data_ptr()
    d = _dsl()
    return d["make_ptr"](d["types"][t.dtype], t.data_ptr(), d["gmem"], assumed_align=align)


def int32s(values: Sequence[int], ffi: bool) -> tuple:
    """Int32 arguments: ints (TVM-FFI) or ``cutlass.Int32`` (executor)."""
    if ffi:
        return tuple(values)
    i32 = _dsl()["Int32"]
    return tuple(i32(v) for v in values)


def stream(device: torch.device, ffi: bool) -> Any:
    """The current torch stream of ``device``: its handle (TVM-FFI) or a ``CUstream`` (executor)."""
    handle = torch.cuda.current_stream(device).cuda_stream
    return handle if ffi else _dsl()["CUstream"](handle)


def arch_switch(env: str, device: Any, off_on_majors: Sequence[int]) -> bool:
    """An on/off choice read from ``env`` per call (:func:`forced`): ``1`` / ``0`` force it; ``auto``: off on
    CUDA devices whose compute-capability major is in ``off_on_majors`` (where it was measured
    slower), on elsewhere (CPU tensors, a device of None).  Anything else is a ValueError."""
    choice = forced(env)
    if choice is not None:
        return choice
    if device is None or device.type != "cuda":
        return True
    return device_info(device)[0][0] not in off_on_majors


# ---- host helpers for the launch path: each saves microseconds per launch ----------------------
_DEVICES: dict[int, tuple[tuple[int, int], int]] = {}


def device_info(device: torch.device) -> tuple[tuple[int, int], int]:
    """``(compute capability, SM count)`` of a CUDA device, looked up once per process (torch's own
    getters re-resolve the device index in Python on every call)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    info = _DEVICES.get(index)
    if info is None:
        props = torch.cuda.get_device_properties(index)
        info = _DEVICES[index] = ((props.major, props.minor), props.multi_processor_count)
    return info


def as_f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when already contiguous fp32 (the common case: fp32 coefficients), else a
    contiguous fp32 copy.  No detach: launchers read only ``data_ptr()``."""
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.detach().to(torch.float32).contiguous()


def on_device(device: torch.device) -> Any:
    """``torch.cuda.device(device)`` when it is not the current device, else a no-op context: the
    kernels launch into the current device's context (the official kernels' missing guard is kat#28)."""
    if device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)
