"""Compiled kernels for launches: in-process memo, then the on-disk cache, then a JIT compile.

A kernel is identified by its compile target (``"module:function"``, the same function the
build check calls), its primitive fields and the arch.  The first call in a process compiles it
with fake tensors (exactly as the build check does) and, when a C++ compiler is available,
exports it ahead-of-time (``dump_to_object`` + ``g++ -shared``) into the disk cache; later
processes load that shared object instead of compiling (``cutlass.runtime.load_module``).
Set ``FUSEDKAT_AOT_CACHE=0`` to always JIT-compile (nothing is then written to disk).

``ffi=True`` (pointer-ABI entries, see :mod:`cutlass_kernels.abi`) compiles with
``--enable-tvm-ffi``, exports with ``export_to_c`` and loads the module as TVM-FFI: the callable
is then a ``tvm_ffi.Function`` taking plain ints.  Its cache entries have their own keys.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

from .cache import CompileCache, dsl_version, make_key, source_fingerprint

ENV_AOT = "FUSEDKAT_AOT_CACHE"
_MEMO: dict[tuple, Callable[..., Any]] = {}
_LOCK = threading.Lock()


def _aot_enabled() -> bool:
    return os.environ.get(ENV_AOT, "1").strip() not in ("0", "false", "no") and shutil.which("g++") is not None


def _split(target: str) -> tuple[str, str]:
    mod, fn = target.split(":")
    return mod, fn


FFI_OPTION = "--enable-tvm-ffi"


def _compile(target: str, fields: dict, arch: str, ffi: bool = False) -> Any:
    import importlib

    from . import dsl

    mod, fn = _split(target)
    options = dsl.compile_options(arch) + (f" {FFI_OPTION}" if ffi else "")
    return getattr(importlib.import_module(mod), fn)(arch=arch, options=options, **fields)


def _export(compiled: Any, prefix: str, out_dir: Path, ffi: bool = False) -> None:
    """AOT-export a compiled function into ``out_dir/kernel.so``."""
    from . import dsl

    dsl.load_runtime_libraries()
    obj = out_dir / "kernel.o"
    if ffi:  # a TVM-FFI function exports its __tvm_ffi_<prefix> symbol this way, not via dump_to_object
        compiled.export_to_c(str(obj), function_name=prefix)
    else:
        obj.write_bytes(compiled.dump_to_object(prefix))
    subprocess.run(["g++", "-shared", "-o", str(out_dir / "kernel.so"), str(obj)], check=True,
                   capture_output=True)
    obj.unlink()


def _load(entry: Path, prefix: str, ffi: bool = False) -> Callable[..., Any]:
    from cutlass.runtime import load_module

    from . import dsl

    dsl.load_runtime_libraries()
    return getattr(load_module(str(entry / "kernel.so"), enable_tvm_ffi=ffi), prefix)


def _ffi_function(compiled: Any) -> Callable[..., Any]:
    """The bare ``tvm_ffi.Function`` of a JIT-compiled TVM-FFI function (the DSL's wrapper adds a
    Python pointer-conversion pass we do not need: our pointers are already ints)."""
    get = getattr(compiled, "__tvm_ffi_object__", None)
    fn = get() if get is not None else None
    return fn if fn is not None else compiled


def get_kernel(target: str, fields: dict, arch: str, sources: tuple[str, ...] = (),
               ffi: bool = False) -> Callable[..., Any]:
    """The callable for ``target`` compiled with ``fields`` for ``arch`` (see the module docstring);
    ``ffi``: the TVM-FFI calling convention (only for pointer-ABI entries)."""
    memo_key = (target, tuple(sorted(fields.items())), arch, ffi)
    fn = _MEMO.get(memo_key)
    if fn is not None:
        return fn
    with _LOCK:
        fn = _MEMO.get(memo_key)
        if fn is not None:
            return fn
        fn = _get_uncached(target, fields, arch, sources, ffi)
        _MEMO[memo_key] = fn
        return fn


def _get_uncached(target: str, fields: dict, arch: str, sources: tuple[str, ...], ffi: bool) -> Callable[..., Any]:
    def callable_of(compiled: Any) -> Callable[..., Any]:
        return _ffi_function(compiled) if ffi else compiled

    if not _aot_enabled():
        return callable_of(_compile(target, fields, arch, ffi))
    modules = tuple(sorted({_split(target)[0], *sources}))
    # (no extra part without ffi: the executor's existing cache entries keep their keys)
    key = make_key("aot", target, fields, arch, source_fingerprint(modules), dsl_version(), *(["tvm_ffi"] if ffi else []))
    prefix = f"fk_{key[:20]}"
    compiled_here: list[Any] = []

    def build(out_dir: Path) -> dict:
        compiled = _compile(target, fields, arch, ffi)
        compiled_here.append(compiled)
        _export(compiled, prefix, out_dir, ffi)
        return {"target": target, "fields": fields, "arch": arch, "prefix": prefix, "dsl_version": dsl_version(),
                "tvm_ffi": ffi}

    def fallback() -> Callable[..., Any]:
        return callable_of(compiled_here[0] if compiled_here else _compile(target, fields, arch, ffi))

    try:
        entry, _meta, hit = CompileCache().get_or_build(key, build)
    except Exception as e:  # export/link problems must not stop the kernel from running
        warnings.warn(f"fusedkat: AOT cache unavailable ({type(e).__name__}: {e}); JIT-compiling {target}")
        return fallback()
    if compiled_here and not ffi:
        return compiled_here[0]
    try:  # TVM-FFI: always the loaded module's bare tvm_ffi.Function, the one every later process uses
        return _load(entry, prefix, ffi)
    except Exception as e:
        warnings.warn(f"fusedkat: could not load cached kernel {entry} ({type(e).__name__}: {e}); JIT-compiling")
        return fallback()


def clear_memo() -> None:
    """Forget the compiled kernels of this process (tests)."""
    with _LOCK:
        _MEMO.clear()
