"""Compiled kernels for launches: in-process memo, then the on-disk cache, then a JIT compile.

A kernel is identified by its compile target (``"module:function"``, the same function the
build check calls), its primitive fields and the arch.  The first call in a process compiles it
with fake tensors (exactly as the build check does) and, when a C++ compiler is available,
exports it ahead-of-time (``dump_to_object`` + ``g++ -shared``) into the disk cache; later
processes load that shared object instead of compiling (``cutlass.runtime.load_module``).
Set ``FUSEDKAT_AOT_CACHE=0`` to always JIT-compile (nothing is then written to disk).
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


def _compile(target: str, fields: dict, arch: str) -> Any:
    import importlib

    from . import dsl

    mod, fn = _split(target)
    return getattr(importlib.import_module(mod), fn)(arch=arch, options=dsl.compile_options(arch), **fields)


def _export(compiled: Any, prefix: str, out_dir: Path) -> None:
    """AOT-export a compiled function into ``out_dir/kernel.so``."""
    from . import dsl

    dsl.load_runtime_libraries()
    obj = out_dir / "kernel.o"
    obj.write_bytes(compiled.dump_to_object(prefix))
    subprocess.run(["g++", "-shared", "-o", str(out_dir / "kernel.so"), str(obj)], check=True,
                   capture_output=True)
    obj.unlink()


def _load(entry: Path, prefix: str) -> Callable[..., Any]:
    from cutlass.runtime import load_module

    from . import dsl

    dsl.load_runtime_libraries()
    return getattr(load_module(str(entry / "kernel.so")), prefix)


def stride_order(t: Any) -> tuple[int, ...]:
    """``t.dim_order()`` for the dense tensors the launchers pass (row-major or transposed views):
    dims from largest to smallest stride, ties (size-1 dims) in index order.  torch's own
    ``dim_order()`` is pure Python through ``_prims_common`` and cost ~45% of the fused backward's
    host time on an H100 machine (bench/host_overhead.py); this is a sort of <= 3 items."""
    strides = t.stride()
    return tuple(sorted(range(len(strides)), key=lambda i: -strides[i]))


def get_kernel(target: str, fields: dict, arch: str, sources: tuple[str, ...] = ()) -> Callable[..., Any]:
    """The callable for ``target`` compiled with ``fields`` for ``arch`` (see the module docstring)."""
    memo_key = (target, tuple(sorted(fields.items())), arch)
    fn = _MEMO.get(memo_key)
    if fn is not None:
        return fn
    with _LOCK:
        fn = _MEMO.get(memo_key)
        if fn is not None:
            return fn
        fn = _get_uncached(target, fields, arch, sources)
        _MEMO[memo_key] = fn
        return fn


def _get_uncached(target: str, fields: dict, arch: str, sources: tuple[str, ...]) -> Callable[..., Any]:
    if not _aot_enabled():
        return _compile(target, fields, arch)
    modules = tuple(sorted({_split(target)[0], *sources}))
    key = make_key("aot", target, fields, arch, source_fingerprint(modules), dsl_version())
    prefix = f"fk_{key[:20]}"
    compiled_here: list[Any] = []

    def build(out_dir: Path) -> dict:
        compiled = _compile(target, fields, arch)
        compiled_here.append(compiled)
        _export(compiled, prefix, out_dir)
        return {"target": target, "fields": fields, "arch": arch, "prefix": prefix, "dsl_version": dsl_version()}

    try:
        entry, _meta, hit = CompileCache().get_or_build(key, build)
    except Exception as e:  # export/link problems must not stop the kernel from running
        warnings.warn(f"fusedkat: AOT cache unavailable ({type(e).__name__}: {e}); JIT-compiling {target}")
        return compiled_here[0] if compiled_here else _compile(target, fields, arch)
    if compiled_here:
        return compiled_here[0]
    try:
        return _load(entry, prefix)
    except Exception as e:
        warnings.warn(f"fusedkat: could not load cached kernel {entry} ({type(e).__name__}: {e}); JIT-compiling")
        return _compile(target, fields, arch)


def clear_memo() -> None:
    """Forget the compiled kernels of this process (tests)."""
    with _LOCK:
        _MEMO.clear()
