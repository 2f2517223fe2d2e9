"""Helpers shared by the CuTe DSL kernel generators.  Importing this module imports the DSL.

* :class:`DslMath` — :class:`fusedkat.ops.rational_math.MathOps` on DSL ``Float32`` values, so
  kernels evaluate the rational with the very same code as the torch path (single source).
* :func:`compile_options` — the ``options=`` string for ``cute.compile`` with an explicit arch
  (unset, the DSL targets sm_100a) and the cubin/PTX kept in a directory we can inspect.
* :func:`dsl_type` — DSL element type from a config's dtype name.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any, Optional

import cutlass
import cutlass.cute as cute
from cutlass import Float32

from .arch import normalize_arch


class DslMath:
    """abs / sgn / rcp / isfinite / select on DSL Float32 scalars (rcp is the fast ``rcp.approx.ftz.f32``)."""

    @staticmethod
    def abs(t: Any) -> Any:
        return cute.math.abs(t)

    @staticmethod
    def sgn(t: Any) -> Any:
        # +1 for t >= 0 (including -0.0), -1 otherwise: the convention of rational_math.
        return Float32(cutlass.select_(t >= Float32(0.0), Float32(1.0), Float32(-1.0)))

    @staticmethod
    def rcp(t: Any) -> Any:
        # IEEE division spilled registers in the GEMM prologue (DESIGN.md sec. 4); Q >= 1 keeps
        # the approximate reciprocal well inside its accurate range (rel. error ~2^-22).  Also
        # used for s = 1/x at large |x| (rational_math's far evaluation): same relative accuracy,
        # and 1/x flushes to 0 only above 2^126, where F's asymptote is then exact.
        return cute.arch.rcp_approx(t)

    @staticmethod
    def isfinite(t: Any) -> Any:
        # |t| <= FLT_MAX is False for +-inf and for NaN (every comparison with NaN is False)
        return cute.math.abs(t) <= Float32(3.4028234663852886e38)

    @staticmethod
    def select(cond: Any, a: Any, b: Any) -> Any:
        return Float32(cutlass.select_(cond, a, b))

    @staticmethod
    def fallback(ok: Any, values: list, far: Any) -> list:
        """``values`` where ``ok``, else ``far()``, as a real branch (``scf.if``): the large-|x|
        evaluation of rational_math runs only when a value needs it (rare), so the hot path pays
        the finiteness test and a (uniform, untaken) branch instead of a second evaluation."""
        from cutlass.cutlass_dsl import if_generate

        res = if_generate(ok, lambda: list(values), lambda: list(far()), None, [Float32] * len(values))
        return list(res) if isinstance(res, (list, tuple)) else [res]


    @staticmethod
    def fallback_warp(ok: Any, values: list, far: Any) -> list:
        """:meth:`fallback` on a warp-uniform condition (``vote.all`` of ``ok``): the whole warp
        takes ``far()`` if any lane needs it.  Only where all 32 lanes are converged here."""
        return DslMath.fallback(cute.arch.vote_all_sync(ok), values, far)


def dsl_type(name: str) -> Any:
    """``"bf16" -> cutlass.BFloat16`` etc."""
    return {"fp32": cutlass.Float32, "bf16": cutlass.BFloat16, "fp16": cutlass.Float16}[name]


def compile_options(arch: str, dump_dir: Optional[os.PathLike | str] = None) -> str:
    """``cute.compile(..., options=...)`` string: explicit arch; keep cubin+PTX in ``dump_dir``."""
    opts = f"--gpu-arch {normalize_arch(arch)}"
    if dump_dir is not None:
        d = str(dump_dir)
        if any(c.isspace() for c in d):
            raise ValueError(f"dump dir must not contain whitespace: {d!r}")
        os.makedirs(d, exist_ok=True)  # the DSL does not create it and then silently keeps nothing
        opts += f" --keep-cubin --keep-ptx --dump-dir {d}"
    return opts


def _artifact(value: Any, mode: str) -> Optional[Any]:
    # Depending on the DSL version an artifact is the content or the path it was dumped to.
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) if mode == "rb" else bytes(value).decode()
    if isinstance(value, str) and os.path.isfile(value):
        with open(value, mode) as fh:
            return fh.read()
    return value if mode == "r" else None


def compiled_cubin(compiled: Any) -> bytes:
    """The cubin of a function compiled with :func:`compile_options` (``dump_dir`` set)."""
    cubin = _artifact(getattr(compiled, "__cubin__", None), "rb")
    if not cubin:
        raise RuntimeError("the compiled kernel has no cubin: compile with compile_options(arch, dump_dir)")
    return cubin


def compiled_ptx(compiled: Any) -> Optional[str]:
    """The PTX of a compiled function, if it was kept."""
    return _artifact(getattr(compiled, "__ptx__", None), "r")


_RUNTIME_LIBS: list[Any] = []


def load_runtime_libraries() -> None:
    """Load the DSL runtime RTLD_GLOBAL: needed before AOT export (``dump_to_object``) and
    before loading an exported module (DESIGN.md sec. 4)."""
    if _RUNTIME_LIBS:
        return
    from cutlass.runtime import find_runtime_libraries

    for path in find_runtime_libraries(enable_tvm_ffi=False):
        if Path(path).exists():
            _RUNTIME_LIBS.append(ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))
